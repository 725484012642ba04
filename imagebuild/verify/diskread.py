"""The VM's disk image read on this host while the booted guest answers verify's other checks:
its root partition copied out (qemu-img), its hygiene read by debugfs (diskhygiene.py), its
file contents dumped by debugfs in bubblewrap and hashed by diskbytes.py in a process of its
own (this host's CPU, not the emulated one). No loop device, no mount."""

from __future__ import annotations

import contextlib
import json
import shutil
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


class DiskReadError(ImageBuildError):
    pass


class DiskReading:
    """copy -> (hygiene when asked) and copy -> dump -> digests, on a thread that only waits
    for its processes: `stop` kills the one running, so an unwinding verify (Ctrl-C, SIGTERM)
    does not wait for a copy or a hash to end."""

    def __init__(self, disk: Path, tmp: Path, want: dict[str, Any]) -> None:
        self._part = tmp / "root.raw"
        self._tree = tmp / "tree"
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

    def _start(self, argv: list[str]) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._stopped:
                raise DiskReadError("stopped")
            self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            return self._proc

    def _run(self) -> None:
        try:
            try:
                tools.wait(self._copy)
            finally:
                self._copied.set()
            self._tree.mkdir()
            self._finish(self._start(vmboot.dump_argv(str(self._part), self._tree)), "debugfs")
            hashing = [sys.executable, "-m", "imagebuild.verify.diskbytes", str(self._tree)]
            out = self._finish(self._start([*hashing, json.dumps(self._want)]), "diskbytes")
            self._result = json.loads(out)
        except BaseException as e:  # handed to whoever asks for the result
            self._error = e
        finally:
            # ~2 s for its 30k files: here, beside the guest's checks, not at verify's end
            shutil.rmtree(self._tree, ignore_errors=True)

    def _finish(self, proc: subprocess.Popen[bytes], what: str) -> bytes:
        out, err = proc.communicate()
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-3:]
            raise DiskReadError(f"{what} exited {proc.returncode}: {' | '.join(tail)}")
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
def disk_reading(disk: Path | None, want: dict[str, Any]) -> Iterator[DiskReading | None]:
    """Start reading `disk` (None: nothing to read); `want`: the digest script's argument."""
    if disk is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="imagebuild-disk-") as tmp:
        reading = DiskReading(disk, Path(tmp), want)
        try:
            yield reading
        finally:
            reading.stop()
