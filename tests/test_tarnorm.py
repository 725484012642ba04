"""tarnorm: one writer for every archive imagebuild makes."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import pytest

from imagebuild import tarnorm


def test_tar_members_copied_in_kernel_give_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tarnorm.add_file copies data with copy_file_range where it can: the archive is the same,
    byte for byte, as tarfile's own copy (sizes 0, a multiple of 512, and ragged)."""
    files = []
    for size in (0, 512 * 3, 100_003):
        f = tmp_path / f"f{size}"
        f.write_bytes(os.urandom(size))
        files.append(f)

    def archive(dest: Path) -> str:
        with tarfile.open(dest, "w", format=tarfile.GNU_FORMAT) as tar:
            for f in files:
                tarnorm.add_file(tar, f.name, f, 7)
            tarnorm.add_bytes(tar, "last", b"x", 7)
        return hashlib.sha256(dest.read_bytes()).hexdigest()

    kernel = archive(tmp_path / "a.tar")
    monkeypatch.setattr(tarnorm, "_copy_in_kernel", lambda *a: False)
    assert archive(tmp_path / "b.tar") == kernel
    with tarfile.open(tmp_path / "a.tar") as tar:
        assert [m.name for m in tar] == [f.name for f in files] + ["last"]
        assert tar.extractfile(files[2].name).read() == files[2].read_bytes()  # type: ignore[union-attr]
