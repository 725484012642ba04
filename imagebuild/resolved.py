"""What one spec means once its lock and its roles apply: the pinned package lists, the stacks'
VM parts, what starts the app, its environment, the app tree's digest, the paths the build's
sources take inside a stage container and a VM, and the Ansible variables made of all that.
Computed once per task (`resolve`) and passed down typed: the container stages, the VM, the
AMI and every cache key read the same values, so they cannot drift."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from imagebuild import app_tree, inventory, roles
from imagebuild.lock.lockfile import Lock
from imagebuild.requested import Requested
from imagebuild.spec import Spec

# Where the build's sources sit inside a stage container (bind mounts) and inside the VM
# (role vm_sources mounts the sources disk there; a stock AMI gets them uploaded there): the
# role's own default, its one place.
SOURCES_DIR = str(roles.defaults("vm_sources")["imagebuild_sources_dir"])
REPO_DIR, WHEELS_DIR = f"{SOURCES_DIR}/repo", f"{SOURCES_DIR}/wheels"
APP_ARCHIVE = f"{SOURCES_DIR}/app.tar"
GPU_GUARD = "/usr/local/bin/imagebuild-gpu-guard"  # installed by role nvidia_driver
# The app's command at a fixed path (the VM's unit runs it), where the app role writes it.
WRAPPER = roles.task_arg("app", "Entrypoint wrapper", "template", "dest")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def exec_argv(spec: Spec) -> list[str]:
    """What starts the app in both artifacts (container ENTRYPOINT, VM wrapper's exec): the
    spec's entrypoint, behind the GPU guard for GPU specs."""
    return ([GPU_GUARD] if spec.gpu else []) + spec.entrypoint


def runtime_env(spec: Spec) -> dict[str, str]:
    venv_bin = f"{spec.python.venv}/bin:" if spec.python else ""
    return {"PATH": venv_bin + PATH, **spec.runtime_env}


def toolkit_env(spec: Spec) -> dict[str, str]:
    """The NVIDIA Container Toolkit's conventions in the container's config (as NVIDIA's CUDA
    images have them): which GPUs and driver parts to inject, and the CUDA the host driver must
    support (the toolkit refuses to start the container otherwise). Container only: in the VM
    the driver is the image's own."""
    if not spec.gpu:
        return {}
    return {
        "NVIDIA_VISIBLE_DEVICES": "all",
        "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
        "NVIDIA_REQUIRE_CUDA": f"cuda>={spec.gpu.cuda}",
    }


def _pins(versions: dict[str, str], names: Sequence[str]) -> list[str]:
    return [f"{n}={versions[n]}" for n in dict.fromkeys(names)]


@dataclass(frozen=True)
class Resolved:
    spec: Spec
    lock: Lock
    os_pins: list[str]  # `name=version` of every top-level package both artifacts install
    vm_pins: list[str]  # the same for the VM-only ones (spec + stack roles)
    vm_stacks: list[str]  # stack roles with a VM-only part (tasks/vm.yml)
    exec_argv: list[str]
    runtime_env: dict[str, str]
    toolkit_env: dict[str, str]
    wheel_groups: list[str]
    app_digest: str  # "" without an app
    app_stamp: str

    @property
    def sde(self) -> int:
        return self.lock.source_date_epoch

    def write_app_archive(self, dest: Path) -> str:
        """The app archive at `dest`; its path, "" without an app."""
        return app_tree.write_archive(self.spec, self.sde, self.app_stamp, dest)

    def playbook_vars(self, app_archive: str = "") -> dict[str, Any]:
        """site.yml's variables: the same for every container stage and the VM."""
        spec = self.spec
        return {
            "imagebuild_repo_dir": REPO_DIR,
            "imagebuild_wheel_dir": WHEELS_DIR,
            "imagebuild_suite": spec.base.suite,
            "imagebuild_mirror": spec.base.effective_mirror,
            "imagebuild_components": spec.base.components,
            "imagebuild_os_packages": self.os_pins,
            "imagebuild_user": spec.user,
            "imagebuild_sde": str(self.sde),
            "imagebuild_venv": spec.python.venv if spec.python else "",
            "imagebuild_stacks": spec.stacks,
            "imagebuild_gpu": asdict(spec.gpu) if spec.gpu else {},
            "imagebuild_gpu_guard": GPU_GUARD,
            "imagebuild_exec": self.exec_argv,
            "imagebuild_wheel_groups": self.wheel_groups,
            "imagebuild_app_archive": app_archive,
            "imagebuild_app_stamp": self.app_stamp,
            "imagebuild_app_dest": spec.app.dest if spec.app else "/",
            "imagebuild_app_build": spec.app.build if spec.app else [],
            "imagebuild_cmd": spec.cmd,
            "imagebuild_env": self.runtime_env,
        }

    def vm_vars(self, sources_label: str = "", inventory_out: str = "") -> dict[str, Any]:
        """The variables only vm.yml's VM plays use (on top of `playbook_vars`)."""
        return {
            "imagebuild_vm_packages": self.vm_pins,
            "imagebuild_cloud_datasources": self.spec.vm.datasources(),
            "imagebuild_service_name": self.spec.service_name,
            "imagebuild_vm_stacks": self.vm_stacks,
            "imagebuild_sources_label": sources_label,
            "imagebuild_inventory_script": str(inventory.SCRIPT_PATH),
            "imagebuild_inventory_python": inventory.target_python(self.spec),
            "imagebuild_inventory_out": inventory_out,
        }


def resolve(req: Requested, lock: Lock) -> Resolved:
    spec = req.spec
    shared = {p.name: p.version for p in lock.shared}
    both = shared | {p.name: p.version for p in lock.vm}
    digest = app_tree.digest(spec)
    return Resolved(
        spec=spec,
        lock=lock,
        os_pins=_pins(shared, req.packages),
        vm_pins=_pins(both, req.vm_for(lock.arch)),
        vm_stacks=[s for s in spec.stacks if (roles.ROLES_DIR / s / "tasks" / "vm.yml").is_file()],
        exec_argv=exec_argv(spec),
        runtime_env=runtime_env(spec),
        toolkit_env=toolkit_env(spec),
        wheel_groups=sorted({w.group for w in lock.python}),
        app_digest=digest,
        app_stamp=app_tree.stamp(spec, digest),
    )
