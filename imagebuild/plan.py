"""`invoke plan`: the dry-run. Says what would be built and what the cache already holds,
without building, downloading or writing anything."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from imagebuild import distnames
from imagebuild import keys as keying
from imagebuild.builders.vm import up_to_date
from imagebuild.cache import Cache
from imagebuild.errors import StaleLockError
from imagebuild.fetch import source_dirs
from imagebuild.keys import STAGES
from imagebuild.lock.lockfile import DebPackage, Wheel
from imagebuild.project import Project
from imagebuild.resolved import resolve
from imagebuild.spec_clouds import Ami

LABELS = {"os_shared": "os shared", "os_vm_only": "os vm-only", "python": "python"}


@dataclass
class Plan:
    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def add(self, text: str = "") -> None:
        self.lines.append(text)

    def render(self) -> str:
        return "\n".join(self.lines)


def _state(present: bool, otherwise: str) -> str:
    return "reuse" if present else otherwise


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def make_plan(project: Project, cache: Cache, dist: Path) -> Plan:
    spec = project.spec
    plan = Plan()
    plan.add(f"spec      {spec.path}  ({spec.name} {spec.version})")
    try:
        lock = project.lock
    except StaleLockError as e:
        plan.ok = False
        plan.add(f"lock      NOT USABLE: {e}")
        plan.add("          builds would refuse to run; `invoke lock` first")
        return plan
    h = lock.header
    plan.add(
        f"lock      {lock.path}  fresh; {h['suite']} from {h['mirror']}, "
        f"SOURCE_DATE_EPOCH={h['source_date_epoch']}"
    )
    # Another architecture's sections (base.architectures): fetched, built as a container (and
    # as a VM by `build-vm --arch`).
    sections: list[tuple[str, Sequence[DebPackage | Wheel]]] = [
        (LABELS[title.partition(".")[0]] + ("" if arch == h["arch"] else f" {arch}"), rows)
        for title, arch, rows in lock.sections()
    ]
    for label, items in sections:
        have = [i for i in items if cache.has_blob(i.sha256, i.size)]
        size = sum(i.size or 0 for i in items)
        plan.add(
            f"  {label:<11} {len(items):>4} items  {_mb(size):>10}  cached {len(have)}/{len(items)}"
        )
    views = {a: lock.for_arch(a) for a in spec.base.architectures}
    every = {a: keying.compute(resolve(project.req, view)) for a, view in views.items()}
    for arch, view in views.items():
        at = "" if arch == h["arch"] else f"{arch} "
        # Made, as every cache entry, under a temporary name and renamed once complete.
        shared, vm, wh = (
            _state(cache.has(d.parent.name, d.name), "make") for d in source_dirs(cache, view)
        )
        plan.add(f"fetch     {at}apt repo shared: {shared}, vm: {vm}; wheelhouse: {wh}")
        st = every[arch].stages
        layers = " ".join(f"{n}:{_state(cache.has('stages', st[n]), 'build')}" for n in STAGES)
        plan.add(f"container {distnames.image_tag(spec, arch)}  layers {layers}")
    keys = every[h["arch"]]  # the VM is the host's
    state = "nothing to do" if up_to_date(dist, spec, keys.vm) else "packer build"
    plan.add(
        f"vm        {', '.join(spec.vm.formats)}; {spec.vm.cpus} vCPU, {spec.vm.memory_mb} MiB, "
        f"{spec.vm.disk_gb} GiB; base disk {_state(cache.has('disks', keys.disk), 'build')}; "
        f"{state}"
    )
    if spec.vm.ami:
        plan.add(f"ami       {ami_line(spec.vm.ami)}")
    if spec.vm.gce:
        plan.add(
            f"gce       gs://{spec.vm.gce.bucket}/ <- the gce format; images.insert in project "
            f"{spec.vm.gce.project} written, not sent (--target gce, needs Google credentials)"
        )
    return plan


def ami_line(ami: Ami) -> str:
    """What `--target ami` would do, in the fields of its method only."""
    how = (
        f"stock: Packer amazon-ebs on a {ami.instance_type} from {ami.source_ami}"
        if ami.method == "stock"
        else "import: the qcow2's disk as an EBS snapshot (direct APIs) + RegisterImage"
    )
    return f"{ami.region}; {how} (--target ami, needs AWS credentials)"
