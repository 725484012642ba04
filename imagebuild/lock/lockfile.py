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
from imagebuild.spec_sections import HOST_ARCH

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
class ArchSection:
    """Another architecture's closures and wheels (spec `base.architectures`), resolved from
    the same inputs: its rows are `os_shared.<arch>`, `os_vm_only.<arch>`, `python.<arch>`."""

    shared: list[DebPackage]
    vm: list[DebPackage]
    python: list[Wheel]


@dataclass(frozen=True)
class Lock:
    header: dict[str, Any]
    inputs: dict[str, Any]
    shared: list[DebPackage]  # the host's architecture (header `arch`): what is built
    vm: list[DebPackage]
    python: list[Wheel]
    path: Path = field(default=Path("imagebuild.lock"), compare=False)
    foreign: dict[str, ArchSection] = field(default_factory=dict)
    # Set on `for_arch`'s view: the file it is a view of (what `render`, `digest`, `row` read).
    whole: Lock | None = field(default=None, compare=False, repr=False)

    @property
    def source_date_epoch(self) -> int:
        return int(self.header["source_date_epoch"])

    @property
    def mirror(self) -> str:
        return str(self.header["mirror"])

    @property
    def arch(self) -> str:
        """The architecture of `shared`, `vm` and `python` (the host's, or a view's)."""
        return str(self.header["arch"])

    def for_arch(self, arch: str) -> Lock:
        """What a build of `arch` reads: that section as `shared`, `vm`, `python` and `arch`;
        its `digest`, `row` and rendering stay the file's. A view: never written itself."""
        if self.whole is not None:
            return self.whole.for_arch(arch)
        sec = self.section(arch)
        if sec is None:
            raise KeyError(f"{self.path}: no {arch} section")
        if arch == self.arch:
            return self
        head = {**self.header, "arch": arch}
        return dataclasses.replace(
            self,
            header=head,
            shared=sec.shared,
            vm=sec.vm,
            python=sec.python,
            foreign={},
            whole=self,
        )

    @property
    def files(self) -> list[DebPackage | Wheel]:
        """Every locked file, once: the shared and VM-only .debs, the wheels, then each other
        architecture's (an `all` package or a pure-Python wheel is in several sections)."""
        once: dict[str, DebPackage | Wheel] = {}
        for _, _, rows in self.sections():
            for r in rows:
                once.setdefault(r.sha256, r)
        return list(once.values())

    def sections(self) -> list[tuple[str, str, list[Any]]]:
        """(title in the file, architecture, rows) of every section, in the file's order."""
        out = []
        for arch, sec, at in [
            (self.arch, self, ""),
            *((a, s, f".{a}") for a, s in self.foreign.items()),
        ]:
            out += [(title + at, arch, getattr(sec, attr)) for title, attr in SECTIONS.items()]
        return out

    def section(self, arch: str) -> ArchSection | None:
        """`arch`'s closures and wheels; None where the lock has no section for it."""
        if arch == self.arch:
            return ArchSection(self.shared, self.vm, self.python)
        if self.whole is not None:
            return self.whole.section(arch)
        return self.foreign.get(arch)

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
        if self.whole is not None:
            return self.whole.row(item)
        title, i = next(
            (title, i)
            for title, _, rows in self.sections()
            for i, r in enumerate(rows)
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
    # Recorded only beyond the default, so a one-architecture lock keeps its bytes and keys.
    arches = {"architectures": spec.base.architectures} if spec.base.architectures[1:] else {}
    return {
        "base": {
            "distro": spec.base.distro,
            "suite": spec.base.suite,
            "mirror": spec.base.effective_mirror,
            "components": spec.base.components,
            **arches,
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
    lock = lock.whole or lock  # a view renders (and hashes) as its file

    def rows(items: list[Any]) -> str:
        if not items:
            return "[]"
        body = ",\n".join("    " + _canon(dataclasses.asdict(i)) for i in items)
        return "[\n" + body + "\n  ]"

    sections = "".join(f',\n  "{title}": {rows(items)}' for title, _, items in lock.sections())
    return (
        "{\n"
        f'  "format": {FORMAT},\n'
        f'  "header": {json.dumps(lock.header, sort_keys=True)},\n'
        f'  "inputs": {_canon(lock.inputs)}'
        f"{sections}\n"
        "}\n"
    )


def make(
    req: Requested,
    shared: list[DebPackage],
    vm: list[DebPackage],
    python: list[Wheel],
    source_date_epoch: int,
    foreign: dict[str, ArchSection] | None = None,
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
        "arch": HOST_ARCH,
        "source_date_epoch": source_date_epoch,
        # The mirror state resolved against: the suite's Release date (also SOURCE_DATE_EPOCH).
        "index_date": rfc3339(source_date_epoch),
        "python": spec.python_version,
        "pypi_index": INDEX,
    }
    return Lock(header, inputs, shared, vm, python, path_for(spec), foreign or {})


SECTIONS = {"os_shared": "shared", "os_vm_only": "vm", "python": "python"}


def moves(old: Lock, new: Lock) -> list[str]:
    """What a re-resolution moved, per lock section: `+ name version`, `- name version`,
    `name old -> new`; empty when nothing did."""
    out: list[str] = []
    olds = {title: rows for title, _, rows in old.sections()}
    news = {title: rows for title, _, rows in new.sections()}
    for title in dict.fromkeys([*news, *olds]):  # a dropped architecture: all its rows gone
        before = {p.name: p.version for p in olds.get(title, [])}
        after = {p.name: p.version for p in news.get(title, [])}
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

        def section(arch: str = "") -> ArchSection:
            at = f".{arch}" if arch else ""
            return ArchSection(
                [DebPackage(**r) for r in data[f"os_shared{at}"]],
                [DebPackage(**r) for r in data[f"os_vm_only{at}"]],
                [Wheel(**r) for r in data[f"python{at}"]],
            )

        host = section()
        foreign = {a: section(a) for a in schema.foreign_arches(data)}
        return Lock(
            data["header"], data["inputs"], host.shared, host.vm, host.python, path, foreign
        )
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise StaleLockError(f"{path}: not a valid lock file ({e}); re-run `invoke lock`") from None
