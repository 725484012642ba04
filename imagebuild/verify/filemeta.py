"""Parity of what the files are, not only of their bytes: the mode, owner, type and link target
of every path the packages list, the venv's and the app folder's, compared between the two
artifacts; and every setuid, setgid or world-writable package file checked against the locked
.deb's own tar header (`dpkg --verify` checks digests only, and dpkg keeps no modes).

The listings come from data/bytes_script.py (`meta`, one walk per artifact); the judging is
here, on the host, so that it is plain code over two dicts."""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Any

from imagebuild import tools
from imagebuild.builders.layers import excluded
from imagebuild.cache import Cache, sha256_file
from imagebuild.lock.lockfile import DebPackage, Lock
from imagebuild.verify.interpreter import text, texts
from imagebuild.verify.model import ANY, Item

SUMMARY = "modes, owners, types and links (package files, venv, app)"
SPECIAL = "setuid, setgid or world-writable package files unlike their .deb"
UNCHECKED = "special files not checked against a .deb (why)"
MORE = "(more paths differ than are named)"
NOT_LISTED = "not listed"
LIMIT = 50  # paths named one row each; the summary row's digest covers them all

Facts = dict[str, dict[str, str]]


@dataclass(frozen=True)
class Listing:
    """One artifact's `meta` from the digest script."""

    packages: dict[str, tuple[str, dict[str, str]]]  # name -> (version, {path: description})
    trees: dict[str, str]  # the venv's and the app folder's entries: path -> description
    mounts: frozenset[str]  # mount points but `/`
    overrides: dict[str, str]  # dpkg-statoverride: path -> "MODE USER:GROUP"

    @classmethod
    def from_json(cls, raw: Any) -> Listing:
        """KeyError, TypeError, ValueError or AttributeError when the script printed another
        shape (it ran on the artifact's own Python)."""
        packages = {n: (text(v), texts(paths)) for n, (v, paths) in raw["packages"].items()}
        mounts = frozenset(text(m) for m in raw["mounts"]) - {"/"}
        return cls(packages, texts(raw["trees"]), mounts, texts(raw["overrides"]))

    def described(self) -> dict[str, str]:
        """Every path any package lists or a tree holds, with its description."""
        out = {p: d for _, paths in self.packages.values() for p, d in paths.items()}
        return out | self.trees


def kind_mode(description: str) -> tuple[str, int | None]:
    """(`file`, 0o4755) from `file 4755 root:root`; mode None for links and what has none."""
    kind, _, rest = description.partition(" ")
    try:
        return kind, int(rest.split(" ", 1)[0], 8) if kind != "link" else None
    except ValueError:
        return kind, None


def special(description: str) -> bool:
    """setuid or setgid (a folder's setgid only picks its files' group), or world-writable
    without the sticky bit on a folder (anyone could replace its files)."""
    kind, mode = kind_mode(description)
    if mode is None:
        return False
    if mode & 0o6000 and kind != "dir":
        return True
    return bool(mode & 0o002) and not (kind == "dir" and mode & 0o1000)


def core(description: str) -> str:
    """Kind, mode and owner: what a .deb's header holds (file capabilities it cannot)."""
    return description.split(" capability ", 1)[0]


def runtime(path: str, mounts: frozenset[str]) -> bool:
    """Not the image's: a mount point or below one (the engine's /proc and /etc/hosts, the
    VM's /run), or per-run state no container layer carries (logs, apt lists, /tmp's content)."""
    if excluded(path.lstrip("/")):
        return True
    while True:
        if path in mounts:
            return True
        if path in ("/", ""):
            return False
        path = path.rpartition("/")[0] or "/"


def pairs(c: Listing, v: Listing) -> dict[str, tuple[str, str]]:
    """path -> (container's, VM's description) for the paths of every package installed in both
    at one version (one at two versions is a `deb:` row already) and the venv and app entries
    both have (one in a single artifact changes the venv or app digest already)."""
    paths: set[str] = set()
    for name, (version, listed) in c.packages.items():
        if v.packages.get(name, ("", {}))[0] == version:
            paths |= listed.keys() | v.packages[name][1].keys()
    paths |= c.trees.keys() & v.trees.keys()
    paths.discard("/")  # the root filesystem's own mount point (the container's is overlayfs')
    mounts = c.mounts | v.mounts
    cd, vd = c.described(), v.described()
    return {
        p: (cd.get(p, NOT_LISTED), vd.get(p, NOT_LISTED)) for p in paths if not runtime(p, mounts)
    }


def summary(side: dict[str, str]) -> str:
    h = hashlib.sha256("".join(f"{p}\0{d}\n" for p, d in sorted(side.items())).encode())
    return f"{len(side)} paths, sha256 {h.hexdigest()}"


class Debs:
    """The locked .debs' own headers (path -> description, as the script describes a path),
    read from the cache's blobs, each checked against the lock's sha256 first; only for the
    packages owning a special file (a few small ones: util-linux, passwd, login, ...)."""

    def __init__(self, lock: Lock, cache: Cache) -> None:
        self._rows = {p.name: p for p in [*lock.shared, *lock.vm]}
        self._cache = cache
        self._read: dict[str, dict[str, str] | str] = {}
        self._scripts: dict[str, str] = {}

    def entries(self, package: str, version: str) -> dict[str, str] | str:
        """The .deb's entries, or why there is none to compare with."""
        row = self._rows.get(package.split(":")[0])
        if row is None:
            return f"{package} is not in the lock"
        if row.version != version:
            return f"{package} {version} installed, {row.version} locked"
        if row.sha256 not in self._read:
            self._read[row.sha256] = self._load(row)
        return self._read[row.sha256]

    def scripts(self, package: str) -> str:
        """The text of the locked .deb's maintainer scripts (preinst, postinst, ...): where a
        package sets a mode or group itself (openssh-client: `chmod 2755 /usr/bin/ssh-agent`).
        Read after `entries` checked the blob; "" when there are none."""
        row = self._rows[package.split(":")[0]]
        if row.sha256 not in self._scripts:
            try:
                out = tools.run(
                    ["dpkg-deb", "--ctrl-tarfile", self._cache.blob(row.sha256)], text=False
                ).stdout
                with tarfile.open(fileobj=io.BytesIO(out), mode="r:") as tar:
                    found = [
                        tar.extractfile(m)
                        for m in tar
                        if m.isfile() and m.name.lstrip("./") in MAINTAINER_SCRIPTS
                    ]
                    text = "\n".join(f.read().decode(errors="replace") for f in found if f)
            except (tools.ToolError, tarfile.TarError):
                text = ""
            self._scripts[row.sha256] = text
        return self._scripts[row.sha256]

    def _load(self, row: DebPackage) -> dict[str, str] | str:
        blob = self._cache.blob(row.sha256)
        if not blob.is_file():
            return f"{row.basename} is not in the cache {self._cache.root} (invoke fetch)"
        if sha256_file(blob) != row.sha256:
            return f"{blob} ({row.basename}) does not hash to the lock's sha256"
        with tempfile.TemporaryFile() as data:
            try:
                tools.run(["dpkg-deb", "--fsys-tarfile", blob], stdout=data, text=False)
                data.seek(0)
                with tarfile.open(fileobj=data, mode="r:") as tar:
                    return {os.path.normpath("/" + m.name): header(m) for m in tar}
            except (tools.ToolError, tarfile.TarError) as e:
                return f"{row.basename}: {e}"


def header(m: tarfile.TarInfo) -> str:
    """A .deb's tar entry described as the script describes what is on disk."""
    owner = f"{m.uname or m.uid}:{m.gname or m.gid}"
    if m.issym():
        return f"link {owner} -> {m.linkname}"
    kind = (
        "dir"
        if m.isdir()
        else "file"
        if m.isreg() or m.islnk()
        else "char"
        if m.ischr()
        else "block"
        if m.isblk()
        else "fifo"
        if m.isfifo()
        else "other"
    )
    return f"{kind} {m.mode & 0o7777:04o} {owner}"


MAINTAINER_SCRIPTS = ("preinst", "postinst")


def set_by_script(script: str, path: str, have: str, want: str) -> bool:
    """Whether the package's own maintainer script explains every way `have` (what is on disk)
    differs from `want` (its .deb's header): a `chmod MODE PATH` with the mode seen, a
    `chgrp GROUP PATH` or `chown [USER][:GROUP] PATH` with the owner seen. The kind never."""
    kind_h, mode_h, owner_h = (have.split(" ") + ["", ""])[:3]
    kind_w, mode_w, owner_w = (want.split(" ") + ["", ""])[:3]
    if kind_h != kind_w or not script:
        return False
    where = re.escape(path) + r"(?=[\s;&|)]|$)"
    ok = True
    if mode_h != mode_w:
        mode = mode_h.lstrip("0") or "0"
        ok &= bool(re.search(rf"\bchmod\s+0*{mode}\s+{where}", script, re.M))
    if owner_h != owner_w:
        user, _, group = owner_h.partition(":")
        chgrp = user == owner_w.partition(":")[0] and re.search(
            rf"\bchgrp\s+{re.escape(group)}\s+{where}", script, re.M
        )
        chown = re.search(
            rf"\bchown\s+{re.escape(user)}:{re.escape(group)}\s+{where}", script, re.M
        )
        ok &= bool(chgrp or chown)
    return ok


def against_debs(listing: Listing, debs: Debs) -> tuple[list[str], list[str]]:
    """(findings, unchecked): each special package file whose kind, mode and owner are not
    what its .deb ships (or dpkg-statoverride says); the packages there was no .deb for."""
    owners: dict[str, list[tuple[str, str]]] = {}
    have: dict[str, str] = {}
    for name, (version, paths) in listing.packages.items():
        for p, d in paths.items():
            if special(d):
                owners.setdefault(p, []).append((name, version))
                have[p] = core(d)
    findings, unchecked = [], set()
    for p in sorted(owners):
        shipped = []
        for name, version in owners[p]:
            ref = debs.entries(name, version)
            if isinstance(ref, str):
                unchecked.add(ref)
                continue
            want = ref.get(p)
            if want is not None and p in listing.overrides:
                want = f"{want.partition(' ')[0]} {listing.overrides[p]}"
            if want == have[p] or (want and set_by_script(debs.scripts(name), p, have[p], want)):
                break
            shipped.append(f"{name.split(':')[0]} {version} ships {want or 'no such path'}")
        else:
            if shipped:
                findings.append(f"{p}: {have[p]}, but {'; '.join(shipped)}")
    return findings, sorted(unchecked)


def _shown(found: list[str]) -> str:
    more = f" (+{len(found) - LIMIT} more)" if len(found) > LIMIT else ""
    return "; ".join(found[:LIMIT]) + more if found else "none"


def judge(listings: dict[str, Listing | None], debs: Debs) -> dict[str, Facts]:
    """Rows per artifact (container, vm): `files` (the summary digest, the .deb check) and
    `file-meta` (one per path that differs, first LIMIT). A missing listing (the script did
    not run there) gives no rows: that artifact's facts say why."""
    out: dict[str, Facts] = {a: {"files": {}, "file-meta": {}} for a in listings}
    c, v = listings.get("container"), listings.get("vm")
    if c is not None and v is not None:
        both = pairs(c, v)
        differ = sorted(p for p, (x, y) in both.items() if x != y)
        for a, i in (("container", 0), ("vm", 1)):
            out[a]["files"][SUMMARY] = summary({p: pair[i] for p, pair in both.items()})
            out[a]["file-meta"] = {p: both[p][i] for p in differ[:LIMIT]}
            if len(differ) > LIMIT:
                out[a]["file-meta"][MORE] = str(len(differ) - LIMIT)
    for a, listing in listings.items():
        if listing is not None:
            findings, unchecked = against_debs(listing, debs)
            out[a]["files"] |= {SPECIAL: _shown(findings), UNCHECKED: _shown(unchecked)}
    return out


def items(container: Facts) -> list[Item]:
    """The fixed rows, and one per path named in the container's (= the VM's) `file-meta`."""
    named = container.get("file-meta", {})
    out = [
        Item("files", SUMMARY, ANY, ANY),
        Item("files", SPECIAL, "none", "none"),
        # Informational: the cache may lack a .deb (verify on another machine).
        Item("files", UNCHECKED, ANY, ANY, shared=False),
    ]
    out += [Item("file-meta", p, ANY, ANY) for p in named if p != MORE]
    if MORE in named:
        out.append(Item("file-meta", MORE, "0", "0"))
    return out
