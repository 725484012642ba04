"""What a killed verify leaves (kill -9, a CI runner's timeout: no clean-up runs): its libvirt
domain keeps running under libvirtd, a plain-QEMU fallback's QEMU keeps running, its containers
stay in the engine, its work folder (the VM's overlay, the disk's copy) stays in /tmp. Every
verify writes its owner (pid and the process's start time, so that a reused pid is not taken for
it) into its work folder and names that folder on what it starts; the next verify removes what
belongs to a folder whose owner is gone, saying so, before it starts anything itself."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from imagebuild import leftovers, progress

WORK_PREFIX = "imagebuild-verify-"  # the work folder's tempfile prefix
OWNER = ".owner"  # in the work folder: "PID START"
CONTAINER_LABEL = "io.imagebuild.verify"  # on verify's containers: their work folder


def me() -> str | None:
    start = leftovers.start_time(os.getpid())
    return f"{os.getpid()} {start}" if start else None


def claim(work: Path) -> None:
    """Mark `work` as this process's (written before anything is started in its name). Where
    this process's start time cannot be read, no mark: never swept, rather than taken for
    dead by the next verify while it runs."""
    if owner := me():
        (work / OWNER).write_text(owner + "\n")


def _dead(work: Path) -> bool:
    """`work` has an owner and that process is gone. No owner file: not known to be dead (a
    verify that has only just made its folder, or one of another version), so left alone."""
    try:
        pid, start = (work / OWNER).read_text().split()
        return leftovers.start_time(int(pid)) != start
    except (OSError, ValueError):
        return False


def _containers(folders: list[Path]) -> list[str]:
    try:
        import docker

        found = docker.from_env().containers.list(all=True, filters={"label": CONTAINER_LABEL})
    except Exception:  # no engine here: nothing of a verify's can be running in it
        return []
    gone, dead = [], {str(f) for f in folders}
    for c in found:
        if c.labels.get(CONTAINER_LABEL) in dead:
            with contextlib.suppress(Exception):
                c.remove(force=True)
                gone.append(f"container {c.name}")
    return gone


def _domains(folders: list[Path], uri: str) -> list[str]:
    """Domains whose definition names a dead verify's folder (its overlay and serial log are
    there). libvirtd is not started for this: where none runs, no domain does either."""
    try:
        import libvirt

        libvirt.registerErrorHandler(lambda *_: None, None)
        conn: Any = libvirt.open(uri)
    except Exception:
        return []
    gone: list[str] = []
    with contextlib.suppress(Exception):  # a sweep that cannot look never fails a verify
        for dom in conn.listAllDomains():
            with contextlib.suppress(Exception):
                xml = dom.XMLDesc(0)
                if dom.name().startswith(WORK_PREFIX) and any(f"{f}/" in xml for f in folders):
                    dom.destroy()
                    gone.append(f"libvirt domain {dom.name()}")
    with contextlib.suppress(Exception):
        conn.close()
    return gone


def sweep(uri: str, tmp: Path | None = None) -> list[str]:
    """Remove what dead verifies left; returns (and says) what went."""
    root = tmp or Path(tempfile.gettempdir())
    folders = [p for p in root.glob(WORK_PREFIX + "*") if p.is_dir() and _dead(p)]
    if not folders:
        return []
    gone = _domains(folders, uri)  # before QEMU itself: libvirt would see its domain crash
    # the plain-QEMU fallback (its overlay in the folder) and the disk's copy (qemu-img, no
    # parent-death signal: it would go on writing a deleted file)
    marks = [f"{f}/" for f in folders]
    gone += [f"process {p}" for p in leftovers.stop_processes(marks, ("qemu-system", "qemu-img"))]
    gone += _containers(folders)
    for f in folders:
        shutil.rmtree(f, ignore_errors=True)
        gone.append(str(f))
    progress.say(f"verify: removed what a killed verify left: {', '.join(gone)}")
    return gone
