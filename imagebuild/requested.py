"""What a spec asks for, before anything is resolved: the near-side twin of `Resolved`. Made
once per task (`of`) and passed down to the lock, its freshness check, the `--update` check,
`resolve` and verify, so the stack roles are read, the requirements file parsed and the
requested names spelled in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from imagebuild import roles
from imagebuild.errors import SpecError
from imagebuild.spec import Spec

# In every rootfs besides the spec's packages: apt installs the locked packages, python3 is
# Ansible's interpreter on the target.
BASE_PACKAGES = ("apt", "python3")
REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
SPEC_GROUP = "python"  # the spec's own requirement set; the others are named by their role


# The VM's architecture-bound packages, named as amd64 has them (the default `vm.packages`, the
# stack roles), stand for these in another architecture's section: a fixed table, no patterns.
FOREIGN_NAMES = {
    "arm64": {
        "linux-image-cloud-amd64": "linux-image-cloud-arm64",
        "linux-image-amd64": "linux-image-arm64",
        "linux-headers-cloud-amd64": "linux-headers-cloud-arm64",
        "linux-headers-amd64": "linux-headers-arm64",
        "grub-pc-bin": "grub-efi-arm64-bin",  # BIOS GRUB has no arm64 build: UEFI there
    }
}


@dataclass(frozen=True)
class Requested:
    spec: Spec
    stacks: tuple[roles.RoleInfo, ...]  # in the variant `gpu:` selects (CPU or CUDA)
    packages: tuple[str, ...]  # Debian packages of both artifacts: the spec's, then the roles'
    vm: tuple[str, ...]  # VM-only: vm.packages, then the roles' vm_packages
    requirements: tuple[str, ...]  # the spec's requirements file, normalised (a lock input)
    # (group, lines) in install order: the spec's requirements, then each stack role's
    # `python:` lines; resolved together, so every group agrees on shared dependencies.
    requirement_sets: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def shared(self) -> tuple[str, ...]:
        """What the container's closure is resolved from: the base's packages and `packages`."""
        return (*BASE_PACKAGES, *self.packages)

    def vm_for(self, arch: str) -> tuple[str, ...]:
        """The VM-only names as `arch`'s section resolves them (FOREIGN_NAMES)."""
        names = FOREIGN_NAMES.get(arch, {})
        return tuple(names.get(n, n) for n in self.vm)

    @property
    def names(self) -> set[str]:
        """Every name asked of the lock, as `--update` takes them: the Debian packages of both
        groups and the Python distributions of every requirement set, normalised."""
        python = {
            canonicalize_name(m.group(1))
            for _, lines in self.requirement_sets
            for line in lines
            if (m := REQ_NAME.match(line))
        }
        foreign = {n for a in self.spec.base.architectures[1:] for n in self.vm_for(a)}
        return {*self.shared, *self.vm, *foreign, *python}

    @property
    def imports(self) -> list[str]:
        """Distributions whose top-level module verify imports: the stack roles' (meta
        `imports`), else the spec's top-level requirements; normalised, sorted."""
        names = [m for r in self.stacks for m in r.imports]
        names = names or [Requirement(line).name for line in self.requirements]
        return sorted(dict.fromkeys(canonicalize_name(n) for n in names))

    @property
    def cuda_libs(self) -> list[str]:
        return sorted({lib for r in self.stacks for lib in r.cuda_libs})

    def package_error(self, name: str, message: str, arch: str = "") -> SpecError:
        """`message` about Debian package `name` (as `arch`'s section names it: FOREIGN_NAMES),
        at the spec line (or stack) that asked for it."""
        spec = self.spec
        name = host_names(arch).get(name, name)
        for field_name, items in (("packages", spec.packages), ("vm.packages", spec.vm.packages)):
            if name in items:
                return spec.error(f"{field_name}[{items.index(name)}]", f"{name!r}: {message}")
        for i, r in enumerate(self.stacks):
            if name in r.packages + r.vm_packages:
                return spec.error(f"stacks[{i}]", f"role {r.name!r} needs {name!r}: {message}")
        return spec.error("base", f"{name!r}: {message}")


def host_names(arch: str) -> dict[str, str]:
    """`arch`'s own name -> the host's, of each package in FOREIGN_NAMES."""
    return {b: a for a, b in FOREIGN_NAMES.get(arch, {}).items()}


def same_package(names: set[str], arch: str) -> set[str]:
    """`names` with each one's twin in `arch`'s section and in the host's (FOREIGN_NAMES), so
    `lock --update linux-image-cloud-amd64` moves arm64's kernel too, and the other way round."""
    table, back = FOREIGN_NAMES.get(arch, {}), host_names(arch)
    return names | {table[n] for n in names if n in table} | {back[n] for n in names if n in back}


def requirement_lines(spec: Spec) -> list[str]:
    """The requirements file as normalised lines (comments and blanks dropped)."""
    if spec.python is None:
        return []
    text = (spec.base_dir / spec.python.requirements).read_text()
    return [
        ln.split(" #")[0].strip()
        for ln in text.splitlines()
        if ln.strip() and not ln.strip().startswith("#")
    ]


def of(spec: Spec) -> Requested:
    stacks = tuple(roles.stack_roles(spec.stacks, spec.gpu.cuda if spec.gpu else None))
    requirements = tuple(requirement_lines(spec))
    own = [(SPEC_GROUP, requirements)] if spec.python else []
    return Requested(
        spec=spec,
        stacks=stacks,
        packages=(*spec.packages, *(p for r in stacks for p in r.packages)),
        vm=(*spec.vm.packages, *(p for r in stacks for p in r.vm_packages)),
        requirements=requirements,
        requirement_sets=(*own, *((r.name, tuple(r.python)) for r in stacks if r.python)),
    )
