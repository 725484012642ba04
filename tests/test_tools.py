"""External tools fail as errors that name the command and quote the tool, not as tracebacks:
real qemu-img and ssh-keygen on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagebuild import tools, vmboot
from imagebuild.errors import ImageBuildError


def test_a_failing_tool_is_named_with_its_own_words(tmp_path: Path) -> None:
    not_a_disk = tmp_path / "x.qcow2"
    with pytest.raises(ImageBuildError) as e:
        vmboot.image_info(not_a_disk)
    assert "qemu-img info --output=json" in str(e.value) and "exit 1" in str(e.value)
    assert "No such file" in str(e.value)  # qemu-img's own message


def test_a_missing_tool_is_named() -> None:
    with pytest.raises(tools.ToolError, match="no-such-tool-here not found on PATH"):
        tools.run(["no-such-tool-here", "--version"])


def test_output_is_returned_and_can_go_to_a_file(tmp_path: Path) -> None:
    assert tools.run(["printf", "a b"]).stdout == "a b"
    with (tmp_path / "out").open("w") as f:
        tools.run(["printf", "to a file"], stdout=f)
    assert (tmp_path / "out").read_text() == "to a file"
    key = vmboot.make_key(tmp_path / "k")
    assert key.is_file() and Path(f"{key}.pub").read_text().startswith("ssh-ed25519 ")


def test_a_started_tool_fails_the_same_way_and_answers_are_not_failures(tmp_path: Path) -> None:
    """`start` + `wait` (a disk compressed while Python works) fail as `run` does; an exit code
    the caller names as an answer (qemu-img compare's 1, "differ") is no error."""
    proc = tools.start(["qemu-img", "convert", "-O", "qcow2", tmp_path / "absent", tmp_path / "o"])
    with pytest.raises(tools.ToolError) as e:
        tools.wait(proc)
    assert "qemu-img convert -O qcow2" in str(e.value) and "No such file" in str(e.value)
    (tmp_path / "a").write_bytes(b"\0" * 65536)
    (tmp_path / "b").write_bytes(b"\1" * 65536)
    r = tools.run(["qemu-img", "compare", "-q", tmp_path / "a", tmp_path / "b"], ok=(0, 1))
    assert r.returncode == 1  # other bytes
    with pytest.raises(tools.ToolError, match="exit 1"):
        tools.run(["qemu-img", "compare", "-q", tmp_path / "a", tmp_path / "b"])
    assert tools.run(["qemu-img", "compare", "-q", tmp_path / "a", tmp_path / "a"]).returncode == 0
