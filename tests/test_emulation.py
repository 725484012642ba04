"""What building another architecture here needs (imagebuild.emulation): a binfmt_misc entry
read as the kernel writes it, refused with the reason when absent, disabled or without the F
flag; the options a foreign architecture's containers get."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagebuild import emulation

ENTRY = (
    "{state}\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: {flags}\n"
    "offset 0\nmagic 7f454c460201010000000000000000000200b700\n"
)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (None, "is not registered"),
        (ENTRY.format(state="disabled", flags="PF"), "is registered but disabled"),
        (ENTRY.format(state="enabled", flags="P"), "lacks the F flag"),
        (ENTRY.format(state="enabled", flags="PF"), None),
        (ENTRY.format(state="enabled", flags="POCF"), None),
    ],
)
def test_the_binfmt_entry_is_read_as_the_kernel_writes_it(
    tmp_path: Path, text: str | None, says: str | None
) -> None:
    if text is not None:
        (tmp_path / "qemu-aarch64").write_text(text)
    why = emulation.problem("arm64", tmp_path)
    assert why is None if says is None else (why is not None and says in why), why
    if says is None:
        emulation.require("arm64", tmp_path)
    else:
        with pytest.raises(emulation.EmulationError) as e:
            emulation.require("arm64", tmp_path)
        assert "building arm64" in str(e.value) and "bootstrap.sh" in str(e.value)


def test_the_host_needs_no_emulation(tmp_path: Path) -> None:
    emulation.require("amd64", tmp_path)  # no entry at all: nothing asked of the host
    assert emulation.container_options("amd64") == {}
    assert emulation.container_options("arm64") == {"tmpfs": {"/sys/devices/system/cpu": "ro"}}
