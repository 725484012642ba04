"""A vulnerability database the user hands over, read as data: OSV's `all.zip` exports (one
OSV JSON record per member: https://ossf.github.io/osv-schema/), e.g. Debian's and PyPI's from
osv-vulnerabilities.storage.googleapis.com. Only what the scan uses is kept (the affected
entries of the ecosystems asked for), each record's shape is checked, and a hostile archive
(a zip bomb, a huge or malformed member) is refused naming the file and the member."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagebuild import userfiles
from imagebuild.errors import ImageBuildError

MAX_ARCHIVE = 2 << 30  # bytes of one archive as handed over (OSV's Debian export: ~100 MB)
MAX_RECORD = 16 << 20  # bytes of one record (the largest real ones are well under 1 MiB)
MAX_TOTAL = 8 << 30  # uncompressed bytes of one archive
MAX_RECORDS = 1_000_000
# what reading a member can raise: a bad CRC or header, a broken stream, an unknown method, an
# encrypted member
UNREADABLE = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)


class VulnDBError(ImageBuildError):
    pass


@dataclass(frozen=True)
class Affected:
    ecosystem: str  # "PyPI", "Debian:12"
    name: str
    events: tuple[tuple[tuple[str, str], ...], ...]  # per ECOSYSTEM range: (kind, version)
    versions: tuple[str, ...]  # listed affected versions
    urgency: str  # Debian's own assessment (ecosystem_specific.urgency), else ""


@dataclass(frozen=True)
class Advisory:
    id: str
    aliases: tuple[str, ...]  # aliases and Debian's `upstream` (the CVE of a DSA)
    summary: str
    severity: tuple[tuple[str, str], ...]  # (type, score): CVSS_V2/V3/V4 vectors
    db_severity: str  # database_specific.severity (GitHub's LOW/MODERATE/HIGH/CRITICAL)
    affected: tuple[Affected, ...]


@dataclass(frozen=True)
class Source:
    path: Path
    sha256: str
    records: int
    newest: datetime.datetime  # the latest `modified` of its records: how old it is


@dataclass(frozen=True)
class Database:
    sources: tuple[Source, ...]
    advisories: tuple[Advisory, ...]

    @property
    def newest(self) -> datetime.datetime:
        """The date of the oldest source: the database is as old as its stalest part."""
        return min(s.newest for s in self.sources)


def _text(rec: dict[str, Any], key: str, where: str) -> str:
    value = rec.get(key, "")
    if not isinstance(value, str):
        raise VulnDBError(f"{where}: `{key}` is not a string")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise VulnDBError(f"{where}: expected a list of strings")
    return tuple(value)


def _affected(entry: Any, where: str) -> Affected:
    if not isinstance(entry, dict) or not isinstance(entry.get("package"), dict):
        raise VulnDBError(f"{where}: an affected entry without a package")
    pkg = entry["package"]
    ranges = []
    for i, r in enumerate(entry.get("ranges") or []):
        if not isinstance(r, dict) or not isinstance(r.get("events"), list):
            raise VulnDBError(f"{where}: ranges[{i}] has no events list")
        if r.get("type") != "ECOSYSTEM":  # GIT and SEMVER ranges name commits or other rules
            continue
        events = []
        for e in r["events"]:
            if not isinstance(e, dict) or len(e) != 1:
                raise VulnDBError(f"{where}: ranges[{i}]: an event is not one {{kind: version}}")
            ((kind, version),) = e.items()
            if kind not in ("introduced", "fixed", "last_affected", "limit") or not isinstance(
                version, str
            ):
                raise VulnDBError(f"{where}: ranges[{i}]: event {kind!r} is not a known kind")
            events.append((kind, version))
        ranges.append(tuple(events))
    specific = entry.get("ecosystem_specific")
    urgency = specific.get("urgency", "") if isinstance(specific, dict) else ""
    return Affected(
        ecosystem=_text(pkg, "ecosystem", where),
        name=_text(pkg, "name", where),
        events=tuple(ranges),
        versions=_strings(entry.get("versions") or [], f"{where}: versions"),
        urgency=urgency if isinstance(urgency, str) else "",
    )


def _modified(rec: dict[str, Any], where: str) -> datetime.datetime:
    stamp = _text(rec, "modified", where)
    try:
        when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        raise VulnDBError(f"{where}: `modified` {stamp!r} is not an RFC 3339 time") from None
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


def advisory(rec: Any, where: str, ecosystems: tuple[str, ...]) -> Advisory | None:
    """One OSV record, or None when it is withdrawn or affects none of `ecosystems`."""
    if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
        raise VulnDBError(f"{where}: not an OSV record (no `id`)")
    if rec.get("withdrawn"):
        return None
    entries = rec.get("affected") or []
    if not isinstance(entries, list):
        raise VulnDBError(f"{where}: `affected` is not a list")
    kept = tuple(
        a
        for i, e in enumerate(entries)
        if (a := _affected(e, f"{where}: affected[{i}]")).ecosystem in ecosystems
    )
    if not kept:
        return None
    severity = []
    for s in rec.get("severity") or []:
        if isinstance(s, dict) and all(isinstance(s.get(k), str) for k in ("type", "score")):
            severity.append((s["type"], s["score"]))
    specific = rec.get("database_specific")
    db_severity = specific.get("severity", "") if isinstance(specific, dict) else ""
    return Advisory(
        id=rec["id"],
        aliases=_strings(rec.get("aliases") or [], f"{where}: aliases")
        + _strings(rec.get("upstream") or [], f"{where}: upstream"),
        summary=_text(rec, "summary", where) or _text(rec, "details", where)[:200],
        severity=tuple(severity),
        db_severity=db_severity if isinstance(db_severity, str) else "",
        affected=kept,
    )


def _records(path: Path, data: bytes) -> Any:
    """(member name, parsed JSON) of every .json member, each bounded in size."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise VulnDBError(f"{path}: not an OSV all.zip export ({e})") from None
    with zf:
        members = [m for m in zf.infolist() if m.filename.endswith(".json") and not m.is_dir()]
        if len(members) > MAX_RECORDS:
            raise VulnDBError(f"{path}: {len(members)} records, more than {MAX_RECORDS}")
        total = 0
        for m in members:
            where = f"{path}: {m.filename}"
            if m.file_size > MAX_RECORD:
                raise VulnDBError(f"{where}: {m.file_size} bytes, more than {MAX_RECORD}")
            try:
                with zf.open(m) as f:
                    data = f.read(MAX_RECORD + 1)  # the header's size is the archive's word only
            # a bad CRC or header, a broken stream, an unknown method, an encrypted member
            except (
                zipfile.BadZipFile,
                zlib.error,
                EOFError,
                NotImplementedError,
                RuntimeError,
            ) as e:
                raise VulnDBError(f"{where}: cannot be read ({e})") from None
            total += len(data)
            if len(data) > MAX_RECORD or total > MAX_TOTAL:
                raise VulnDBError(f"{where}: the archive unpacks to more than it says")
            try:
                rec = json.loads(data)
            except (ValueError, UnicodeDecodeError, RecursionError) as e:
                raise VulnDBError(f"{where}: not JSON ({str(e)[:200]})") from None
            yield where, rec


def load(paths: list[Path], ecosystems: tuple[str, ...]) -> Database:
    sources, advisories = [], []
    for path in paths:
        try:
            data = userfiles.read_regular(path, MAX_ARCHIVE)
        except ValueError as e:
            raise VulnDBError(f"{path}: {e}") from None
        newest, count = None, 0
        for where, rec in _records(path, data):
            a = advisory(rec, where, ecosystems)
            when = _modified(rec, where)
            newest = when if newest is None or when > newest else newest
            count += 1
            if a:
                advisories.append(a)
        if newest is None:
            raise VulnDBError(f"{path}: no OSV records in it")
        sources.append(Source(path, hashlib.sha256(data).hexdigest(), count, newest))
    return Database(tuple(sources), tuple(advisories))
