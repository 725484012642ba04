"""The Ansible roles shipped in `ansible/roles/` and what the tool needs to know of them.

A role is a *stack* when it has `meta/imagebuild.yml` with `stack: true`; that file may also
list the OS packages the role installs (`packages`, `vm_packages`) and its Python requirements
(`python`), which the lock resolves, so a new model stack is one new role folder and nothing else.
A `gpu:` mapping in that file replaces the fields it names when the spec has `gpu:` (the CUDA
variant of a stack); `needs_gpu: true` marks roles that only make sense with `gpu:`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

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
    python: list[str] = field(default_factory=list)  # requirement lines, locked with the spec's
    imports: list[str] = field(default_factory=list)  # distributions verify imports (versions)
    needs_gpu: bool = False
    gpu: dict[str, Any] = field(default_factory=dict)  # field overrides of the CUDA variant
    cuda: list[str] = field(default_factory=list)  # CUDA components it loads (cuda_runtime's)
    cuda_libs: list[str] = field(default_factory=list)  # site-packages libraries verify `ldd`s
    # CUDA version -> component -> requirement line (role cuda_runtime: the CUDA user space)
    cuda_wheels: dict[str, dict[str, str]] = field(default_factory=dict)

    def variant(self, gpu: bool) -> RoleInfo:
        """The role as a spec with (or without) `gpu:` uses it."""
        return replace(self, **self.gpu, gpu={}) if gpu and self.gpu else self


def with_cuda_wheels(stacks: list[RoleInfo], cuda: str) -> list[RoleInfo]:
    """The stacks with the CUDA user-space role's `python:` filled in: the runtime plus every
    component the other stacks list in `cuda:`, all pinned to the spec's CUDA version."""
    wanted = {"runtime"} | {c for r in stacks for c in r.cuda}
    return [
        replace(r, python=[line for c, line in r.cuda_wheels.get(cuda, {}).items() if c in wanted])
        if r.cuda_wheels
        else r
        for r in stacks
    ]


def stack_roles(names: Sequence[str], cuda: str | None) -> list[RoleInfo]:
    """The stack roles `names`, in their CUDA variant where `cuda` (the spec's `gpu.cuda`) is
    given, else the CPU one, the CUDA user space resolved for that version. `Requested.stacks`
    holds the spec's, made once per task."""
    stacks = [role(s).variant(cuda is not None) for s in names]
    return with_cuda_wheels(stacks, cuda) if cuda is not None else stacks


@cache
def role(name: str) -> RoleInfo:
    meta = ROLES_DIR / name / "meta" / "imagebuild.yml"
    data = yaml.safe_load(meta.read_text()) if meta.is_file() else {}
    return RoleInfo(name=name, **(data or {}))


def known_stacks() -> list[str]:
    if not ROLES_DIR.is_dir():
        return []
    return sorted(d.name for d in ROLES_DIR.iterdir() if d.is_dir() and role(d.name).stack)


# A stack role's VM-only part (run by vm.yml's VM play): part of the base disk's key, not of the
# container's stacks layer, so a VM-only change rebuilds no container layer.
VM_ONLY = "tasks/vm.yml"


def files_digest(name: str, part: str = "all") -> str:
    """Content hash of a role's files: a change to the role invalidates its build stage.
    `part`: "all", "shared" (without VM_ONLY) or "vm" (VM_ONLY alone)."""
    h = hashlib.sha256()
    base = ROLES_DIR / name
    for p in sorted(base.rglob("*")):
        vm_only = str(p.relative_to(base)) == VM_ONLY
        if p.is_file() and (part == "all" or (part == "vm") == vm_only):
            h.update(str(p.relative_to(base)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


@cache
@cache
def task_arg(name: str, task: str, module: str, arg: str) -> str:
    """An argument of one of role `name`'s tasks (tasks/main.yml), e.g. where the app role
    writes the entrypoint wrapper: imagebuild names that path from the role, its one place."""
    for t in yaml.safe_load((ROLES_DIR / name / "tasks" / "main.yml").read_text()) or []:
        if t.get("name") != task:
            continue
        body = t.get(f"ansible.builtin.{module}") or t.get(module)
        if isinstance(body, dict) and arg in body:
            return str(body[arg])
    raise KeyError(f"role {name}: no task {task!r} with {module}.{arg}")


def defaults(name: str) -> dict[str, Any]:
    """A role's `defaults/main.yml`: values imagebuild must agree on with the role (e.g. verify's
    expectations), read from the one place they are set."""
    return yaml.safe_load((ROLES_DIR / name / "defaults" / "main.yml").read_text()) or {}
