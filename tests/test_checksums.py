"""dist/SHA256SUMS: coreutils' format, one writer per build, checked by verify."""

from __future__ import annotations

import hashlib
import multiprocessing
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from imagebuild import checksums, distlock


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
    r = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path, capture_output=True, text=True
    )
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


def _record_each(dist: str, names: list[str], start: Any) -> None:
    """A second writer (its own process, as a second `invoke` would be): one record per file."""
    start.wait()  # both processes are up: their writes interleave
    for name in names:
        checksums.record(Path(dist), [Path(dist) / name])


def test_concurrent_writers_keep_every_line(tmp_path: Path) -> None:
    """Two processes recording files into one dist at the same time (two builds, or a build
    beside push): the read-modify-write of SHA256SUMS is under the dist lock, so no line is lost."""
    names = {who: [f"{who}-{i}.qcow2" for i in range(100)] for who in ("a", "b")}
    for name in names["a"] + names["b"]:
        (tmp_path / name).write_bytes(name.encode())
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_record_each, args=(str(tmp_path), n, start)) for n in names.values()
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert set(checksums.read(tmp_path)) == set(names["a"] + names["b"])


def _hold(dist: str, held: Any, release: Any) -> None:
    with distlock.exclusive(Path(dist), "build-container"):
        held.set()
        release.wait(30)
        (Path(dist) / "x.oci.tar").write_bytes(b"container")
        checksums.record(Path(dist), [Path(dist) / "x.oci.tar"])


def test_a_second_writer_waits_saying_who_holds_the_dist(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ctx = multiprocessing.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), held, release))
    holder.start()
    assert held.wait(30)
    (tmp_path / "x.qcow2").write_bytes(b"disk")
    threading.Timer(1.0, release.set).start()
    checksums.record(tmp_path, [tmp_path / "x.qcow2"])  # waits for the holder to finish
    holder.join(30)
    err = capfd.readouterr().err
    assert f"waiting for imagebuild build-container (pid {holder.pid})" in err, err
    assert f"the dist folder {tmp_path}" in err
    assert set(checksums.read(tmp_path)) == {"x.oci.tar", "x.qcow2"}


def test_the_dist_lock_folder_is_this_users_own(tmp_path: Path, monkeypatch) -> None:
    """A lock folder planted by someone else (here: open to all) is refused, not written into;
    a link where the lock file goes is never followed."""
    import os

    import pytest

    from imagebuild import cache
    from imagebuild.errors import ImageBuildError

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    planted = tmp_path / f"imagebuild-locks-{os.geteuid()}"
    planted.mkdir(mode=0o777)
    planted.chmod(0o777)
    with pytest.raises(ImageBuildError, match="not this user's own folder"):
        distlock.lock_dir()
    target = tmp_path / "victim"
    target.write_text("keep")
    (tmp_path / "l").symlink_to(target)
    with pytest.raises(OSError), cache.exclusive(tmp_path / "l", "t", "x"):
        pass
    assert target.read_text() == "keep"
