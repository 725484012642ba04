"""The lock file: typed records, a stable diff-friendly text form, and the freshness check.

`<spec>.lock` is JSON laid out one package per line, sorted, so `git diff` shows exactly which
package moved. `inputs` records everything from the spec the lock was resolved from; comparing
it with the current spec names what changed, without touching the network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imagebuild import __version__
from imagebuild.cache import atomic_file
from imagebuild.errors import StaleLockError
from imagebuild.lock import schema
from imagebuild.lock.python import INDEX, platform_tag
from imagebuild.requested import BASE_PACKAGES, Requested
from imagebuild.spec import Spec

FORMAT = 1


@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str
    arch: str
    sha256: str
    filename: str  # pool path on the mirror, e.g. pool/main/a/apt/apt_2.6.1_amd64.deb
    size: int

    @property
    def basename(self) -> str:
        return self.filename.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    filename: str
    url: str
    sha256: str
    size: int | None = None
    group: str = "python"  # who installs it: python_env ("python") or the named stack role


@dataclass(frozen=True)
class Lock:
    header: dict[str, Any]
    inputs: dict[str, Any]
    shared: list[DebPackage]
    vm: list[DebPackage]
    python: list[Wheel]
    path: Path = field(default=Path("imagebuild.lock"), compare=False)

    @property
    def source_date_epoch(self) -> int:
        return int(self.header["source_date_epoch"])

    @property
    def mirror(self) -> str:
        return str(self.header["mirror"])

    @property
    def files(self) -> list[DebPackage | Wheel]:
        """Every locked file: the shared and VM-only .debs, then the wheels."""
        return [*self.shared, *self.vm, *self.python]

    def section_digest(self, section: str) -> str:
        """Content key of one section (shared, vm, python): names build stages and repos."""
        if section == "python":
            return self.groups_digest(*{w.group for w in self.python})
        items = self.shared + (self.vm if section == "vm" else [])
        return hashlib.sha256("\n".join(sorted(p.sha256 for p in items)).encode()).hexdigest()

    def wheels(self, group: str) -> list[Wheel]:
        return [w for w in self.python if w.group == group]

    def groups_digest(self, *groups: str) -> str:
        """Content key of the wheels some roles install (a build stage's Python input)."""
        rows = sorted(f"{w.group}:{w.sha256}" for w in self.python if w.group in groups)
        return hashlib.sha256("\n".join(rows).encode()).hexdigest()

    @property
    def digest(self) -> str:
        return hashlib.sha256(render(self).encode()).hexdigest()

    def row(self, item: DebPackage | Wheel) -> str:
        """Where `item` is, as the lock's own errors say it: `LOCK:LINE: section[i]`."""
        title, i = next(
            (title, i)
            for title, attr in SECTIONS.items()
            for i, r in enumerate(getattr(self, attr))
            if r == item
        )
        try:
            return f"{self.path}:{schema.line(self.path.read_text(), title, i)}: {title}[{i}]"
        except OSError:  # a lock never written (made in memory)
            return f"{self.path}: {title}[{i}]"


def rfc3339(epoch: int) -> str:
    """A lock's time (its source_date_epoch) as the image config, SBOM and index date write it."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def path_for(spec: Spec) -> Path:
    return spec.path.with_suffix(".lock")


def inputs_for(req: Requested) -> dict[str, Any]:
    """Everything in the spec (and in files it names) that the lock's content depends on."""
    spec = req.spec
    return {
        "base": {
            "distro": spec.base.distro,
            "suite": spec.base.suite,
            "mirror": spec.base.effective_mirror,
            "components": spec.base.components,
        },
        "packages": sorted({*BASE_PACKAGES, *spec.packages}),
        "stacks": {
            r.name: {
                "packages": r.packages,
                "vm_packages": r.vm_packages,
                "python": r.python,
            }
            for r in req.stacks
        },
        "gpu": dataclasses.asdict(spec.gpu) if spec.gpu else None,
        "vm_packages": sorted(spec.vm.packages),
        "python": None
        if spec.python is None
        else {
            "requirements": list(req.requirements),
            "target": spec.python_version,
            "platform": platform_tag(spec),
        },
    }


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def inputs_digest(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(_canon(inputs).encode()).hexdigest()


def render(lock: Lock) -> str:
    def rows(items: list[Any]) -> str:
        if not items:
            return "[]"
        body = ",\n".join("    " + _canon(dataclasses.asdict(i)) for i in items)
        return "[\n" + body + "\n  ]"

    return (
        "{\n"
        f'  "format": {FORMAT},\n'
        f'  "header": {json.dumps(lock.header, sort_keys=True)},\n'
        f'  "inputs": {_canon(lock.inputs)},\n'
        f'  "os_shared": {rows(lock.shared)},\n'
        f'  "os_vm_only": {rows(lock.vm)},\n'
        f'  "python": {rows(lock.python)}\n'
        "}\n"
    )


def make(
    req: Requested,
    shared: list[DebPackage],
    vm: list[DebPackage],
    python: list[Wheel],
    source_date_epoch: int,
) -> Lock:
    spec = req.spec
    inputs = inputs_for(req)
    header = {
        "generated_by": f"imagebuild {__version__}",
        "spec": spec.path.name,
        "inputs_sha256": inputs_digest(inputs),
        "mirror": spec.base.effective_mirror,
        "suite": spec.base.suite,
        "components": spec.base.components,
        "snapshot": spec.base.snapshot,
        "arch": "amd64",
        "source_date_epoch": source_date_epoch,
        # The mirror state resolved against: the suite's Release date (also SOURCE_DATE_EPOCH).
        "index_date": rfc3339(source_date_epoch),
        "python": spec.python_version,
        "pypi_index": INDEX,
    }
    return Lock(header, inputs, shared, vm, python, path_for(spec))


SECTIONS = {"os_shared": "shared", "os_vm_only": "vm", "python": "python"}


def moves(old: Lock, new: Lock) -> list[str]:
    """What a re-resolution moved, per lock section: `+ name version`, `- name version`,
    `name old -> new`; empty when nothing did."""
    out: list[str] = []
    for title, attr in SECTIONS.items():
        before = {p.name: p.version for p in getattr(old, attr)}
        after = {p.name: p.version for p in getattr(new, attr)}
        lines = [f"  + {n} {after[n]}" for n in sorted(set(after) - set(before))]
        lines += [f"  - {n} {before[n]}" for n in sorted(set(before) - set(after))]
        lines += [
            f"  {n} {before[n]} -> {after[n]}"
            for n in sorted(set(before) & set(after))
            if before[n] != after[n]
        ]
        if lines:
            out += [f"{title}:", *lines]
    return out


def stamped(new: Lock, old: Lock | None, now: str) -> Lock:
    """`new` with `resolved_at` in its header: the old lock's when nothing but the stamp would
    differ (same mirror state, same result: byte-identical lock), else `now`."""
    if old is not None:
        keep = dataclasses.replace(
            new, header={**new.header, "resolved_at": old.header.get("resolved_at", now)}
        )
        if render(keep) == render(old):
            return keep
    return dataclasses.replace(new, header={**new.header, "resolved_at": now})


def write(lock: Lock) -> None:
    """Atomic: a reader never sees half a lock."""
    with atomic_file(lock.path) as tmp:
        tmp.write_text(render(lock))


def read(path: Path) -> Lock:
    if not path.is_file():
        raise StaleLockError(f"{path}: no lock file; run `invoke lock --spec ...` first")
    try:
        text = path.read_text()
        data = schema.parse(text, str(path))
        if data.get("format") != FORMAT:
            raise StaleLockError(
                f"{path}: lock format {data.get('format')!r}, expected {FORMAT}; "
                "re-run `invoke lock`"
            )
        schema.check(data, text, str(path))
        return Lock(
            data["header"],
            data["inputs"],
            [DebPackage(**r) for r in data["os_shared"]],
            [DebPackage(**r) for r in data["os_vm_only"]],
            [Wheel(**r) for r in data["python"]],
            path,
        )
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise StaleLockError(f"{path}: not a valid lock file ({e}); re-run `invoke lock`") from None


def _list_change(key: str, old: list[Any], new: list[Any]) -> list[str]:
    added = [x for x in new if x not in old]
    removed = [x for x in old if x not in new]
    parts = [f"added {', '.join(map(repr, added))}"] if added else []
    parts += [f"removed {', '.join(map(repr, removed))}"] if removed else []
    return (
        [f"{key}: {'; '.join(parts)}"]
        if parts
        else ([f"{key}: order changed"] if old != new else [])
    )


def differences(old: Any, new: Any, key: str = "") -> list[str]:
    """Human-readable differences between two `inputs` trees, naming the spec field."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            sub = f"{key}.{k}" if key else k
            if k not in old:
                out.append(f"{sub}: added")
            elif k not in new:
                out.append(f"{sub}: removed")
            else:
                out += differences(old[k], new[k], sub)
        return out
    if isinstance(old, list) and isinstance(new, list):
        return _list_change(key, old, new)
    return [] if old == new else [f"{key}: {old!r} -> {new!r}"]


def stale_reasons(req: Requested, lock: Lock) -> list[str]:
    now = inputs_for(req)
    reasons = differences(lock.inputs, now)
    if not reasons and lock.header.get("inputs_sha256") != inputs_digest(lock.inputs):
        reasons.append("the lock's inputs section was edited by hand (digest mismatch)")
    return reasons


def load_fresh(req: Requested) -> Lock:
    """The lock for this spec, or StaleLockError naming every difference (fail closed)."""
    lock = read(path_for(req.spec))
    reasons = stale_reasons(req, lock)
    if reasons:
        raise StaleLockError(
            f"{lock.path} is stale; the spec changed since `invoke lock`:\n  "
            + "\n  ".join(reasons)
            + "\nrun `invoke lock` to update it"
        )
    return lock
