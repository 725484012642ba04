"""The offline CVE gate: the lock's exact versions (every .deb by its source package, every
wheel) matched against a vulnerability database the user hands over (imagebuild.vulndb),
with Debian's version ordering for .debs and PEP 440's for wheels. A pure function of (lock,
database): no network, no clock (the age check is the caller's)."""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagebuild.errors import ImageBuildError
from imagebuild.lock import DebPackage, Lock
from imagebuild.spec_sections import HOST_ARCH
from imagebuild.vulndb import Advisory, Affected, Database

SEVERITIES = ("unknown", "low", "medium", "high", "critical")  # --fail-on's order
# OSV's Debian records are per release ("Debian:12"); the lock names the suite.
DEBIAN_RELEASES = {"buster": "10", "bullseye": "11", "bookworm": "12", "trixie": "13"}
PYPI = "PyPI"
# Debian's urgency (the tracker's, "*" = guessed) as a severity; the rest is "unknown"
URGENCY = {"unimportant": "low", "low": "low", "medium": "medium", "high": "high"}
GITHUB = {"LOW": "low", "MODERATE": "medium", "HIGH": "high", "CRITICAL": "critical"}
BINNMU = re.compile(r"\+b[0-9]+$")  # a binary-only rebuild: the source's version without it


class ScanGateError(ImageBuildError):
    pass


@dataclass(frozen=True)
class Installed:
    ecosystem: str
    name: str  # the Debian source package, or the wheel's canonical name
    version: str  # the source version (a .deb's without +bN), or the wheel's
    rows: tuple[str, ...]  # what the lock has of it: `binary version` or `wheel version`
    vm_only: bool  # only in the VM (os_vm_only)


@dataclass(frozen=True)
class Finding:
    installed: Installed
    advisory: Advisory
    severity: str
    fixed: str  # the first fixed version above the installed one; "" = no fix yet


@dataclass(frozen=True)
class Report:
    db: Database
    installed: tuple[Installed, ...]
    findings: tuple[Finding, ...]
    unreadable: tuple[str, ...]  # advisories with a range whose versions do not parse
    arch: str = HOST_ARCH  # the lock section scanned (base.architectures)

    def at_least(self, severity: str) -> list[Finding]:
        floor = SEVERITIES.index(severity)
        return [f for f in self.findings if SEVERITIES.index(f.severity) >= floor]

    def render(self) -> str:
        debs = [i for i in self.installed if i.ecosystem != PYPI]
        section = "" if self.arch == HOST_ARCH else f" {self.arch}'s lock section:"
        lines = [
            f"scan:{section} {len(debs)} Debian source packages "
            f"({sum(len(i.rows) for i in debs)} .debs) and "
            f"{len(self.installed) - len(debs)} wheels against "
            + ", ".join(
                f"{s.path} (sha256 {s.sha256[:12]}, {s.records} records, newest "
                f"{s.newest:%Y-%m-%d})"
                for s in self.db.sources
            ),
        ]
        rows = [
            (
                f.severity,
                f"{f.installed.name} ({', '.join(r.split()[0] for r in f.installed.rows)})",
                f.installed.version,
                f.fixed or "(no fix yet)",
                " ".join([f.advisory.id, *f.advisory.aliases[:3]]),
                "vm" if f.installed.vm_only else "container+vm",
            )
            for f in self.findings
        ]
        if rows:
            head = ("SEVERITY", "PACKAGE", "INSTALLED", "FIXED IN", "ID", "IN")
            widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
            for r in [head, *rows]:
                lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        counts = {s: sum(f.severity == s for f in self.findings) for s in reversed(SEVERITIES)}
        lines.append(
            f"{len(self.findings)} findings: "
            + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
            if self.findings
            else "0 findings"
        )
        if self.unreadable:
            lines.append(
                f"not decidable (a range's versions do not parse): {', '.join(self.unreadable)}"
            )
        return "\n".join(lines)


def _source(row: DebPackage) -> str:
    """The source package: the pool folder the .deb sits in (pool/COMPONENT/PREFIX/SOURCE/).
    The signed kernel's (linux-signed-amd64) binaries are linux's, at linux's version: Debian's
    advisories name `linux`."""
    parts = row.filename.split("/")
    source = parts[3] if len(parts) == 5 and parts[0] == "pool" else row.name
    return "linux" if source.startswith("linux-signed-") else source


def ecosystems(lock: Lock) -> tuple[str, str]:
    """The OSV ecosystems of what the lock installs: its Debian release's and PyPI."""
    release = DEBIAN_RELEASES.get(str(lock.header.get("suite")))
    if release is None:
        raise ImageBuildError(
            f"{lock.path}: header.suite {lock.header.get('suite')!r}: no Debian release number "
            f"known for it (OSV's Debian records are per release: {', '.join(DEBIAN_RELEASES)})"
        )
    return f"Debian:{release}", PYPI


def installed(lock: Lock) -> list[Installed]:
    """What the lock installs, as advisories name it: .debs grouped by source package."""
    debian = ecosystems(lock)[0]
    groups: dict[tuple[str, str], list[tuple[str, bool]]] = {}
    for rows, vm_only in ((lock.shared, False), (lock.vm, True)):
        for r in rows:
            key = (_source(r), BINNMU.sub("", r.version))
            groups.setdefault(key, []).append((f"{r.name} {r.version}", vm_only))
    out = [
        Installed(debian, name, version, tuple(r for r, _ in rows), all(v for _, v in rows))
        for (name, version), rows in sorted(groups.items())
    ]
    from packaging.utils import canonicalize_name

    out += [
        Installed(PYPI, canonicalize_name(w.name), w.version, (f"{w.name} {w.version}",), False)
        for w in sorted(lock.python, key=lambda w: w.name)
    ]
    return out


def _parser(ecosystem: str) -> Callable[[str], Any]:
    if ecosystem == PYPI:
        from packaging.version import Version

        return Version
    from debian.debian_support import Version as DebVersion

    return DebVersion


def _hit(version: str, a: Affected, parse: Callable[[str], Any]) -> tuple[bool, str, bool]:
    """Whether `version` is affected (listed, or inside a range by OSV's evaluation: events in
    version order, the last one at or below the version decides), the first fix above it, and
    whether some range could not be read (its versions do not parse: the caller says so)."""
    v = parse(version)
    hit, fixes, unreadable = version in a.versions, [], False
    for events in a.events:
        try:
            # "0" is "since the beginning", below every version of either ordering
            at_ = [(kind, parse(at) if at != "0" else None) for kind, at in events]
        except ValueError:  # packaging's InvalidVersion and python-debian's are ValueErrors
            unreadable = True
            continue
        ordered = sorted(at_, key=lambda e: (e[1] is not None, e[1] if e[1] is not None else 0))
        inside = False
        for kind, end in ordered:
            if kind == "introduced" and (end is None or v >= end):
                inside = True
            elif kind in ("fixed", "last_affected") and end is not None:
                inside = inside and not (v >= end if kind == "fixed" else v > end)
        hit = hit or inside
        if inside:
            fixes += [e for k, e in ordered if k == "fixed" and e is not None and e > v]
    return hit, str(min(fixes)) if fixes else "", unreadable


def severity(advisory: Advisory, affected: Affected) -> str:
    """The distribution's own rating first (Debian's urgency), then the database's (GitHub's),
    then the highest CVSS base rating given; else "unknown"."""
    if urgency := URGENCY.get(affected.urgency.rstrip("*").strip()):
        return urgency
    if rated := GITHUB.get(advisory.db_severity.upper()):
        return rated
    found = [s for kind, vector in advisory.severity if (s := _cvss(kind, vector))]
    return max(found, key=SEVERITIES.index) if found else "unknown"


def _cvss(kind: str, vector: str) -> str:
    import cvss

    try:
        if kind == "CVSS_V3":
            rated = str(cvss.CVSS3(vector).severities()[0]).lower()
        elif kind == "CVSS_V4":
            rated = str(cvss.CVSS4(vector).severity).lower()
        elif kind == "CVSS_V2":
            score = float(cvss.CVSS2(vector).scores()[0])
            rated = "high" if score >= 7 else "medium" if score >= 4 else "low"
        else:
            return ""
    except (cvss.CVSSError, ValueError, KeyError):
        return ""
    # a base score of 0.0 is rated "None": still a record against this version, kept as low
    return rated if rated in SEVERITIES else "low" if rated == "none" else ""


def scan(lock: Lock, db: Database) -> Report:
    """Every (installed package, advisory) pair where the installed version is affected."""
    packages = installed(lock)
    by_name: dict[tuple[str, str], list[tuple[Advisory, Affected]]] = {}
    for adv in db.advisories:
        for a in adv.affected:
            name = a.name
            if a.ecosystem == PYPI:
                from packaging.utils import canonicalize_name

                name = canonicalize_name(name)
            by_name.setdefault((a.ecosystem, name), []).append((adv, a))
    findings, unreadable = [], set()
    for p in packages:
        parse = _parser(p.ecosystem)
        for adv, a in by_name.get((p.ecosystem, p.name), []):
            hit, fixed, undecided = _hit(p.version, a, parse)
            if undecided and not hit:
                unreadable.add(f"{adv.id} ({p.name} {p.version})")
            if hit:
                findings.append(Finding(p, adv, severity(adv, a), fixed))
    findings.sort(key=lambda f: (-SEVERITIES.index(f.severity), f.installed.name, f.advisory.id))
    return Report(db, tuple(packages), tuple(findings), tuple(sorted(unreadable)), lock.arch)


def too_old(db: Database, max_days: int, now: datetime.datetime) -> str:
    """Why the database is refused for its age ("" when it is not): its stalest export's
    newest record is more than `max_days` days before `now` (0: any age)."""
    age = now - db.newest
    if max_days <= 0 or age <= datetime.timedelta(days=max_days):
        return ""
    stale = [str(s.path) for s in db.sources if s.newest == db.newest]
    return (
        f"{', '.join(stale)}: newest record {db.newest:%Y-%m-%d}, {age.days} days old, older "
        f"than {max_days} days: fetch a fresh export, or accept this one with --max-db-age"
    )


def gate(report: Report, fail_on: str | None) -> None:
    """ScanGateError naming each finding at or above `fail_on`."""
    if not fail_on:
        return
    bad = report.at_least(fail_on)
    if bad:
        raise ScanGateError(
            f"scan: {len(bad)} findings at or above {fail_on} (--fail-on): "
            + ", ".join(f"{f.advisory.id} ({f.installed.name} {f.installed.version})" for f in bad)
        )
    if report.unreadable:  # an advisory that may apply is not a pass
        raise ScanGateError(
            "scan: not decidable (a range's versions do not parse), so --fail-on cannot pass: "
            + ", ".join(report.unreadable)
        )


def option_problems(
    dbs: list[str] | None, fail_on: str | None, max_db_age: Any, flag: str = "--db"
) -> list[str]:
    """What is wrong with a scan's options (`invoke scan --db`, the builds' --scan)."""
    return [
        p
        for p in (
            not dbs and f"{flag}: give at least one OSV all.zip export",
            fail_on not in (None, *SEVERITIES)
            and f"--fail-on: {fail_on!r} is not one of {', '.join(SEVERITIES)}",
            not str(max_db_age).isdigit()
            and f"--max-db-age: {max_db_age!r} is not a number of days",
        )
        if p
    ]


def run(lock: Lock, dbs: list[Path], max_db_age: int) -> Report:
    """Load the databases (refused when older than `max_db_age` days), then scan."""
    from imagebuild import progress, vulndb

    with progress.stage("scan: read the databases"):
        db = vulndb.load(dbs, ecosystems(lock))
    if why := too_old(db, max_db_age, datetime.datetime.now(datetime.UTC)):
        raise vulndb.VulnDBError(why)
    return scan(lock, db)
