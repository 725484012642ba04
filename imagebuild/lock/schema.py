"""The lock's grammar: every row and header field is checked when a lock is read, so no cache
path, URL or command line is ever built from a string the lock merely claims (a hand-edited or
hostile lock is exit 3 naming the file, the line and the field). Every download is bound to the
spec: debs come from the mirror the lock's inputs record (which the freshness check compares
with the spec), wheels from the one index imagebuild resolves against."""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from imagebuild.errors import StaleLockError
from imagebuild.lock.python import INDEX, MACHINE
from imagebuild.spec_sections import ARCHITECTURES, HOST_ARCH

SHA256 = re.compile(r"[0-9a-f]{64}")
DEB_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")  # Debian policy 5.6.1
DEB_VERSION = re.compile(r"(\d+:)?\d[A-Za-z0-9.+~-]*")  # [epoch:]upstream[-revision]
POOL_PATH = re.compile(r"pool/[a-z0-9-]+(/[A-Za-z0-9+._~-]+)+\.deb")
WHEEL_FILE = re.compile(r"[A-Za-z0-9._+-]+\.whl")
GROUP = re.compile(r"[a-z0-9_]+")
SUITE = re.compile(r"[a-z]+")
UTC_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
COMPONENTS = {"main", "contrib", "non-free", "non-free-firmware"}
WHEEL_HOSTS = {"files.pythonhosted.org"}  # where PyPI's simple index points its files
# Header fields that name where the debs come from: each must be what the inputs record.
FROM_INPUTS = ("mirror", "suite", "components")


def _url(value: Any, schemes: set[str]) -> str | None:
    """None if `value` is an absolute URL of one of `schemes` with a host, else the problem."""
    if not isinstance(value, str) or any(c in value for c in " \t\r\n\"'`$\\;|&<>"):
        return f"{value!r} is not a URL"
    u = urllib.parse.urlsplit(value)
    if u.scheme not in schemes or not u.hostname:
        return f"{value!r} is not an {'/'.join(sorted(schemes))} URL"
    return None


def _deb(row: dict[str, Any], arch: str) -> list[tuple[str, str]]:
    bad = []
    if not isinstance(row.get("name"), str) or not DEB_NAME.fullmatch(row["name"]):
        bad.append(("name", "not a Debian package name"))
    if not isinstance(row.get("version"), str) or not DEB_VERSION.fullmatch(row["version"]):
        bad.append(("version", "not a Debian version"))
    if row.get("arch") not in (arch, "all"):
        bad.append(("arch", f"not {arch} or all (the section's architecture)"))
    fn = row.get("filename")
    if not isinstance(fn, str) or not POOL_PATH.fullmatch(fn) or "/../" in f"/{fn}/":
        bad.append(("filename", "not a pool/... .deb path"))
    elif not fn.endswith(f"_{row.get('arch')}.deb"):  # the pool names every file's architecture
        bad.append(("filename", f"not a {row.get('arch')} .deb (the row's arch)"))
    return bad


def _machine(fn: str, arch: str) -> str | None:
    """None if wheel `fn` runs on `arch` (each tag's platform `any` or that machine's)."""
    machine = MACHINE[arch]
    try:
        platforms = {t.platform for t in parse_wheel_filename(fn)[3]}
    except InvalidWheelFilename:
        return "not a wheel file name"
    if all(p == "any" or p.endswith(f"_{machine}") for p in platforms):
        return None
    return f"not a wheel for {arch} ({machine}): {', '.join(sorted(platforms))}"


def _wheel(row: dict[str, Any], arch: str) -> list[tuple[str, str]]:
    bad = []
    name = row.get("name")
    if not isinstance(name, str) or canonicalize_name(name) != name or not name:
        bad.append(("name", "not a normalised Python distribution name"))
    try:
        Version(str(row.get("version")))
    except InvalidVersion:
        bad.append(("version", "not a PEP 440 version"))
    fn = row.get("filename")
    if not isinstance(fn, str) or not WHEEL_FILE.fullmatch(fn) or fn.startswith("."):
        bad.append(("filename", "not a plain wheel file name"))
    elif problem := _machine(fn, arch):
        bad.append(("filename", problem))
    problem = _url(row.get("url"), {"https"})
    host = urllib.parse.urlsplit(str(row.get("url"))).hostname
    if problem is None and host not in WHEEL_HOSTS:
        problem = f"{host!r} is not {INDEX}'s file host ({', '.join(sorted(WHEEL_HOSTS))})"
    elif problem is None and not str(row["url"]).split("#")[0].endswith(f"/{fn}"):
        problem = "does not end with the row's filename"
    if problem:
        bad.append(("url", problem))
    if not isinstance(row.get("group"), str) or not GROUP.fullmatch(row["group"]):
        bad.append(("group", "not a role name"))
    return bad


def _common(row: dict[str, Any]) -> list[tuple[str, str]]:
    bad = []
    if not isinstance(row.get("sha256"), str) or not SHA256.fullmatch(row["sha256"]):
        bad.append(("sha256", "not 64 lowercase hex digits"))
    size = row.get("size")  # every download stops at it
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        bad.append(("size", "not a byte count"))
    return bad


def _header(header: dict[str, Any], inputs: Any) -> list[tuple[str, str]]:
    bad = []
    if problem := _url(header.get("mirror"), {"http", "https"}):
        bad.append(("mirror", problem))
    base = inputs.get("base") if isinstance(inputs, dict) else None
    for field in FROM_INPUTS:
        recorded = base.get(field) if isinstance(base, dict) else None
        if header.get(field) != recorded:
            msg = f"{header.get(field)!r} is not the inputs' base.{field} {recorded!r}"
            bad.append((field, msg + " (the spec's, which the lock was resolved from)"))
    if header.get("pypi_index") != INDEX:
        bad.append(
            (
                "pypi_index",
                f"{header.get('pypi_index')!r} is not {INDEX}, the index "
                "imagebuild resolves against",
            )
        )
    if not isinstance(header.get("suite"), str) or not SUITE.fullmatch(header["suite"]):
        bad.append(("suite", "not a Debian suite name"))
    comps = header.get("components")
    if not isinstance(comps, list) or not comps or not set(comps) <= COMPONENTS:
        bad.append(("components", f"not a list of {', '.join(sorted(COMPONENTS))}"))
    if header.get("arch") != HOST_ARCH:
        bad.append(("arch", f"not {HOST_ARCH}"))
    epoch = header.get("source_date_epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        bad.append(("source_date_epoch", "not a Unix time"))
    for stamp in ("index_date", "resolved_at"):  # optional (older locks lack them)
        value = header.get(stamp)
        if value is not None and not (isinstance(value, str) and UTC_TIME.fullmatch(value)):
            bad.append((stamp, "not a UTC time like 2026-11-30T04:00:00Z"))
    if not isinstance(header.get("python"), str) or not re.fullmatch(r"\d+\.\d+", header["python"]):
        bad.append(("python", "not a Python version like 3.11"))
    return bad


def line(text: str, key: str, index: int | None) -> int:
    """The line of `key` (a section's row `index`, one row per line as `render` writes them)."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith(f'"{key}"')), 0)
    return start + 1 + (index + 1 if index is not None else 0)


def _twice(text: str, sections: list[tuple[str, list[Any]]]) -> list[tuple[int, str]]:
    """(line, problem) for each row whose name an earlier row of `sections` already has: one
    package is locked once (apt would see two versions of it in the VM's repo)."""
    first: dict[str, tuple[str, int]] = {}
    out = []
    for section, rows in sections:
        for i, row in enumerate(rows):
            name = row.get("name") if isinstance(row, dict) else None
            if not isinstance(name, str):
                continue
            if name in first:
                s, j = first[name]
                msg = f"is also {s}[{j}] (line {line(text, s, j)}); a package is locked once"
                out.append((line(text, section, i), f"{section}[{i}].name: {name!r} {msg}"))
            else:
                first[name] = (section, i)
    return out


def _arches(data: dict[str, Any]) -> tuple[list[str], str | None]:
    """The architectures besides the host's whose sections the lock holds (its inputs', the
    spec's `base.architectures`), or [] and the problem with them."""
    inputs = data.get("inputs")
    base = inputs.get("base") if isinstance(inputs, dict) else None
    arches = base.get("architectures", [HOST_ARCH]) if isinstance(base, dict) else [HOST_ARCH]
    if (
        not isinstance(arches, list)
        or arches[:1] != [HOST_ARCH]
        or not all(isinstance(a, str) and a in ARCHITECTURES for a in arches)
        or len(set(arches)) < len(arches)
    ):
        return [], (
            f"{arches!r} is not {HOST_ARCH} then others of {', '.join(ARCHITECTURES)}, each once"
        )
    return list(arches[1:]), None


def foreign_arches(data: dict[str, Any]) -> list[str]:
    """`_arches` of a lock `check` passed."""
    return _arches(data)[0]


def _same_file(text: str, sections: list[tuple[str, list[Any]]]) -> list[tuple[int, str]]:
    """(line, problem) for a sha256 whose rows disagree on the file (its basename or size):
    fetch keeps one blob per sha256, so both rows must name the same file."""
    first: dict[str, tuple[str, int, Any]] = {}
    out = []
    for section, rows in sections:
        for i, row in enumerate(rows):
            sha = row.get("sha256")
            if not isinstance(sha, str):
                continue
            file = (str(row.get("filename")).rsplit("/", 1)[-1], row.get("size"))
            if sha not in first:
                first[sha] = (section, i, file)
            elif first[sha][2] != file:
                s, j, _ = first[sha]
                msg = f"has the sha256 of {s}[{j}] (line {line(text, s, j)}), another file or size"
                out.append((line(text, section, i), f"{section}[{i}]: {msg}"))
    return out


KINDS = {"os_shared": "deb", "os_vm_only": "deb", "python": "wheel"}


def check(data: dict[str, Any], text: str, path: str) -> None:
    """Raise StaleLockError (exit 3) naming `PATH:LINE: field: problem` for every bad field."""
    problems: list[str] = []
    for field, msg in _header(data["header"], data.get("inputs")):
        problems.append(f"{path}:{line(text, 'header', None)}: header.{field}: {msg}")
    foreign, problem = _arches(data)
    if problem:
        where = f"{path}:{line(text, 'inputs', None)}: inputs.base.architectures"
        problems.append(f"{where}: {problem}")
    arches = {"": HOST_ARCH} | {f".{a}": a for a in foreign}
    known = {"format", "header", "inputs"} | {k + at for k in KINDS for at in arches}
    problems += [
        f"{path}:{line(text, key, None)}: {key}: not a section of this lock (its architectures: "
        f"{', '.join(arches.values())})"
        for key in data
        if key not in known
    ]
    every: list[tuple[str, list[Any]]] = []
    for at, arch in arches.items():
        if bad_sections := [t + at for t in KINDS if not isinstance(data.get(t + at), list)]:
            problems += [
                f"{path}:{line(text, t, None)}: {t}: not a list of rows"
                if t in data
                else f"{path}: {t}: missing (the rows for {arch})"
                for t in bad_sections
            ]
            continue
        for title, kind in KINDS.items():
            section = title + at
            for i, row in enumerate(data[section]):
                where = f"{path}:{line(text, section, i)}: {section}[{i}]"
                if not isinstance(row, dict):
                    problems.append(f"{where}: not a row")
                    continue
                bad = _common(row) + (_deb(row, arch) if kind == "deb" else _wheel(row, arch))
                problems += [f"{where}.{f}: {m}" for f, m in bad]
            every.append((section, [r if isinstance(r, dict) else {} for r in data[section]]))
        debs = [(s + at, data[s + at]) for s in ("os_shared", "os_vm_only")]
        twice = _twice(text, debs) + _twice(text, [("python" + at, data["python" + at])])
        problems += [f"{path}:{n}: {msg}" for n, msg in twice]
    problems += [f"{path}:{n}: {msg}" for n, msg in _same_file(text, every)]
    if problems:
        raise StaleLockError(
            "the lock is not what it claims to be; refusing it:\n  " + "\n  ".join(problems)
        )


class _KeyTwice(Exception):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object_pairs_hook: a key given twice is refused (json.loads keeps the last one
    silently, so an edited row or a second section would replace what a reviewer saw)."""
    if len({k for k, _ in pairs}) < len(pairs):
        raise _KeyTwice
    return dict(pairs)


_JSON = json.JSONDecoder()


def _skip(text: str, pos: int) -> int:
    while text[pos : pos + 1] in (" ", "\t", "\n", "\r"):
        pos += 1
    return pos


def _walk(text: str, pos: int) -> tuple[int, tuple[str, int] | None]:
    """Walk the JSON value at `pos`: (its end, the first key given twice in one object inside
    it with its offset, or None). Run only to say where json.loads found one."""
    pos = _skip(text, pos)
    if text[pos] not in "{[":
        return _JSON.raw_decode(text, pos)[1], None
    is_object, seen = text[pos] == "{", set()
    pos = _skip(text, pos + 1)
    while text[pos] not in "}]":
        if is_object:
            key, after = _JSON.raw_decode(text, pos)
            if key in seen:
                return after, (key, pos)
            seen.add(key)
            pos = _skip(text, after) + 1  # past the ':'
        pos, twice = _walk(text, pos)
        if twice is not None:
            return pos, twice
        pos = _skip(text, pos)
        pos = _skip(text, pos + 1) if text[pos] == "," else pos
    return pos + 1, None


def parse(text: str, path: str) -> Any:
    """The lock's JSON; a key given twice in one object (anywhere) is exit 3 at its line."""
    try:
        return json.loads(text, object_pairs_hook=_pairs)
    except _KeyTwice:
        try:
            twice = _walk(text, 0)[1]
        except (ValueError, IndexError, RecursionError):  # the rest is bad or too deep
            twice = None
        key, where = (repr(twice[0]), twice[1]) if twice else ("a key", 0)
        raise StaleLockError(
            f"{path}:{text.count(chr(10), 0, where) + 1}: {key} given twice in one object "
            "(a JSON reader keeps only one of them); refusing the lock"
        ) from None
