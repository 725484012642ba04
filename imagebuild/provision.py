"""The one way Ansible is run (ansible-runner), with the variables derived from spec + lock.
Both the container stages and the VM build use `playbook_vars`, so they cannot drift."""

from __future__ import annotations

import functools
import hashlib
import os
import signal
import sys
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ansible_runner
import pathspec

from imagebuild import inventory, tarnorm
from imagebuild.cache import stat_key
from imagebuild.errors import ImageBuildError, Terminated
from imagebuild.lock.lockfile import Lock
from imagebuild.roles import ANSIBLE_DIR, ROLES_DIR, stack_roles
from imagebuild.spec import Spec

GPU_GUARD = "/usr/local/bin/imagebuild-gpu-guard"  # installed by role nvidia_driver
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ProvisionError(ImageBuildError):
    pass


@dataclass(frozen=True)
class ProvisionResult:
    changed: int  # tasks that changed something (a stage with none is a no-op)


def os_pins(spec: Spec, lock: Lock) -> list[str]:
    """`name=version` for every top-level package the roles install, from the lock."""
    versions = {p.name: p.version for p in lock.shared}
    names = list(spec.packages)
    for r in stack_roles(spec):
        names += r.packages
    return [f"{n}={versions[n]}" for n in dict.fromkeys(names)]


def vm_pins(spec: Spec, lock: Lock) -> list[str]:
    """`name=version` of the VM-only top-level packages (spec + stack roles), from the lock."""
    versions = {p.name: p.version for p in [*lock.shared, *lock.vm]}
    names = list(spec.vm.packages)
    for r in stack_roles(spec):
        names += r.vm_packages
    return [f"{n}={versions[n]}" for n in dict.fromkeys(names)]


def vm_vars(spec: Spec, lock: Lock, sources_label: str = "", inventory_out: str = "") -> dict:
    """The variables only vm.yml's VM plays use (on top of `playbook_vars`)."""
    return {
        "imagebuild_vm_packages": vm_pins(spec, lock),
        "imagebuild_service_name": spec.name,
        # Stack roles with a VM-only part (tasks/vm.yml), run by vm.yml's VM play.
        "imagebuild_vm_stacks": [
            s for s in spec.stacks if (ROLES_DIR / s / "tasks" / "vm.yml").is_file()
        ],
        "imagebuild_sources_label": sources_label,
        "imagebuild_inventory_script": str(inventory.SCRIPT_PATH),
        "imagebuild_inventory_python": inventory.target_python(spec),
        "imagebuild_inventory_out": inventory_out,
    }


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


# Never shipped unless `.imagebuildignore` re-includes them (`!PATTERN`): VCS data, caches and
# the usual secrets a project folder holds.
DEFAULT_IGNORE = [
    ".git/", ".hg/", ".svn/", "__pycache__/", "*.pyc", ".imagebuildignore", ".env", ".env.*",
    "*.pem", "*.key", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", ".ssh/", ".aws/",
    ".netrc", ".npmrc", ".pypirc", ".docker/",
]  # fmt: skip
IGNORE_FILE = ".imagebuildignore"


def _app_files(root: Path) -> list[Path]:
    """The app tree as shipped: everything but what DEFAULT_IGNORE and the tree's own
    `.imagebuildignore` (gitignore syntax, via pathspec) exclude; an ignored folder is not
    entered. Sorted, so the archive and the digest are stable."""
    ignore = root / IGNORE_FILE
    lines = DEFAULT_IGNORE + (ignore.read_text().splitlines() if ignore.is_file() else [])
    rules = pathspec.GitIgnoreSpec.from_lines(lines)
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel = here.relative_to(root)
        kept = [d for d in dirnames if not rules.match_file(f"{rel / d}/")]
        dirnames[:] = sorted(kept)
        out += [here / d for d in dirnames]
        out += [here / f for f in filenames if not rules.match_file(str(rel / f))]
    return sorted(out)


def app_manifest(spec: Spec) -> list[str]:
    """What the app tree ships, for the build record: `MODE PATH` (owner is root)."""
    if not spec.app:
        return []
    root = spec.base_dir / spec.app.src
    rows = []
    for p in _app_files(root):
        mode = "0755" if p.is_dir() or os.access(p, os.X_OK) else "0644"
        rows.append(f"{mode} {p.relative_to(root)}{'/' if p.is_dir() else ''}")
    return rows


def app_digest(spec: Spec) -> str:
    """Content hash of the app tree (names, bytes, exec bits): the app stage's key and the
    stamp a converged target carries."""
    if not spec.app:
        return ""
    root = spec.base_dir / spec.app.src
    files = _app_files(root)
    # A build asks for it many times (stage keys, each stage's and the VM's Ansible vars, the VM
    # key): the bytes are hashed once per state of the tree, the state being every file's stat.
    return _tree_digest(root, tuple((str(p), *stat_key(p)) for p in files))


@functools.lru_cache(maxsize=8)
def _tree_digest(root: Path, state: tuple[tuple[Any, ...], ...]) -> str:
    h = hashlib.sha256()
    for entry in state:
        p = Path(entry[0])
        h.update(str(p.relative_to(root)).encode() + b"\0")
        if p.is_file():
            h.update(p.read_bytes() + b"\0" + str(os.access(p, os.X_OK)).encode())
    return h.hexdigest()


def app_stamp(spec: Spec) -> str:
    """The empty file whose name carries the app's digest: a target that has it already holds
    this app (the VM's base disk is made from the container's layers)."""
    return f"{spec.app.dest}/.imagebuild-app-{app_digest(spec)}" if spec.app else ""


def write_app_archive(spec: Spec, lock: Lock, dest: Path) -> str:
    """The app tree as one tar rooted at `/` (sorted, root-owned, u=rwX,go=rX, mtimes =
    SOURCE_DATE_EPOCH): the app folder first, the digest stamp last (an interrupted unpack
    leaves no stamp). The app role unpacks it in one task: no per-file copy, no folder or
    stamp task (each task costs 0.3-0.7 s even in a container; a round trip per file over SSH
    to an emulated guest)."""
    if not spec.app:
        return ""
    root, top = spec.base_dir / spec.app.src, spec.app.dest.strip("/")

    def normalised(info: tarfile.TarInfo, executable: bool) -> tarfile.TarInfo:
        mode = 0o755 if info.isdir() or executable else 0o644
        return tarnorm.ours(info, lock.source_date_epoch, mode)

    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(normalised(tar.gettarinfo(root, top), True))
        for p in _app_files(root):
            info = normalised(
                tar.gettarinfo(p, f"{top}/{p.relative_to(root)}"), os.access(p, os.X_OK)
            )
            if info.isreg():
                with p.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
        tar.addfile(normalised(tarfile.TarInfo(app_stamp(spec).lstrip("/")), False))
    return str(dest)


def playbook_vars(
    spec: Spec, lock: Lock, repo_dir: str, wheel_dir: str, app_archive: str = ""
) -> dict[str, Any]:
    return {
        "imagebuild_repo_dir": repo_dir,
        "imagebuild_wheel_dir": wheel_dir,
        "imagebuild_suite": spec.base.suite,
        "imagebuild_mirror": spec.base.effective_mirror,
        "imagebuild_components": spec.base.components,
        "imagebuild_os_packages": os_pins(spec, lock),
        "imagebuild_user": spec.user,
        "imagebuild_sde": str(lock.source_date_epoch),
        "imagebuild_venv": spec.python.venv if spec.python else "",
        "imagebuild_stacks": spec.stacks,
        "imagebuild_gpu": asdict(spec.gpu) if spec.gpu else {},
        "imagebuild_gpu_guard": GPU_GUARD,
        "imagebuild_exec": exec_argv(spec),
        "imagebuild_wheel_groups": sorted({w.group for w in lock.python}),
        "imagebuild_app_archive": app_archive,
        "imagebuild_app_stamp": app_stamp(spec),
        "imagebuild_app_dest": spec.app.dest if spec.app else "/",
        "imagebuild_app_build": spec.app.build if spec.app else [],
        "imagebuild_cmd": spec.cmd,
        "imagebuild_env": runtime_env(spec),
    }


@contextmanager
def _signals_cancel() -> Iterator[list[int]]:
    """While Ansible runs, SIGINT/SIGTERM are recorded (ansible-runner polls the list and stops
    ansible-playbook cleanly), and the caller's handlers are restored afterwards: ansible-runner's
    own handlers would stay installed and swallow every later signal of this process."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received  # only the main thread gets signals
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda num, _frame: received.append(num))
    try:
        yield received
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def run(
    host: str,
    hostvars: dict[str, Any],
    extravars: dict[str, Any],
    tags: list[str] | None,
    private_dir: Path,
    playbook: str = "site.yml",
) -> ProvisionResult:
    """Run an ansible/ playbook against one host; raise with Ansible's own output on failure."""
    private_dir.mkdir(parents=True, exist_ok=True)
    # ansible-playbook lives beside this interpreter (the venv), whatever PATH the caller has.
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    with _signals_cancel() as received:
        r = ansible_runner.run(
            private_data_dir=str(private_dir),
            project_dir=str(ANSIBLE_DIR),
            playbook=playbook,
            inventory={"all": {"hosts": {host: hostvars}}},
            extravars=extravars,
            tags=",".join(tags) if tags else None,
            quiet=True,
            cancel_callback=lambda: bool(received),
            envvars={
                "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
                "ANSIBLE_ROLES_PATH": str(ROLES_DIR),
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_PIPELINING": "1",
            },
        )
    if r.status == "canceled" or received:
        # A signal stopped ansible-playbook (runner reports "canceled"): unwind and clean up as
        # the signal would have.
        raise Terminated if signal.SIGTERM in received else KeyboardInterrupt
    stats = r.stats or {}
    if r.rc != 0 or r.status != "successful":
        tail = r.stdout.read()[-3000:] if r.stdout else ""
        raise ProvisionError(
            f"ansible-playbook {playbook} (tags {tags}) failed on {host} (rc {r.rc}):\n{tail}"
        )
    return ProvisionResult(changed=sum(stats.get("changed", {}).values()))


STRATEGY_ENV = "IMAGEBUILD_ANSIBLE_STRATEGY"
STRATEGIES = ("mitogen_linear", "linear")


def ssh_strategy() -> tuple[str, list[str]]:
    """The Ansible strategy for a booted VM (over SSH), and the environment that selects it.
    Mitogen keeps one Python in the guest and sends module code once; the default strategy
    starts a new interpreter per task that compiles the module anew, 2-8 s per task under
    TCG (Packer's provisioning of the example: 73 s -> 16-21 s, measured).
    $IMAGEBUILD_ANSIBLE_STRATEGY=linear picks Ansible's own. Containers keep `linear`: they
    run at native speed over docker_api."""
    wanted = os.environ.get(STRATEGY_ENV) or STRATEGIES[0]
    if wanted not in STRATEGIES:
        raise ImageBuildError(
            f"${STRATEGY_ENV}={wanted!r}: expected one of {', '.join(STRATEGIES)}"
        )
    if wanted == "linear":
        return wanted, []
    import ansible_mitogen  # a dependency; imported here so only VM builds load it

    plugins = Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"
    return wanted, [f"ANSIBLE_STRATEGY_PLUGINS={plugins}", f"ANSIBLE_STRATEGY={wanted}"]


SHARED_ROLES = ("base_os", "python_env", "app")


def changed_tasks(lines: list[str]) -> list[str]:
    """`role : task` of every task Ansible's default output reports as changed."""
    out, task = [], ""
    for line in lines:
        text = line.split(": ", 1)[-1] if line.startswith(("qemu.", "amazon-ebs.")) else line
        if text.startswith("TASK ["):
            task = text[len("TASK [") : text.index("]")]
        elif text.startswith("changed: ") and task not in out:
            out.append(task)
    return out


def shared_changed(lines: list[str], spec: Spec) -> list[str]:
    """Changed tasks of the roles both artifacts share: on the qemu path, where the base disk
    comes from the container's layers, anything here means the two diverged."""
    shared = (*SHARED_ROLES, *spec.stacks)
    return [t for t in changed_tasks(lines) if t.split(" : ")[0] in shared]
