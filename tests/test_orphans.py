"""What a killed verify left, found by its owner: real processes, their /proc entries. (The
engine and libvirt parts: tests/test_verify.py kills a real verify.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from imagebuild import leftovers
from imagebuild.verify import orphans

URI = "test:///default"  # libvirt's own test driver: no daemon, none of its domains is ours


@pytest.fixture(autouse=True)
def _no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent")


def _folder(tmp: Path, name: str, owner: str | None) -> Path:
    f = tmp / f"{orphans.WORK_PREFIX}{name}"
    f.mkdir()
    (f / "overlay.qcow2").write_bytes(b"")
    if owner is not None:
        (f / orphans.OWNER).write_text(owner)
    return f


def _gone_owner() -> str:
    """The owner line of a process that has exited (its start time read while it ran)."""
    proc = subprocess.Popen(["sleep", "30"])
    start = leftovers.start_time(proc.pid)
    proc.kill()
    proc.wait()
    return f"{proc.pid} {start}\n"


def test_only_folders_of_gone_owners_are_removed(tmp_path: Path) -> None:
    me = orphans.me()
    assert me is not None
    live = _folder(tmp_path, "live", me)
    gone = _folder(tmp_path, "gone", _gone_owner())
    reused = _folder(tmp_path, "reused", f"{me.split()[0]} 1\n")  # our pid, not us
    unknown = _folder(tmp_path, "unknown", None)  # no owner yet: not known to be dead
    garbage = _folder(tmp_path, "garbage", "not an owner")
    said = orphans.sweep(URI, tmp_path)
    assert said == [str(gone), str(reused)] or said == [str(reused), str(gone)]
    assert {p.name for p in tmp_path.iterdir()} == {live.name, unknown.name, garbage.name}


@pytest.mark.parametrize("program", ["qemu-system-x86_64", "qemu-img"])
def test_a_gone_verifys_qemu_and_disk_copy_are_stopped(tmp_path: Path, program: str) -> None:
    """The plain-QEMU fallback (its overlay in the folder) and the disk's copy (qemu-img
    convert into the folder), which outlive a killed verify."""
    folder = _folder(tmp_path, "plain", _gone_owner())
    fake = tmp_path / program
    fake.write_text("#!/bin/sh\nwhile :; do sleep 0.2; done\n")
    fake.chmod(0o755)
    qemu = subprocess.Popen([str(fake), "-drive", f"file={folder}/overlay.qcow2"])
    other = subprocess.Popen([str(fake), "-drive", f"file={tmp_path}/elsewhere.qcow2"])
    try:
        said = orphans.sweep(URI, tmp_path)
        assert qemu.wait(timeout=10) == -9
        assert other.poll() is None  # names no dead verify's folder
        assert said[0].startswith(f"process {qemu.pid} ({program}") and not folder.exists()
    finally:
        for p in (qemu, other):
            p.kill()
            p.wait()


def test_this_process_is_its_own_owner() -> None:
    me = orphans.me()
    assert me is not None
    pid, start = me.split()
    assert int(pid) > 1 and start.isdigit()
    assert leftovers.start_time(int(pid)) == start
