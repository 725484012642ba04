"""What a killed build leaves (kill -9 runs no clean-up): the next run on the same cache finds it
and removes it, saying so. It runs under the cache's lock (Cache.exclusive), so everything that
belongs to this cache is known dead: scratch folders and half-made entries, the build's
containers (labelled with the cache), and the Packer, QEMU and Ansible processes that name a
scratch folder."""

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
PROGRAMS = ("qemu-system", "packer", "ansible")  # what a build starts that can outlive it
# what build-vm's formats run, beside Packer: each names the staging folder it writes into
FORMAT_TOOLS = ("qemu-img", "tar", "gzip", "mkfs.fat", "mcopy", "cloud-localds")


def processes() -> list[tuple[int, str]]:
    """(pid, command line) of every process, arguments joined by spaces."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                out.append((int(entry.name), cmd))
    return out


def start_time(pid: int) -> str | None:
    """The process's start time (clock ticks after boot, proc(5) stat field 22): with the pid,
    who it is (a pid is reused, its start time not); None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # after the command name, which may hold spaces


def matching(marks: list[str], programs: tuple[str, ...]) -> list[tuple[int, str, str]]:
    """(pid, command line, program) of every other process running one of `programs` (by
    name, wherever it lies) whose command line names one of `marks`."""
    found = []
    for pid, cmd in processes():
        # the program itself, or the script its interpreter runs (python3 .../ansible-playbook)
        heads = [a.rsplit("/", 1)[-1] for a in cmd.split()[:2]]
        ours = [h for h in heads if h.startswith(programs)]
        if pid != os.getpid() and ours and any(m in cmd for m in marks):
            found.append((pid, cmd, ours[0]))
    return found


def stop_processes(marks: list[str], programs: tuple[str, ...] = PROGRAMS) -> list[str]:
    """SIGKILL every process running one of `programs` whose command line names one of `marks`
    (a build's own scratch paths: nothing of another build matches); returns `PID (program)`.
    Packer and Mitogen's multiplexer (forked by ansible-playbook, then in a session of its
    own) are outside any process group a build can signal, and outlive it."""
    gone = []
    for pid, _, program in matching(marks, programs):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            gone.append(f"{pid} ({program})")
    return gone


def build_id(scratch: Path) -> str:
    """The id a build's engine objects (containers, stage image tags) carry: its scratch
    folder's random part (tempfile's [a-z0-9_], valid in names and tags)."""
    return scratch.name.removeprefix(SCRATCH.rstrip("*"))


def _engine(cache: Cache, scratch: list[Path]) -> list[str]:
    """Remove the containers of this cache's builds, then the stage images of its dead builds
    (tagged `imagebuild-stage/SPEC:ID-STAGE`); what went."""
    try:
        import docker

        client = docker.from_env()
        found = client.containers.list(all=True, filters={"label": f"{CACHE_LABEL}={cache.root}"})
    except Exception:  # no engine here: nothing of ours can be running in it
        return []
    gone = []
    for c in found:
        with contextlib.suppress(Exception):
            c.remove(force=True)
            gone.append(f"container {c.name}")
    for d in scratch:
        ours, tags = f"imagebuild-stage/*:{build_id(d)}-*", set()
        with contextlib.suppress(Exception):
            tags = {t for i in client.images.list(filters={"reference": ours}) for t in i.tags}
        for tag in sorted(tags):
            with contextlib.suppress(Exception):  # one that cannot go does not keep the rest
                client.images.remove(tag)
                gone.append(f"image {tag}")
    return gone


def sweep(cache: Cache, task: str) -> list[str]:
    """Remove a dead build's leftovers from this cache; returns (and says) what went."""
    if not cache.root.is_dir():
        return []
    gone: list[str] = []
    scratch = [p for p in cache.root.glob(SCRATCH) if p.is_dir()]
    # Packer runs in its own session and outlives a killed build; its QEMU is named after the
    # scratch folder, and Packer's arguments name files in it.
    # a rebuild's private cache is a scratch folder holding builds' scratch folders of its own
    nested = {p: [q for q in p.glob(SCRATCH) if q.is_dir()] for p in scratch}
    every = scratch + [q for qs in nested.values() for q in qs]
    marks = [str(p) for p in scratch] + [f"-{p.name}" for p in every]
    gone += [f"process {p}" for p in stop_processes(marks)]
    gone += _engine(cache, scratch)
    for p, qs in nested.items():
        gone += _engine(Cache(p), qs)
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
                gone += [f"process {p}" for p in stop_processes([str(d)], FORMAT_TOOLS)]
                shutil.rmtree(d, ignore_errors=True)
                gone.append(str(d))
    if gone:
        progress.say(f"{task}: removed a killed build's staging folder: {', '.join(gone)}")
    return gone
