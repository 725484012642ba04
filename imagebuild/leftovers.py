"""What a killed build leaves (kill -9 runs no clean-up): the next run on the same cache finds it
and removes it, saying so. It runs under the cache's lock (Cache.exclusive), so everything that
belongs to this cache is known dead: scratch folders and half-made entries, the build's
containers (labelled with the cache), and Packer's and QEMU's processes started from a scratch
folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

from imagebuild import progress
from imagebuild.cache import Cache

CACHE_LABEL = "io.imagebuild.cache"  # on every container a build starts: whose cache it is
SCRATCH = "imagebuild-*"  # a build's scratch folder in the cache root (tempfile prefix)


def processes() -> list[tuple[int, str]]:
    """(pid, command line) of every process, arguments joined by spaces."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                out.append((int(entry.name), cmd))
    return out


def _containers(cache: Cache) -> list[str]:
    """Remove the containers of this cache's builds; their names."""
    try:
        import docker

        client = docker.from_env()
        found = client.containers.list(all=True, filters={"label": f"{CACHE_LABEL}={cache.root}"})
    except Exception:  # no engine here: nothing of ours can be running in it
        return []
    names = []
    for c in found:
        with contextlib.suppress(Exception):
            c.remove(force=True)
            names.append(c.name)
    return names


def sweep(cache: Cache, task: str) -> list[str]:
    """Remove a dead build's leftovers from this cache; returns (and says) what went."""
    if not cache.root.is_dir():
        return []
    gone: list[str] = []
    scratch = [p for p in cache.root.glob(SCRATCH) if p.is_dir()]
    # Packer runs in its own session and outlives a killed build; its QEMU is named after the
    # scratch folder, and Packer's arguments name files in it.
    marks = [str(p) for p in scratch] + [f"-{p.name}" for p in scratch]
    for pid, cmd in processes():
        ours = ("qemu-system" in cmd or "packer" in cmd) and any(m in cmd for m in marks)
        if ours and pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                gone.append(f"process {pid} ({cmd.split()[0].rsplit('/', 1)[-1]})")
    gone += [f"container {n}" for n in _containers(cache)]
    half_made = [p for p in cache.root.glob("*/.*-*") if p.is_dir()]
    half_made += [p for p in cache.root.glob("blobs/sha256/.*") if p.is_file()]
    for p in scratch + half_made:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        gone.append(str(p.relative_to(cache.root)))
    if gone:
        progress.say(f"{task}: removed what a killed build left on this cache: {', '.join(gone)}")
    return gone


def sweep_staging(dist: Path, cache: Cache, task: str) -> list[str]:
    """A killed build-vm's staging folder in `dist` (its owner file names this cache)."""
    gone = []
    for d in dist.glob(".imagebuild-vm-*"):
        with contextlib.suppress(OSError):
            if (d / ".owner").read_text().strip() == str(cache.root):
                shutil.rmtree(d, ignore_errors=True)
                gone.append(str(d))
    if gone:
        progress.say(f"{task}: removed a killed build's staging folder: {', '.join(gone)}")
    return gone
