"""The VM's disk image read on this host while the VM boots, never booted and never mounted:
its root partition copied out (qemu-img), its hygiene read (debugfs), its filesystem checked
(e2fsck -n) and its files dumped (debugfs rdump) for the digest script's digests, run here,
natively, by this host's Python confined to the dump (chroot) with this host's dpkg. Under TCG
the same hashing inside the guest was the longest part of verify (dpkg --verify 17.5 s, the venv
12 s); here it costs seconds of a core the boot leaves idle. The VM's bytes rows are thus its
disk image's as shipped, the hygiene rows' rule; what every path is (modes, owners, mounts) is
still read in the running VM, by its own names."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from imagebuild import vmboot
from imagebuild.verify.diskhygiene import disk_hygiene
from imagebuild.verify.interpreter import ScriptFailed, parse

# What the confined script runs: the host's own dpkg (its loader and libraries beside it).
PROGRAMS = ("dpkg", "dpkg-query")


SHM = Path("/dev/shm")
SCRATCH = "imagebuild-verify-disk-"  # + the pid of the verify that made it


def scratch(disk: Path, work: Path) -> Path:
    """Where the partition copy and the dump go: memory (/dev/shm) where it holds both with
    room to spare, else `work`. On disk the dump's writes wait for the copy's to be flushed
    (15 s here, with the boot beside it slowed by 5 s); in memory it takes 1.4 s. What a
    killed verify left there is removed first (its pid is gone)."""
    for old in SHM.glob(f"{SCRATCH}*") if SHM.is_dir() else []:
        pid = old.name.removeprefix(SCRATCH).partition("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(old, ignore_errors=True)
    extents = json.loads(
        subprocess.run(
            ["qemu-img", "map", "-f", "qcow2", "--output=json", str(disk)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    data = sum(int(e["length"]) for e in extents if e.get("data"))
    need = 2 * data + (1 << 30)  # the copy and the dump at once, and a margin
    with contextlib.suppress(OSError, ValueError):
        free = shutil.disk_usage(SHM).free
        avail = next(
            int(line.split()[1]) * 1024
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemAvailable:")
        )
        if free > need and avail > need + (2 << 30):
            return Path(tempfile.mkdtemp(dir=SHM, prefix=f"{SCRATCH}{os.getpid()}-"))
    work.mkdir(parents=True, exist_ok=True)
    return work


class Stopped(Exception):
    """verify is unwinding: the reading stopped where it was."""


def host_tools(tree: Path) -> str:
    """Copy this host's dpkg, dpkg-query, their libraries and the dynamic loader (`ld.so`)
    into a new folder of the dump; its path as seen from inside the dump."""
    dest = Path(tempfile.mkdtemp(dir=tree, prefix=".imagebuild-host-"))
    programs = [shutil.which(p) or p for p in PROGRAMS]
    found = subprocess.run(["ldd", *programs], capture_output=True, text=True, check=True).stdout
    for lib in sorted(set(re.findall(r"(/\S+) \(0x", found))):
        name = "ld.so" if "/ld-linux" in lib else Path(lib).name
        shutil.copyfile(lib, dest / name)
    for p in programs:
        shutil.copyfile(p, dest / Path(p).name)
    for f in dest.iterdir():
        f.chmod(0o755)
    return f"/{dest.name}"


class DiskRead:
    """Started before the VM boots (`script`, `want`: the digest script and its argument);
    `hygiene()` and
    `digests()` wait for their part. `close()` stops it at once: the step running is killed."""

    def __init__(self, disk: Path, work: Path, script: str, want: dict[str, Any]) -> None:
        self._disk, self._work, self._script, self._want = disk, work, script, want
        # Only root may confine the script (chroot); elsewhere the VM hashes its own files.
        self.digesting = os.geteuid() == 0
        self._hygiene: Future[dict[str, str]] = Future()
        self._digests: Future[dict[str, Any]] = Future()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._read, name="verify-disk-read", daemon=True)
        self._thread.start()

    def hygiene(self) -> dict[str, str]:
        return self._hygiene.result()

    def digests(self) -> dict[str, Any]:
        """The digest script's JSON; ScriptFailed says why there is none."""
        return self._digests.result()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
        self._thread.join()

    def __enter__(self) -> DiskRead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _step(self, argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run one step, niced: the boot beside it comes first."""
        with self._lock:
            if self._stop.is_set():
                raise Stopped
            proc = self._proc = subprocess.Popen(
                ["nice", "-n", "10", *argv],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
            )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += f"\n(stopped after {timeout:.0f}s)"
        if self._stop.is_set():
            raise Stopped
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def _read(self) -> None:
        try:
            self._work = scratch(self._disk, self._work)
            part, tree = self._work / "root.raw", self._work / "root"
            copy = self._step(vmboot.partition_argv(self._disk, part))
            if copy.returncode != 0:
                raise ScriptFailed(
                    f"qemu-img could not copy the disk's root partition: {copy.stderr}"
                )
            self._hygiene.set_result(disk_hygiene(part))
            if not self.digesting:
                return
            fsck = self._step(["e2fsck", "-fn", str(part)])
            if fsck.returncode != 0:
                # rdump trusts the directory entries (a name holding `/` would land outside)
                raise ScriptFailed(
                    "the disk's root filesystem has errors, its files are not read "
                    f"(e2fsck -fn, exit {fsck.returncode}): {fsck.stdout.strip()[-300:]}"
                )
            tree.mkdir(mode=0o700)
            dump = self._step(["debugfs", "-R", f"rdump / {tree}", str(part)])
            part.unlink()
            if dump.returncode != 0:
                raise ScriptFailed(f"debugfs could not dump the disk's files: {dump.stderr[-300:]}")
            want = self._want | {"parts": ["digests"], "root": str(tree), "tools": host_tools(tree)}
            argv = [sys.executable, "-I", "-S", "-c", self._script, json.dumps(want)]
            r = self._step(argv, 300)
            what = (
                f"the file digest script (this host's {Path(sys.executable).name}, over the disk)"
            )
            self._digests.set_result(parse(what, r.returncode, r.stdout, r.stderr))
        except BaseException as e:  # handed to whoever waits; Stopped only when no one does
            for f in (self._hygiene, self._digests):
                if not f.done():
                    f.set_exception(e)
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._work)
