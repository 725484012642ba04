"""The spec: `imagebuild.yaml` parsed once into typed, validated dataclasses.

The dataclasses below are the one settings table: their type hints drive parsing, their
metadata (`doc`, `check`, `item_check`) drives validation and the README's field reference
(`python -m imagebuild.spec --markdown`). Every error names FILE:LINE and the field path.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from imagebuild import roles
from imagebuild.errors import SpecError
from imagebuild.spec_checks import (
    OCI_TAG,
    USER_NAME,
    Context,
    broad_root,
    debian_name,
    env_names,
    existing,
    known_stack,
    meta,
    non_empty,
    outside_root,
    own_unit,
    pattern,
    project_root,
)
from imagebuild.spec_sections import (
    SUITE_PYTHON,
    THREAD_VARS,
    App,
    Base,
    BuildCache,
    Container,
    Gpu,
    Python,
    Verify,
    Vm,
)
from imagebuild.spec_yaml import INVALID, build_dataclass, field_problem, reference

GPU_ROLES = ("nvidia_driver", "cuda_runtime")


@dataclass(frozen=True)
class Spec:
    name: str = field(
        metadata=meta(
            "Artifact name; the VM's unit is `imagebuild-<name>.service`.",
            pattern(r"[a-z0-9][a-z0-9-]{0,62}", "a lower-case name (a-z, 0-9, -)"),
        )
    )
    version: str = field(
        metadata=meta(
            "Artifact version; the image tag.",
            lambda v, _: (
                None
                if OCI_TAG.fullmatch(v) and v[0].isalnum()
                else (f"{v!r} is not a valid image tag (letters, digits, '.', '_', '-'; up to 128)")
            ),
        )
    )
    entrypoint: list[str] = field(
        metadata=meta("Exec-form command; the container ENTRYPOINT and the VM service.", non_empty)
    )
    base: Base = field(default_factory=Base, metadata=meta("Where OS packages come from."))
    packages: list[str] = field(
        default_factory=list,
        metadata=meta("Top-level OS packages for both artifacts.", None, debian_name),
    )
    python: Python | None = field(
        default_factory=Python, metadata=meta("Python venv from locked wheels; `null` for none.")
    )
    stacks: list[str] = field(
        default_factory=list,
        metadata=meta("Model-stack roles under `ansible/roles/`.", None, known_stack),
    )
    gpu: Gpu | None = field(default=None, metadata=meta("GPU profile; `null` for CPU only."))
    app: App | None = field(default=None, metadata=meta("Application files; `null` for none."))
    user: str = field(
        default="app",
        metadata=meta(
            "Runtime user (created, non-root).",
            lambda v, _: (
                None
                if USER_NAME.fullmatch(v) and v != "root"
                else f"{v!r} is not a valid non-root user name"
            ),
        ),
    )
    cmd: list[str] = field(default_factory=list, metadata=meta("Default arguments (CMD)."))
    env: dict[str, str] = field(
        default_factory=dict,
        metadata=meta("Environment for both artifacts; thread variables default to 1.", env_names),
    )
    container: Container = field(default_factory=Container, metadata=meta("Container settings."))
    cache: BuildCache = field(
        default_factory=BuildCache, metadata=meta("The build cache shared through a registry.")
    )
    vm: Vm = field(default_factory=Vm, metadata=meta("VM settings."))
    verify: Verify = field(
        default_factory=Verify, metadata=meta("What `invoke verify` runs besides its own checks.")
    )
    project_root: str = field(
        default=".",
        metadata=meta(
            "Folder (relative to the spec) that `app.src` and `python.requirements` must stay "
            "inside; `..` lets examples share files. Never `/`, a system folder (`/etc`, `/tmp`, "
            "...) or a home, nor a folder holding one.",
            existing("dir"),
        ),
    )
    # Not user fields: where the spec came from and the line of every field path.
    path: Path = field(default=Path("imagebuild.yaml"), compare=False, metadata={"internal": True})
    lines: dict[str, int] = field(
        default_factory=dict, compare=False, repr=False, metadata={"internal": True}
    )

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def python_version(self) -> str:
        return SUITE_PYTHON[self.base.suite]

    @property
    def repository(self) -> str:
        return self.container.repository or f"local/{self.name}"

    @property
    def service_name(self) -> str:
        """The VM's systemd unit for the entrypoint (`.service` implied, as systemctl takes
        it): prefixed, so no spec name (`ssh`, `cloud-init`) replaces a unit of the OS."""
        return f"imagebuild-{self.name}"

    @property
    def runtime_env(self) -> dict[str, str]:
        """`env` with the thread defaults filled in: the same in both artifacts."""
        return {**{k: "1" for k in THREAD_VARS}, **self.env}

    def where(self, path: str) -> str:
        """`FILE:LINE` of a field path, falling back to its closest located parent."""
        p = path
        while p and p not in self.lines:
            p = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", p) if re.search(r"[.\[]", p) else ""
        return f"{self.path}:{self.lines.get(p, 1)}"

    def error(self, path: str, message: str) -> SpecError:
        return SpecError(self.where(path), path, message)


TAG_MAX = 128  # Docker's limit on a tag


def _cross_checks(spec: Spec, ctx: Context) -> None:
    """Rules that span fields; reported at the line of the field they blame."""

    def fail(path: str, message: str) -> None:
        ctx.errors.append(spec.error(path, message))

    root = project_root(spec.base_dir, spec.project_root)
    if problem := broad_root(root):
        fail("project_root", problem)
    if problem := own_unit(f"{spec.service_name}.service"):
        fail("name", problem)
    for fld, value in (
        ("app.src", spec.app.src if spec.app else None),
        ("python.requirements", spec.python.requirements if spec.python else None),
    ):
        if value is not None and (problem := outside_root(root, spec.base_dir, value)):
            fail(fld, problem)
    if spec.entrypoint and not spec.entrypoint[0].startswith("/"):
        fail(
            "entrypoint[0]",
            f"{spec.entrypoint[0]!r} must be an absolute path (exec form, no shell)",
        )
    if spec.base.image and spec.base.architectures[1:]:
        fail(
            "base.image",
            f"a registry base is one platform's image (pulled for {spec.base.architectures[0]}):"
            f" base.architectures {spec.base.architectures} needs the base built from the lock "
            "(remove base.image)",
        )
    if (foreign := spec.base.architectures[1:]) and len(spec.version) + max(
        len(f"-{a}") for a in foreign
    ) > TAG_MAX:
        fail(
            "version",
            f"{len(spec.version)} characters: with base.architectures {spec.base.architectures} "
            f"the image is also tagged VERSION-ARCH, which Docker limits to {TAG_MAX} characters",
        )
    if spec.gpu and "non-free" not in spec.base.components:
        fail("base.components", "gpu: needs the 'non-free' component for the NVIDIA driver")
    if spec.vm.ami and spec.vm.ami.method == "stock" and not spec.vm.ami.source_ami:
        fail("vm.ami.source_ami", "missing: vm.ami.method stock starts from a stock AMI")
    if spec.vm.ami and spec.vm.ami.method == "import" and "qcow2" not in spec.vm.formats:
        fail("vm.formats", "vm.ami.method import makes the AMI from the qcow2: add qcow2 here")
    for i, s in enumerate(spec.stacks):
        info = roles.role(s).variant(bool(spec.gpu))
        if spec.stacks.index(s) != i:
            fail(f"stacks[{i}]", f"{s!r} is listed twice")
        elif info.needs_gpu and not spec.gpu:
            fail(f"stacks[{i}]", f"{s!r} needs a `gpu:` profile (it installs the NVIDIA stack)")
        elif info.python and spec.python is None:
            fail(f"stacks[{i}]", f"{s!r} installs Python packages but `python:` is null")
    if spec.gpu:
        # The guard and verify's GPU checks read what these two roles install.
        missing = [r for r in GPU_ROLES if r not in spec.stacks]
        if missing:
            fail("gpu", f"a GPU profile needs the stacks {', '.join(missing)} (add to `stacks:`)")
        tables = roles.role("cuda_runtime").cuda_wheels
        if spec.gpu.cuda not in tables:
            fail(
                "gpu.cuda",
                f"{spec.gpu.cuda!r}: role cuda_runtime has the CUDA user space of "
                f"{', '.join(tables)} (meta/imagebuild.yml, cuda_wheels)",
            )
        for i, s in enumerate(spec.stacks):
            unknown = set(roles.role(s).variant(True).cuda) - set(tables.get(spec.gpu.cuda, {}))
            if unknown and spec.gpu.cuda in tables:
                fail(
                    f"stacks[{i}]",
                    f"{s!r} needs CUDA components cuda_runtime does not have: "
                    f"{', '.join(sorted(unknown))}",
                )


def option_problem(option: str, field_path: str, value: str) -> str | None:
    """A command-line option that overrides spec field `field_path`, checked by that field's
    own check (one settings table for the file and the command line), its message naming both:
    `--aws-region: 'x' is not an AWS region like eu-west-1 (spec field vm.ami.region)`."""
    ctx = Context(path=Path("(command line)"), base_dir=Path.cwd())
    problem = field_problem(Spec, field_path, value, ctx)
    return f"{option}: {problem} (spec field {field_path})" if problem else None


def load(path: str | Path) -> Spec:
    """Parse and validate a spec file; raise SpecError (exit 2) listing every problem found."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(str(path), "", "spec file not found (pass --spec PATH)") from None
    except OSError as e:
        raise SpecError(str(path), "", f"cannot read spec: {e.strerror}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        raise SpecError(f"{path}:{line}", "", f"YAML syntax error: {e.problem}") from None
    if root is None:
        raise SpecError(f"{path}:1", "", "spec is empty")
    ctx = Context(path=path, base_dir=path.parent)
    spec = build_dataclass(Spec, root, "", ctx)
    if spec is not INVALID:
        spec = dataclasses.replace(spec, path=path, lines=ctx.lines)
        _cross_checks(spec, ctx)
    if ctx.errors:
        raise SpecError.many(sorted(ctx.errors, key=lambda e: int(e.where.rsplit(":", 1)[1])))
    return spec


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        print("| field | type | default | meaning |\n|---|---|---|---|")
        print("\n".join(reference(Spec)))
