"""What a stage container changed, as the tar stream `diff_layer` reads: from the container's
overlay upper directory when the engine's storage is readable here, else through the engine's
API (`docker diff` + archive requests, or a full export when the change is large)."""

from __future__ import annotations

import io
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from imagebuild.builders.context import Build
from imagebuild.builders.layers import Manifest, excluded


def read_file(container: Any, path: str) -> bytes:
    stream, _ = container.get_archive("/" + path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as t:
        member = t.next()
        assert member is not None
        f = t.extractfile(member)
        return f.read() if f else b""


def stage_changes(
    b: Build, container: Any, below: Manifest, tmp: Path, seen: set[str] | None = None
) -> tuple[Iterable[bytes], list[str] | None]:
    """A stage's changes for `diff_layer`: from the container's upper dir when it is readable
    here (`seen`: what it held after the stages run before in it, updated), else through the
    engine (a few: path by path; many: a full export)."""
    upper = upper_dir(b, container)
    if upper is not None:
        return upper_entries(upper, below, tmp, b.inputs.lock.source_date_epoch, seen)
    changes = container.diff() or []
    if len(changes) > SMALL_CHANGE:
        return container.export(chunk_size=1 << 20), None
    deleted = [c["Path"] for c in changes if c["Kind"] == DELETED]
    return _changed_entries(container, changes, tmp), deleted


SMALL_CHANGE = 500  # paths `docker diff` reports; above this a full export is cheaper


ADDED, DELETED = 1, 2  # docker diff's Kind: 0 modified, 1 added, 2 deleted


def _changed_entries(container: Any, changes: list[dict[str, Any]], tmp: Path) -> Iterator[bytes]:
    """A tar of just the entries `docker diff` names, for `diff_layer`. An added folder comes
    whole in one archive request (everything in it is added too); any other path comes alone:
    its own header and data, the rest of a modified folder's archive left unread. Each request
    costs ~50 ms in the engine, so the app stage makes a handful instead of one per file."""
    staging = tmp / "changed.tar"
    wanted = {
        c["Path"]: c["Kind"]
        for c in changes
        if c["Kind"] != DELETED and not excluded(c["Path"].lstrip("/"))
    }  # an excluded folder (the repo and wheel mounts) would come whole, for nothing
    # Each response is closed unread past what is wanted (the SDK's get_archive would hold the
    # connection); identity, else the engine gzips it.
    api = container.client.api
    url = f"{api.base_url}/v{api.api_version}/containers/{container.id}/archive"
    headers = {"Accept-Encoding": "identity"}
    whole: list[str] = []
    with tarfile.open(staging, "w", format=tarfile.GNU_FORMAT) as out:
        for path in sorted(wanted):
            if any(path.startswith(w + "/") for w in whole):
                continue  # came with its added folder
            with api.get(url, params={"path": path}, headers=headers, stream=True) as resp:
                resp.raise_for_status()
                # Entry (and hard-link) names start at the requested path's own name.
                base = posixpath.dirname(path)
                with tarfile.open(fileobj=resp.raw, mode="r|") as t:
                    for info in t:
                        full = posixpath.join(base, info.name.rstrip("/"))
                        if full in wanted:
                            info.name = full.lstrip("/")
                            if info.islnk():  # named like the entries: from the request's folder
                                info.linkname = posixpath.join(base, info.linkname).lstrip("/")
                            out.addfile(info, t.extractfile(info) if info.isreg() else None)
                        if full == path:  # the first entry
                            if not (info.isdir() and wanted[path] == ADDED):
                                break  # a file, or a modified folder: nothing else wanted
                            whole.append(path)
    yield from _drain(staging)


def _drain(staging: Path) -> Iterator[bytes]:
    """A staging tar as the byte stream `diff_layer` reads, removed once read or abandoned."""
    try:
        with staging.open("rb") as f:
            yield from iter(partial(f.read, 1 << 20), b"")
    finally:
        staging.unlink()


def upper_dir(b: Build, container: Any) -> Path | None:
    """The container's overlay upper dir, where the engine's storage is readable here."""
    if not b.local_overlay:
        return None
    driver = container.attrs.get("GraphDriver") or {}
    upper = (driver.get("Data") or {}).get("UpperDir")
    # A remote engine's path does not exist here: ask the engine instead.
    try:
        return Path(upper) if upper and Path(upper).is_dir() else None
    except OSError:
        return None


def _opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def upper_entries(
    upper: Path, below: Manifest, tmp: Path, sde: int, seen: set[str] | None = None
) -> tuple[Iterator[bytes], list[str]]:
    """The container's changes read straight from its upper directory (what moby's own diff
    walks) instead of ~1 s of `docker diff` + archive requests: a tar of what is there, and the
    deleted paths (whiteouts: 0/0 character devices; an opaque folder hides everything below
    it). Gives `diff_layer` the same input as the engine's API would, less what it would drop
    at once: an entry `below` already holds as it is (a stage before, run in this container,
    left it; or a folder copied up). `seen`: the paths the upper dir held after the stages run
    before in this container; one no longer there was removed by this stage (no whiteout marks
    a path that was never in the container's image). Updated to what it holds now."""
    staging = tmp / "upper.tar"
    deleted: list[str] = []
    now: set[str] = set()
    opaque: list[str] = []
    with tarfile.open(staging, "w", format=tarfile.GNU_FORMAT) as out:
        for top, dirs, files in os.walk(upper):
            dirs.sort()
            for name in sorted(dirs + files):
                path = Path(top, name)
                rel = str(path.relative_to(upper))
                st = path.lstat()
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    deleted.append(rel)
                    continue
                if excluded(rel):
                    if name in dirs:
                        dirs.remove(name)
                    continue
                now.add(rel)
                if stat.S_ISDIR(st.st_mode) and _opaque(path):
                    opaque.append(rel)
                if _same(path, st, below.get(rel), sde):
                    continue
                info = out.gettarinfo(path, rel)
                if info is None:  # a socket: not part of an image
                    continue
                if info.isreg():
                    with path.open("rb") as f:
                        out.addfile(info, f)
                else:
                    out.addfile(info)
    # An opaque folder hides what the layers below hold in it: what the upper dir lacks there
    # is deleted (what it holds is there, changed or not).
    deleted += [p for p in below if p not in now and _under(p, opaque)]
    if seen is not None:
        deleted += sorted(seen - now)
        seen.clear()
        seen.update(now)
    return _drain(staging), deleted


TYPES = {stat.S_IFREG: "0", stat.S_IFDIR: "5", stat.S_IFLNK: "2"}


def _same(path: Path, st: os.stat_result, below: list | None, sde: int) -> bool:
    """Whether an upper-dir entry is what the layers below hold (`diff_layer` would drop it):
    a folder copied up, or a file a stage before, run in this container, left there. Told from
    its stat alone (no tar header made); a hard-linked file is left to the tar's link check."""
    kind = TYPES.get(stat.S_IFMT(st.st_mode))
    if below is None or kind is None or (kind == "0" and st.st_nlink > 1):
        return False
    size = st.st_size if kind == "0" else 0
    link = os.readlink(path) if kind == "2" else ""
    key = [kind, st.st_mode & 0o7777, st.st_uid, st.st_gid, size, min(int(st.st_mtime), sde), link]
    return key == below


def _under(rel: str, folders: list[str]) -> bool:
    return any(rel.startswith(f + "/") for f in folders)
