"""Every cache key of a build, in one place: each container stage's (its own inputs chained
with the key of the stage below), the VM's base disk, the sources disk and the finished VM.
Read from the resolved spec; `tests/test_keys.py` pins which input moves which key."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from imagebuild import __version__, inventory, packer, roles
from imagebuild.cache import digest
from imagebuild.cache_entries import ENTRY_FORMAT
from imagebuild.lock.lockfile import Lock
from imagebuild.requested import BASE_PACKAGES
from imagebuild.resolved import Resolved
from imagebuild.spec_sections import HOST_ARCH

STAGES = ("base", "os", "python", "stacks", "app")
# Bump when builders/disk.py, bootloader.py, disk_tree.py, ext4.py or a machine's console
# (machines.py) change what the base disk holds.
DISK_LAYOUT = "3"
# Part of every stage key: bump when builders/layers.py makes different layers from the same
# input (2: folders of every entry included, hard links compared without "./", etc/mtab excluded).
LAYER_FORMAT = "2"
# The output format writers (builders/formats/), read as files: the VM key moves with their code.
FORMATS_DIR = Path(__file__).parent / "builders" / "formats"


@dataclass(frozen=True)
class Keys:
    stages: dict[str, str]  # by STAGES name
    disk: str  # the VM's base disk (made from the app stage)
    vm: str  # the finished VM: base disk + Packer's pass + the formats
    # The finished VM but the app's own files: a VM made under this key takes another app's
    # files without a new base disk or Packer pass (builders.app_overlay).
    vm_but_app: str


def stage_keys(r: Resolved) -> dict[str, str]:
    spec, lock = r.spec, r.lock
    common = [__version__, LAYER_FORMAT, ENTRY_FORMAT, str(lock.source_date_epoch)]
    if lock.arch != HOST_ARCH:  # another architecture's stages never share a key with the host's
        common.append(lock.arch)
    own = {
        # A registry base is named by its digest; a local one by the packages it is made of.
        "base": [spec.base.image]
        if spec.base.image
        else [lock.section_digest("shared"), *BASE_PACKAGES],
        "os": [
            (roles.ANSIBLE_DIR / "site.yml").read_text(),
            roles.files_digest("base_os"),
            json.dumps(r.os_pins),
            spec.user,
            spec.base.effective_mirror,
            " ".join(spec.base.components),
        ],
        "python": [
            roles.files_digest("python_env"),
            lock.groups_digest("python"),
            spec.python.venv if spec.python else "",
        ],
        "stacks": [
            json.dumps(spec.stacks),
            json.dumps(asdict(spec.gpu) if spec.gpu else None),
            lock.groups_digest(*spec.stacks),
            *[roles.files_digest(s, "shared") for s in spec.stacks],
        ],
        "app": [
            roles.files_digest("app"),
            json.dumps(spec.app.build if spec.app else []),
            json.dumps([r.exec_argv, spec.cmd, r.runtime_env, spec.app.dest if spec.app else "/"]),
            r.app_digest,
        ],
    }
    keys, below = {}, ""
    for name in STAGES:
        below = digest(below, name, *common, *own[name])
        keys[name] = below
    return keys


def disk_key(r: Resolved, app_key: str) -> str:
    spec, lock = r.spec, r.lock
    vm_vars = {k: v for k, v in r.vm_vars().items() if "inventory" not in k}
    return digest(
        "base-disk",
        DISK_LAYOUT,
        app_key,
        lock.section_digest("vm"),
        (roles.ANSIBLE_DIR / "vm.yml").read_text(),
        *(roles.files_digest(role) for role in ("base_os", "vm_sources", "vm_base", "vm_service")),
        *(roles.files_digest(s, "vm") for s in spec.stacks),
        json.dumps(vm_vars, sort_keys=True),
        str(spec.vm.disk_gb),
        spec.name,
    )


def sources_disk_key(lock: Lock) -> str:
    return digest(
        "sources-disk", DISK_LAYOUT, lock.section_digest("vm"), lock.section_digest("python")
    )


def vm_key(r: Resolved, disk: str) -> str:
    """Everything the VM's bytes depend on beyond the base disk."""
    return digest(
        "vm",
        disk,
        (packer.PACKER_DIR / packer.TEMPLATE).read_text(),
        roles.files_digest("vm_finalize"),
        inventory.SCRIPT,  # the VM manifest is made by it
        *(f.read_text() for f in sorted(FORMATS_DIR.glob("*.py"))),  # the format writers
        json.dumps(r.playbook_vars(), sort_keys=True),
        json.dumps(asdict(r.spec.vm), sort_keys=True, default=str),
    )


ANY_APP = "any app"  # the app tree's digest and stamp in `vm_but_app`


def vm_but_app_key(r: Resolved) -> str:
    """vm_key as if the app tree were any: every other input (the app stage's role, build
    step, entrypoint, env, destination) still moves it."""
    anyapp = replace(r, app_digest=ANY_APP, app_stamp=ANY_APP)
    return vm_key(anyapp, disk_key(anyapp, stage_keys(anyapp)["app"]))


def compute(r: Resolved) -> Keys:
    stages = stage_keys(r)
    disk = disk_key(r, stages["app"])
    return Keys(stages, disk, vm_key(r, disk), vm_but_app_key(r))
