"""The Ansible roles shipped in `ansible/roles/` and what the tool needs to know of them.

A role is a *stack* when it has `meta/imagebuild.yml` with `stack: true`; that file may also
list the OS packages the role installs (`packages`, `vm_packages`), which the lock resolves, so a
new model stack is one new role folder and nothing else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ANSIBLE_DIR = PROJECT_ROOT / "ansible"
ROLES_DIR = ANSIBLE_DIR / "roles"


@dataclass(frozen=True)
class RoleInfo:
    name: str
    stack: bool = False
    description: str = ""
    packages: list[str] = field(default_factory=list)  # in both artifacts
    vm_packages: list[str] = field(default_factory=list)  # VM only (e.g. kernel modules)
    gpu_packages: list[str] = field(default_factory=list)  # both artifacts, only with `gpu:`
    imports: list[str] = field(default_factory=list)  # distributions verify imports (versions)


@cache
def role(name: str) -> RoleInfo:
    meta = ROLES_DIR / name / "meta" / "imagebuild.yml"
    data = yaml.safe_load(meta.read_text()) if meta.is_file() else {}
    return RoleInfo(name=name, **(data or {}))


def known_stacks() -> list[str]:
    if not ROLES_DIR.is_dir():
        return []
    return sorted(d.name for d in ROLES_DIR.iterdir() if d.is_dir() and role(d.name).stack)


def files_digest(name: str) -> str:
    """Content hash of a role's files: a change to the role invalidates its build stage."""
    h = hashlib.sha256()
    base = ROLES_DIR / name
    for p in sorted(base.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(base)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()
