"""The lock's grammar: every row and header field is checked when a lock is read, so no cache
path, URL or command line is ever built from a string the lock merely claims (a hand-edited or
hostile lock is exit 3 naming the file, the line and the field)."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from imagebuild.errors import StaleLockError

SHA256 = re.compile(r"[0-9a-f]{64}")
DEB_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")  # Debian policy 5.6.1
DEB_VERSION = re.compile(r"(\d+:)?\d[A-Za-z0-9.+~-]*")  # [epoch:]upstream[-revision]
DEB_ARCH = {"amd64", "all"}
POOL_PATH = re.compile(r"pool/[a-z0-9-]+(/[A-Za-z0-9+._~-]+)+\.deb")
WHEEL_FILE = re.compile(r"[A-Za-z0-9._+-]+\.whl")
GROUP = re.compile(r"[a-z0-9_]+")
SUITE = re.compile(r"[a-z]+")
UTC_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
COMPONENTS = {"main", "contrib", "non-free", "non-free-firmware"}
WHEEL_HOSTS = {"files.pythonhosted.org"}  # where PyPI's simple index points its files


def _url(value: Any, schemes: set[str]) -> str | None:
    """None if `value` is an absolute URL of one of `schemes` with a host, else the problem."""
    if not isinstance(value, str) or any(c in value for c in " \t\r\n\"'`$\\;|&<>"):
        return f"{value!r} is not a URL"
    u = urllib.parse.urlsplit(value)
    if u.scheme not in schemes or not u.hostname:
        return f"{value!r} is not an {'/'.join(sorted(schemes))} URL"
    return None


def _deb(row: dict[str, Any]) -> list[tuple[str, str]]:
    bad = []
    if not isinstance(row.get("name"), str) or not DEB_NAME.fullmatch(row["name"]):
        bad.append(("name", "not a Debian package name"))
    if not isinstance(row.get("version"), str) or not DEB_VERSION.fullmatch(row["version"]):
        bad.append(("version", "not a Debian version"))
    if row.get("arch") not in DEB_ARCH:
        bad.append(("arch", f"not one of {', '.join(sorted(DEB_ARCH))}"))
    fn = row.get("filename")
    if not isinstance(fn, str) or not POOL_PATH.fullmatch(fn) or "/../" in f"/{fn}/":
        bad.append(("filename", "not a pool/... .deb path"))
    return bad


def _wheel(row: dict[str, Any], index: str) -> list[tuple[str, str]]:
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
    problem = _url(row.get("url"), {"https"})
    host = urllib.parse.urlsplit(str(row.get("url"))).hostname
    if problem is None and host not in WHEEL_HOSTS | {urllib.parse.urlsplit(index).hostname}:
        problem = f"{host!r} is not the recorded index's file host"
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
    size = row.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        bad.append(("size", "not a byte count"))
    return bad


def _header(header: dict[str, Any]) -> list[tuple[str, str]]:
    bad = []
    if problem := _url(header.get("mirror"), {"http", "https"}):
        bad.append(("mirror", problem))
    if problem := _url(header.get("pypi_index"), {"https"}):
        bad.append(("pypi_index", problem))
    if not isinstance(header.get("suite"), str) or not SUITE.fullmatch(header["suite"]):
        bad.append(("suite", "not a Debian suite name"))
    comps = header.get("components")
    if not isinstance(comps, list) or not comps or not set(comps) <= COMPONENTS:
        bad.append(("components", f"not a list of {', '.join(sorted(COMPONENTS))}"))
    if header.get("arch") != "amd64":
        bad.append(("arch", "not amd64"))
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


def _line(text: str, key: str, index: int | None) -> int:
    """The line of `key` (a section's row `index`, one row per line as `render` writes them)."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith(f'"{key}"')), 0)
    return start + 1 + (index + 1 if index is not None else 0)


def check(data: dict[str, Any], text: str, path: str) -> None:
    """Raise StaleLockError (exit 3) naming `PATH:LINE: field: problem` for every bad field."""
    problems: list[str] = []
    header = data["header"]
    for field, msg in _header(header):
        problems.append(f"{path}:{_line(text, 'header', None)}: header.{field}: {msg}")
    index = str(header.get("pypi_index", ""))
    for section, rows, kind in (("os_shared", data["os_shared"], "deb"),
                                ("os_vm_only", data["os_vm_only"], "deb"),
                                ("python", data["python"], "wheel")):  # fmt: skip
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                problems.append(f"{path}:{_line(text, section, i)}: {section}[{i}]: not a row")
                continue
            bad = _common(row) + (_deb(row) if kind == "deb" else _wheel(row, index))
            problems += [f"{path}:{_line(text, section, i)}: {section}[{i}].{f}: {m}"
                         for f, m in bad]  # fmt: skip
    if problems:
        raise StaleLockError("the lock is not what it claims to be; refusing it:\n  "
                             + "\n  ".join(problems))  # fmt: skip
