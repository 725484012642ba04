"""The app tree as shipped: which files (ignore rules), their digest, their manifest for the
build record, and the one archive both artifacts unpack."""

from __future__ import annotations

import functools
import hashlib
import os
import tarfile
from pathlib import Path
from typing import Any

import pathspec

from imagebuild import tarnorm
from imagebuild.cache import stat_key
from imagebuild.spec import Spec

# Never shipped unless `.imagebuildignore` re-includes them (`!PATTERN`): VCS data, caches and
# the usual secrets a project folder holds.
DEFAULT_IGNORE = [
    ".git/", ".hg/", ".svn/", "__pycache__/", "*.pyc", ".imagebuildignore", ".env", ".env.*",
    "*.pem", "*.key", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", ".ssh/", ".aws/",
    ".netrc", ".npmrc", ".pypirc", ".docker/",
]  # fmt: skip
IGNORE_FILE = ".imagebuildignore"


def files(root: Path) -> list[Path]:
    """Everything under `root` but what DEFAULT_IGNORE and the tree's own `.imagebuildignore`
    (gitignore syntax, via pathspec) exclude; an ignored folder is not entered. Sorted, so the
    archive and the digest are stable."""
    ignore = root / IGNORE_FILE
    lines = DEFAULT_IGNORE + (ignore.read_text().splitlines() if ignore.is_file() else [])
    rules = pathspec.GitIgnoreSpec.from_lines(lines)
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel = here.relative_to(root)
        kept = [d for d in dirnames if not rules.match_file(f"{rel / d}/")]
        dirnames[:] = sorted(kept)
        out += [here / d for d in dirnames]
        out += [here / f for f in filenames if not rules.match_file(str(rel / f))]
    return sorted(out)


def manifest(spec: Spec) -> list[str]:
    """What the app tree ships, for the build record: `MODE PATH` (owner is root)."""
    if not spec.app:
        return []
    root = spec.base_dir / spec.app.src
    rows = []
    for p in files(root):
        mode = "0755" if p.is_dir() or os.access(p, os.X_OK) else "0644"
        rows.append(f"{mode} {p.relative_to(root)}{'/' if p.is_dir() else ''}")
    return rows


def digest(spec: Spec) -> str:
    """Content hash of the app tree (names, bytes, exec bits): part of the app stage's key and
    the stamp a converged target carries."""
    if not spec.app:
        return ""
    root = spec.base_dir / spec.app.src
    # Hashed once per state of the tree (every file's stat): `resolve` asks once per task, but a
    # long-lived caller (tests, plan after build) may ask again.
    return _tree_digest(root, tuple((str(p), *stat_key(p)) for p in files(root)))


@functools.lru_cache(maxsize=8)
def _tree_digest(root: Path, state: tuple[tuple[Any, ...], ...]) -> str:
    h = hashlib.sha256()
    for entry in state:
        p = Path(entry[0])
        h.update(str(p.relative_to(root)).encode() + b"\0")
        if p.is_file():
            h.update(p.read_bytes() + b"\0" + str(os.access(p, os.X_OK)).encode())
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
    to an emulated guest). Returns its path ("" without an app)."""
    if not spec.app:
        return ""
    root, top = spec.base_dir / spec.app.src, spec.app.dest.strip("/")

    def normalised(info: tarfile.TarInfo, executable: bool) -> tarfile.TarInfo:
        mode = 0o755 if info.isdir() or executable else 0o644
        return tarnorm.ours(info, sde, mode)

    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(normalised(tar.gettarinfo(root, top), True))
        for p in files(root):
            info = normalised(
                tar.gettarinfo(p, f"{top}/{p.relative_to(root)}"), os.access(p, os.X_OK)
            )
            if info.isreg():
                with p.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
        tar.addfile(normalised(tarfile.TarInfo(app_stamp.lstrip("/")), False))
    return str(dest)
