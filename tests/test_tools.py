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
