"""The app tree as shipped: which files (ignore rules), their digest, their manifest for the
build record, and the one archive both artifacts unpack. Nothing here follows a symbolic link:
a link ships as a link, and one that leads out of the app folder is refused."""

from __future__ import annotations

import functools
import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pathspec

from imagebuild import secret_rules, tarnorm
from imagebuild.errors import SpecError
from imagebuild.spec import Spec

# Never shipped unless `.imagebuildignore` re-includes them (`!PATTERN`): VCS data, caches and
# the usual secrets a project folder holds (credentials of git, cloud CLIs, kubectl, GnuPG,
# Vault, Terraform state, key stores). Matched in any letter case: `.ENV` is as secret as `.env`.
IGNORE_FILE = ".imagebuildignore"


@dataclass(frozen=True)
class Entry:
    """One shipped entry of the app folder, as lstat saw it."""

    path: Path
    name: str  # relative to the app folder
    kind: str  # "dir", "file" or "link"
    target: str = ""  # a link's target, as written
    executable: bool = False
    state: tuple[int, ...] = ()  # what the digest's memo compares (mode, inode, size, times)

    @property
    def mode(self) -> int:
        return {"dir": 0o755, "link": 0o777}.get(self.kind, 0o755 if self.executable else 0o644)

    @property
    def suffix(self) -> str:
        """What the manifest writes after the name: `/` for a folder, ` -> TARGET` for a link."""
        return {"dir": "/", "link": f" -> {self.target}"}.get(self.kind, "")


def _root(spec: Spec) -> Path:
    assert spec.app is not None
    return spec.base_dir / spec.app.src


def _rules(root: Path) -> pathspec.PathSpec:
    ignore = root / IGNORE_FILE
    own = ignore.read_text().splitlines() if ignore.is_file() else []
    return pathspec.GitIgnoreSpec.from_lines([*secret_rules.lines(), *own])


def _entry(root: Path, real_root: Path, path: Path) -> Entry | str:
    """The entry at `path`, or why it cannot ship. Links are read, never followed: their
    target is resolved only by name, so a link to /proc/kcore or a FIFO is never opened."""
    st = path.lstat()
    name = str(path.relative_to(root))
    state = (st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if stat.S_ISDIR(st.st_mode):
        return Entry(path, name, "dir", state=state)
    if stat.S_ISREG(st.st_mode):
        return Entry(path, name, "file", executable=os.access(path, os.X_OK), state=state)
    if not stat.S_ISLNK(st.st_mode):
        return f"{path}: not a file, folder or symbolic link (a device, FIFO or socket)"
    target = os.readlink(path)
    if os.path.isabs(target):
        return (
            f"{path}: symbolic link to {target!r}: an absolute link names a path of the "
            "host, not of the app; make it relative, inside the app folder"
        )
    lands = Path(os.path.realpath(path))
    if lands != real_root and not lands.is_relative_to(real_root):
        return f"{path}: symbolic link to {target!r} leads out of the app folder (to {lands})"
    return Entry(path, name, "link", target=target, state=state)


def files(spec: Spec) -> list[Entry]:
    """Everything under `app.src` but what the default rules (imagebuild.secret_rules) and the
    tree's own `.imagebuildignore` (gitignore syntax, via pathspec) exclude; an ignored folder
    is not entered, a linked one is a link. Sorted, so the archive and the digest are stable.
    A link out of the folder, an absolute link or a special file is a SpecError (exit 2)
    naming each."""
    root = _root(spec)
    real_root = root.resolve()
    if (root / IGNORE_FILE).is_symlink():  # read as rules: never a link to a host file
        raise spec.error("app.src", f"{root / IGNORE_FILE} must be a file, not a link")
    rules = _rules(root)
    out: list[Entry] = []
    problems: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):  # followlinks=False: links not entered
        here = Path(dirpath)
        rel = here.relative_to(root)
        dirnames[:] = sorted(d for d in dirnames if not rules.match_file(f"{rel / d}/"))
        names = [*dirnames, *(f for f in filenames if not rules.match_file(str(rel / f)))]
        for n in names:
            got = _entry(root, real_root, here / n)
            if isinstance(got, str):
                problems.append(got)
            else:
                out.append(got)
    if problems:
        raise SpecError.many([spec.error("app.src", p) for p in sorted(problems)])
    return sorted(out, key=lambda e: e.path)


def manifest(spec: Spec) -> list[str]:
    """What the app tree ships, for the build record: `MODE PATH` (owner is root), a folder
    with a trailing `/`, a link as `PATH -> TARGET`."""
    if not spec.app:
        return []
    return [f"{e.mode:04o} {e.name}{e.suffix}" for e in files(spec)]


def digest(spec: Spec) -> str:
    """Content hash of the app tree (names, bytes, exec bits, link targets): part of the app
    stage's key and the stamp a converged target carries."""
    if not spec.app:
        return ""
    # Hashed once per state of the tree (every entry's lstat): `resolve` asks once per task,
    # but a long-lived caller (tests, plan after build) may ask again.
    return _tree_digest(tuple(files(spec)))


@functools.lru_cache(maxsize=8)
def _tree_digest(entries: tuple[Entry, ...]) -> str:
    h = hashlib.sha256()
    for e in entries:
        h.update(e.name.encode() + b"\0")
        if e.kind == "file":
            h.update(e.path.read_bytes() + b"\0" + str(e.executable).encode())
        elif e.kind == "link":
            h.update(b"-> " + os.fsencode(e.target) + b"\0")
    return h.hexdigest()


def stamp(spec: Spec, app_digest: str) -> str:
    """The empty file whose name carries the app's digest: a target that has it already holds
    this app (the VM's base disk is made from the container's layers)."""
    return f"{spec.app.dest}/.imagebuild-app-{app_digest}" if spec.app else ""


def write_archive(spec: Spec, sde: int, app_stamp: str, dest: Path) -> str:
    """The app tree as one tar rooted at `/` (sorted, root-owned, u=rwX,go=rX, mtimes =
    SOURCE_DATE_EPOCH): the app folder first, the digest stamp last (an interrupted unpack
    leaves no stamp). The app role unpacks it in one task: no per-file copy, no folder or
    stamp task (each task costs 0.3-0.7 s even in a container; a round trip per file over SSH
    to an emulated guest). Links are stored as links (tarfile reads them with lstat). Returns
    its path ("" without an app)."""
    if not spec.app:
        return ""
    top = spec.app.dest.strip("/")
    folder = tarfile.TarInfo(top)
    folder.type = tarfile.DIRTYPE  # even when `app.src` itself is a link
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(tarnorm.ours(folder, sde, 0o755))
        for e in files(spec):
            info = tarnorm.ours(tar.gettarinfo(e.path, f"{top}/{e.name}"), sde, e.mode)
            if info.isreg():
                with e.path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
        tar.addfile(tarnorm.ours(tarfile.TarInfo(app_stamp.lstrip("/")), sde, 0o644))
    return str(dest)
