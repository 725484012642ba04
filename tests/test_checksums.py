"""dist/SHA256SUMS: coreutils' format, one writer per build, checked by verify."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from imagebuild import checksums


def test_builds_share_one_file_that_sha256sum_checks(tmp_path: Path) -> None:
    a, b = tmp_path / "x.oci.tar", tmp_path / "x.qcow2"
    a.write_bytes(b"container")
    b.write_bytes(b"disk")
    checksums.record(tmp_path, [a])
    checksums.record(tmp_path, [b], {"x.qcow2": hashlib.sha256(b"disk").hexdigest()})
    assert checksums.read(tmp_path) == {
        "x.oci.tar": hashlib.sha256(b"container").hexdigest(),
        "x.qcow2": hashlib.sha256(b"disk").hexdigest(),
    }
    r = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path, capture_output=True,
                       text=True)  # fmt: skip
    assert r.returncode == 0 and r.stdout.count(": OK") == 2, r.stdout + r.stderr
    assert checksums.check(tmp_path, [a, b]) == []
    b.write_bytes(b"disk, changed")
    assert checksums.check(tmp_path, [a, b]) == [
        f"x.qcow2: sha256 differs from {tmp_path}/SHA256SUMS"
    ]
    other = tmp_path / "other.qcow2"
    other.write_bytes(b"")
    assert "not listed" in checksums.check(tmp_path, [other])[0]
    b.unlink()
    checksums.record(tmp_path, [a])
    assert set(checksums.read(tmp_path)) == {"x.oci.tar"}  # gone files lose their line


def test_a_malformed_line_is_named(tmp_path: Path) -> None:
    (tmp_path / "SHA256SUMS").write_text("abc  ../etc/passwd\n")
    with pytest.raises(checksums.ChecksumError, match="SHA256SUMS:1"):
        checksums.read(tmp_path)
