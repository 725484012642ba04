"""The VM's disk image read on this host while the booted guest answers verify's other checks:
its root partition copied out (qemu-img), its hygiene read by debugfs (diskhygiene.py), its file
contents dumped by debugfs and hashed by diskbytes.py (this host's CPU, not the emulated one).
No loop device, no mount.

The disk is anyone's. Before anything is dumped, e2fsck's own read-only check must find the
filesystem clean (a name holding `/`, two entries of one name, a folder linked twice: what would
make the dump differ from what the guest's kernel sees, or never end) and its journal must need
no recovery (debugfs does not replay it; the guest's kernel would). The dump and the hashing then
run in one bubblewrap jail, into a tmpfs no larger than the filesystem's used blocks and some
slack (sparse files and hard links are written out whole: a disk cannot fill this host), under a
time limit; debugfs's own errors fail the reading."""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imagebuild import tools, vmboot
from imagebuild.errors import ImageBuildError
from imagebuild.verify.diskhygiene import disk_hygiene

SLACK = 256 << 20  # the tmpfs beyond the used blocks: folders, small sparse files
TIMEOUT = 600  # seconds for one step: the example's dump and hashing take ~3
DUMP = "/mnt"  # the jail's tmpfs (a folder every Debian host has)
# debugfs cannot give a dumped file an owner the jail's user namespace does not map: not a
# problem (the owners are read in the guest), every other message is
HARMLESS = "^debugfs [0-9]|while changing ownership of "  # grep -E


class DiskReadError(ImageBuildError):
    pass


def dump_and_hash_argv(part: str, size: int, want: dict[str, Any]) -> list[str]:
    """One jail: debugfs dumps the filesystem into a tmpfs of `size` bytes, its messages are
    checked, diskbytes.py hashes the dump (its JSON on stdout)."""
    tree, err = f"{DUMP}/root", f"{DUMP}/debugfs.err"
    hashing = [sys.executable, "-m", "imagebuild.verify.diskbytes", tree, json.dumps(want)]
    script = (
        f"mkdir {tree} && debugfs -R {shlex.quote(f'rdump / {tree}')} {shlex.quote(part)}"
        f" 2> {err} || exit 3; "
        f"if grep -Ev {shlex.quote(HARMLESS)} {err} >&2; then exit 4; fi; "
        f"exec {shlex.join(hashing)}"
    )
    # what the hashing's Python reads: its environment and the imagebuild package
    reads = [part, sys.prefix, str(Path(__file__).resolve().parents[1])]
    return [*vmboot.jail(reads, "--size", str(size), "--tmpfs", DUMP), "sh", "-c", script]


class DiskReading:
    """copy -> (hygiene when asked) and copy -> check -> dump and digests, on a thread that only
    waits for its processes: `stop` kills the one running, so an unwinding verify (Ctrl-C,
    SIGTERM) does not wait for a copy or a hash to end."""

    def __init__(self, disk: Path, tmp: Path, want: dict[str, Any]) -> None:
        self._part = tmp / "root.raw"
        self._want = want
        self._lock = threading.Lock()
        self._stopped = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._copied = threading.Event()
        self._result: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self._copy = tools.start(vmboot.partition_argv(disk, self._part))
        self._thread = threading.Thread(target=self._run, name="disk-read", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            try:
                tools.wait(self._copy)
            except BaseException as e:
                self._error = e  # before the event: hygiene() reports it
                raise
            finally:
                self._copied.set()
            size = self._check(str(self._part))
            argv = dump_and_hash_argv(str(self._part), size, self._want)
            self._result = json.loads(self._step(argv, "the dump and its digests"))
        except BaseException as e:  # handed to whoever asks for the result
            self._error = self._error or e

    def _check(self, part: str) -> int:
        """e2fsck's verdict and the journal's state; the tmpfs size the dump may fill."""
        self._step([*vmboot.jail([part]), "e2fsck", "-fn", part], "e2fsck -fn (the disk's fs)")
        head = self._step([*vmboot.jail([part]), "dumpe2fs", "-h", part], "dumpe2fs -h").decode()
        fields = dict(ln.split(":", 1) for ln in head.splitlines() if ":" in ln)
        if "needs_recovery" in fields.get("Filesystem features", "").split():
            raise DiskReadError(
                "its filesystem's journal needs recovery (it was not cleanly unmounted): "
                "debugfs would not read what the guest's kernel sees"
            )
        try:
            blocks = int(fields["Block count"]) - int(fields["Free blocks"])
            return blocks * int(fields["Block size"]) + SLACK
        except (KeyError, ValueError) as e:
            raise DiskReadError(f"dumpe2fs -h gave no block counts: {e!r}") from None

    def _step(self, argv: list[str], what: str) -> bytes:
        with self._lock:
            if self._stopped:
                raise DiskReadError("stopped")
            try:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
                )
            except OSError as e:
                raise DiskReadError(f"{what}: {argv[0]} could not start ({e})") from None
            self._proc = proc
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise DiskReadError(f"{what}: no result in {TIMEOUT}s") from None
        if proc.returncode != 0:
            said = (err or out).decode(errors="replace").strip().splitlines()[-3:]
            raise DiskReadError(f"{what}: exit {proc.returncode}: {' | '.join(said)}")
        return out

    def hygiene(self) -> dict[str, str]:
        self._copied.wait()
        if self._copy.returncode != 0:
            raise DiskReadError(f"qemu-img could not copy the root partition out: {self._error}")
        return disk_hygiene(self._part)

    def contents(self) -> dict[str, Any]:
        """The digest script's content keys for the disk (diskbytes.contents)."""
        self._thread.join()
        if self._error is not None:
            raise DiskReadError(f"reading the disk image's files: {self._error}")
        assert self._result is not None
        return self._result

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            for proc in (self._copy, self._proc):
                if proc is not None and proc.poll() is None:
                    proc.kill()
        self._thread.join()


@contextlib.contextmanager
def disk_reading(
    disk: Path | None, want: dict[str, Any], under: Path | None = None
) -> Iterator[DiskReading | None]:
    """Start reading `disk` (None: nothing to read); `want`: the digest script's argument; its
    copy of the partition in a folder under `under` (verify's work folder: a killed verify's is
    removed with it)."""
    if disk is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="imagebuild-disk-", dir=under) as tmp:
        reading = DiskReading(disk, Path(tmp), want)
        try:
            yield reading
        finally:
            reading.stop()
