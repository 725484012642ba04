"""A VM's file contents read from its disk image on this host, not in the emulated guest: the
digests behind the `bytes:*` rows (dpkg's recorded MD5s, the venv's wheel RECORDs, the app
folder) at this CPU's speed instead of TCG's (~20 s of the guest's two emulated CPUs).

Input: the root filesystem dumped by debugfs into the jail's tmpfs (diskread.py, as
`rebuild --check` dumps it). The disk is anyone's, so every path of it is resolved inside that
dump as the guest's kernel would resolve it (`inside`): a link on the disk, absolute or with
`..`, never leads to this host's files, and nothing is read through a link that leaves the dump.
What the dump does not keep (debugfs's chown clears setuid bits; owners, capabilities, devices)
is still read in the booted guest: data/bytes_script.py without contents.

`dpkg --verify` is not run here (its `--root` follows the disk's absolute links into this host):
`deb_verify` checks what it checks, from the disk's dpkg database (tested against the real
dpkg on a database of the same shape: tests/test_diskbytes.py).

Run as `python -m imagebuild.verify.diskbytes TREE WANT` (WANT: the script's JSON argument):
prints the script's content keys as JSON, so that verify can kill it at once."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import stat
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

LINKS = 40  # links followed in one path at most, as Linux's MAXSYMLINKS
DATABASE_FILE = 256 << 20  # a status file of every Debian package is ~60 MB


def _script() -> ModuleType:
    """data/bytes_script.py as a module: the same digests, RECORD and listing rules as in the
    artifact."""
    path = Path(__file__).parent.parent / "data" / "bytes_script.py"
    spec = importlib.util.spec_from_file_location("imagebuild_bytes_script", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


S = _script()


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def inside(root: str, path: str) -> str | None:
    """Where the disk's absolute `path` is in its dump at `root`: every link followed inside
    the dump (an absolute target restarts at `root`, `..` stops there); None where it leads
    nowhere (missing, a loop, a file where a folder should be). Each component of the result
    is a real folder of the dump, so opening it follows no link."""
    if "\0" in path:
        return None  # no path of a disk holds one
    todo, done, hops = deque(_parts(path)), list[str](), 0
    while todo:
        name = todo.popleft()
        if name == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(root, *done, name)
        try:
            st = os.lstat(here)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > LINKS:
                return None
            target = os.readlink(here)
            if "\0" in target:
                return None
            done = [] if target.startswith("/") else done
            todo.extendleft(reversed(_parts(target)))
            continue
        if todo and not stat.S_ISDIR(st.st_mode):
            return None
        done.append(name)
    return os.path.join(root, *done)


def _md5(root: str, path: str) -> str | None:
    """The MD5 of the disk's file at `path`, "missing" where there is none; None where it is
    not a regular file or cannot be read (dpkg: `?`, no finding)."""
    here = inside(root, path)
    if here is None:
        return "missing"
    try:
        fd = os.open(here, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a FIFO never waits
    except FileNotFoundError:
        return "missing"
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return hashlib.file_digest(f, "md5").hexdigest()


@dataclass
class Package:
    name: str  # as dpkg's info files are named: `name` or `name:arch` (Multi-Arch: same)
    conffiles: dict[str, str] = field(default_factory=dict)  # path -> recorded MD5


def _lines(text: str) -> list[str]:
    """dpkg's files are lines ended by `\n` only (a path may hold any other byte)."""
    return text.split("\n")


def _paragraphs(text: str) -> list[dict[str, str]]:
    """deb822 paragraphs: field -> value (continuation lines joined by newlines)."""
    out: list[dict[str, str]] = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        last = ""
        for line in _lines(block):
            if line[:1] in (" ", "\t") and last:
                fields[last] += "\n" + line.strip(" \t")
            elif ":" in line:
                last, _, value = line.partition(":")
                fields[last] = value.strip(" \t")
        if fields:
            out.append(fields)
    return out


def conffile(line: str) -> tuple[str, str] | None:
    """` PATH MD5 [FLAG]` of a Conffiles field (PATH may hold spaces): (PATH, MD5), or None
    for one dpkg does not check (obsolete: no longer the package's; remove-on-upgrade: to
    go)."""
    words = line.strip(" ").rsplit(" ", 2)
    if len(words) == 3 and words[2] in ("obsolete", "remove-on-upgrade"):
        return None
    if len(words) == 3 and re.fullmatch(r"[0-9a-f]{32}|newconffile", words[2]):
        words = [f"{words[0]} {words[1]}", words[2]]  # no flag: the path held a space
    if len(words) == 3:
        words = [words[0], words[1]]  # another flag: dpkg checks it
    return (words[0], words[1]) if len(words) == 2 and words[0].startswith("/") else None


def packages(status: str) -> list[Package]:
    """Every package of dpkg's status file but the not-installed ones (dpkg --verify checks
    unpacked and half-configured ones too), each with the conffiles dpkg checks."""
    out = []
    for p in _paragraphs(status):
        words = p.get("Status", "").split()
        if len(words) != 3 or words[2] == "not-installed" or not p.get("Package"):
            continue
        name = p["Package"]
        if p.get("Multi-Arch") == "same" and p.get("Architecture"):
            name += ":" + p["Architecture"]
        rows = (conffile(line) for line in _lines(p.get("Conffiles", "")) if line.strip())
        out.append(Package(name, dict(r for r in rows if r is not None)))
    return out


def diversions(text: str) -> dict[str, tuple[str, str]]:
    """dpkg's diversions file (three lines each: from, to, by package or `:` for the admin):
    from -> (to, by)."""
    lines = _lines(text)
    return {lines[i]: (lines[i + 1], lines[i + 2]) for i in range(0, len(lines) - 2, 3)}


def _read(root: str, path: str, needed: bool = False) -> str:
    """A file of dpkg's database ("" where there is none, unless `needed`), at most
    DATABASE_FILE bytes; a name that is not UTF-8 kept byte for byte (surrogateescape, as
    the file system's names are)."""
    here = inside(root, path)
    if here is None or not os.path.isfile(here):
        if needed:
            raise ValueError(f"{path}: none on the disk (no dpkg database to check against)")
        return ""
    if (size := os.path.getsize(here)) > DATABASE_FILE:
        raise ValueError(f"{path} holds {size} bytes, more than dpkg's database ever needs")
    return Path(here).read_bytes().decode("utf-8", "surrogateescape")


def deb_verify(root: str) -> tuple[list[str], list[str], dict[str, str]]:
    """What `dpkg --verify` finds on the disk dumped at `root`: paths of regular files whose
    MD5 is not the recorded one (`PATH (missing)` where there is none), plain files and
    conffiles apart, and each path's package. As dpkg: each package's files are its `.list`
    (a file another package took over is no longer in it), with the digest its md5sums or
    its Conffiles record; a file another package (or the admin) diverted is not checked."""
    info = "/var/lib/dpkg/info"
    diverted = diversions(_read(root, "/var/lib/dpkg/diversions"))
    plain: list[str] = []
    conf: list[str] = []
    owner: dict[str, str] = {}
    for pkg in packages(_read(root, "/var/lib/dpkg/status", needed=True)):
        sums = {}
        for line in _lines(_read(root, f"{info}/{pkg.name}.md5sums")):
            digest, _, rel = line.partition("  ")
            if rel:
                sums[os.path.normpath("/" + rel)] = digest
        listed = {os.path.normpath(p) for p in _lines(_read(root, f"{info}/{pkg.name}.list")) if p}
        bare = pkg.name.partition(":")[0]
        for path in sorted(listed):
            want = pkg.conffiles.get(path) or sums.get(path)
            if want is None or diverted.get(path, ("", bare))[1] != bare:
                continue  # no digest recorded; or another's (or the admin's) diversion
            got = _md5(root, path)
            if got is None or got == want:
                continue
            (conf if path in pkg.conffiles else plain).append(
                f"{path} (missing)" if got == "missing" else path
            )
            owner.setdefault(path, pkg.name)  # as dpkg-query -S names it
    return plain, conf, owner


def _tree(root: str, top: str) -> tuple[str | None, dict[str, bytes]]:
    """The dump's folder for the disk's `top` and {disk path: sha256} of the files below it."""
    here = inside(root, top)
    if here is None or not os.path.isdir(here):
        return None, {}
    digests, _ = S.survey(here, describing=False)
    return here, {top + p[len(here) :]: d for p, d in digests.items()}


def contents(root: str, want: dict[str, Any]) -> dict[str, Any]:
    """The script's content keys (`deb`, `conffiles`, `record`, `venv-extra`, `venv`, `app`)
    for the disk dumped at `root`; `want` as the script's argument."""
    plain, conf, owner = deb_verify(root)
    out: dict[str, Any] = {
        "deb": S.listed(S.with_package(plain, owner)),
        "conffiles": S.listed(S.with_package(conf, owner)),
    }
    if venv := want.get("venv"):
        here, digests = _tree(root, venv)
        changed, extra, whole = S.venv_record(venv, digests, here)
        out |= {"record": S.listed(changed), "venv-extra": S.listed(extra), "venv": whole}
    app = want["app"]
    _, files = _tree(root, app)
    out["app"] = {os.path.relpath(p, app): d.hex() for p, d in files.items()}
    return out


if __name__ == "__main__":
    print(json.dumps(contents(sys.argv[1], json.loads(sys.argv[2]))))
