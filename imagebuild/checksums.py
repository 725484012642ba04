"""`dist/SHA256SUMS`: what the bytes of every artifact in a dist folder should be.

GNU coreutils' format (`sha256sum -c SHA256SUMS` checks it; Packer's checksum post-processor
writes the same), one line per file name, sorted. Each build replaces the lines of the files
it wrote and keeps the others' (the container, VM and AMI builds share one dist); the file is
rewritten atomically, after the artifacts are in place, under the dist's lock (a second writer's
read-modify-write waits, so no line is lost). verify checks the files it reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imagebuild import distlock
from imagebuild.cache import atomic_file, sha256_file
from imagebuild.errors import ImageBuildError

NAME = "SHA256SUMS"


class ChecksumError(ImageBuildError):
    pass


def read(dist: Path) -> dict[str, str]:
    """File name -> sha256 of `dist/SHA256SUMS` (empty when there is none)."""
    sums: dict[str, str] = {}
    path = dist / NAME
    if not path.is_file():
        return sums
    for n, line in enumerate(path.read_text().splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or "/" in name:
            raise ChecksumError(f"{path}:{n}: not a `SHA256  NAME` line: {line[:80]!r}")
        sums[name.removeprefix("*")] = digest
    return sums


def record(dist: Path, files: list[Path], known: dict[str, str] | None = None) -> Path:
    """Add or replace the lines of `files` (all in `dist`; `known`: name -> sha256 already
    computed) and drop lines of files no longer there."""
    for f in files:
        if f.parent.resolve() != dist.resolve():
            raise ChecksumError(f"{f} is not in {dist}")
    path = dist / NAME
    with distlock.exclusive(dist, f"writing {path}"):
        sums = {name: d for name, d in read(dist).items() if (dist / name).is_file()}
        for f in files:
            sums[f.name] = (known or {}).get(f.name) or sha256_file(f)
        with atomic_file(path) as tmp:
            tmp.write_text("".join(f"{sums[n]}  {n}\n" for n in sorted(sums)))
    return path


def write_records(dist: Path, records: dict[Path, dict[str, Any]]) -> None:
    """JSON records (a target's request and record) written whole, in the order given (the
    last one's presence says the rest is complete), then listed here."""
    for path, body in records.items():
        with atomic_file(path) as t:
            t.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
    record(dist, list(records))


def check(dist: Path, files: list[Path]) -> list[str]:
    """Problems of `files` against `dist/SHA256SUMS`: a file whose bytes differ from its line;
    files it does not list are reported as unlisted (an artifact from elsewhere)."""
    sums = read(dist)
    problems = []
    for f in files:
        want = sums.get(f.name)
        if want is None:
            problems.append(f"{f.name}: not listed in {dist / NAME}")
        elif sha256_file(f) != want:
            problems.append(f"{f.name}: sha256 differs from {dist / NAME}")
    return problems


def listed(dist: Path, files: list[Path]) -> None:
    """An up-to-date build wrote nothing, but its outputs must still be listed (a dist restored
    from elsewhere, or made before SHA256SUMS existed): record those that are not."""
    if not {f.name for f in files} <= read(dist).keys():
        record(dist, files)
