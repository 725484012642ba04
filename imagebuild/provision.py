"""The one way Ansible is run (ansible-runner), and what its output says changed. The
variables it is given come from imagebuild.resolved, the same for the container and the VM."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagebuild import ansible_vars, leftovers, profile
from imagebuild.errors import ImageBuildError, Terminated
from imagebuild.roles import ANSIBLE_DIR, ROLES_DIR
from imagebuild.spec import Spec


class ProvisionError(ImageBuildError):
    pass


@dataclass(frozen=True)
class ProvisionResult:
    changed: int  # tasks that changed something (a stage with none is a no-op)


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


@contextmanager
def _no_process_outlives(private_dir: Path) -> Iterator[None]:
    """Whatever ends the run (done, failed, cancelled), no Ansible process of it stays: on a
    cancel ansible-runner kills ansible-playbook's process group, but Mitogen's multiplexer has
    a session of its own and stayed, reparented to init. Its arguments name `private_dir`."""
    try:
        yield
    finally:
        leftovers.stop_processes([str(private_dir)], ("ansible",))


def run(
    host: str,
    hostvars: dict[str, Any],
    extravars: dict[str, Any],
    tags: list[str] | None,
    private_dir: Path,
    playbook: str = "site.yml",
    env: dict[str, str] | None = None,
) -> ProvisionResult:
    """Run an ansible/ playbook against one host; raise with Ansible's own output on failure.
    `extravars` reach it as data (imagebuild.ansible_vars), in the file ansible-runner passes
    as `-e @env/extravars`; its own writer would hand them over as trusted templates."""
    private_dir.mkdir(parents=True, exist_ok=True)
    ansible_vars.write(extravars, private_dir / "env" / "extravars")
    # ansible-playbook lives beside this interpreter (the venv), whatever PATH the caller has.
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    import ansible_runner  # here: a build that runs no stage does not pay for its import

    started = time.time()
    with (
        _signals_cancel() as received,
        profile.step("ansible-playbook (ansible-runner), whole"),
        _no_process_outlives(private_dir),
    ):
        r = ansible_runner.run(
            private_data_dir=str(private_dir),
            project_dir=str(ANSIBLE_DIR),
            playbook=playbook,
            inventory={"all": {"hosts": {host: hostvars}}},
            tags=",".join(tags) if tags else None,
            quiet=True,
            cancel_callback=lambda: bool(received),
            envvars={
                "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
                "ANSIBLE_ROLES_PATH": str(ROLES_DIR),
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_PIPELINING": "1",
                **(env or {}),
            },
        )
    if r.status == "canceled" or received:
        # A signal stopped ansible-playbook (runner reports "canceled"): unwind and clean up as
        # the signal would have.
        raise Terminated if signal.SIGTERM in received else KeyboardInterrupt
    profile.ansible_events(r.events if profile.on() else [], started)
    stats = r.stats or {}
    if r.rc != 0 or r.status != "successful":
        tail = r.stdout.read()[-3000:] if r.stdout else ""
        raise ProvisionError(
            f"ansible-playbook {playbook} (tags {tags}) failed on {host} (rc {r.rc}):\n{tail}"
        )
    return ProvisionResult(changed=sum(stats.get("changed", {}).values()))


STRATEGY_ENV = "IMAGEBUILD_ANSIBLE_STRATEGY"
STRATEGIES = ("mitogen_linear", "linear")


def strategy() -> tuple[str, dict[str, str]]:
    """The Ansible strategy for every run (a booted VM over SSH, a stage container), and the
    environment that selects it. Mitogen keeps one Python in the target and sends module code
    once; Ansible's own strategy starts a new interpreter per task that compiles the module
    anew: 2-8 s per task under TCG (Packer's provisioning of the example: 73 s -> 16-21 s),
    ~0.2-0.5 s per task in a container over docker_api (the app stage's 4 tasks: 1.8 s, a
    template alone ~0.9 s: a stat, an upload and a copy, each a module run).
    $IMAGEBUILD_ANSIBLE_STRATEGY=linear picks Ansible's own everywhere."""
    wanted = os.environ.get(STRATEGY_ENV) or STRATEGIES[0]
    if wanted not in STRATEGIES:
        raise ImageBuildError(
            f"${STRATEGY_ENV}={wanted!r}: expected one of {', '.join(STRATEGIES)}"
        )
    if wanted == "linear":
        return wanted, {}
    import ansible_mitogen  # a dependency; imported here so only what runs Ansible loads it

    plugins = Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"
    return wanted, {"ANSIBLE_STRATEGY_PLUGINS": str(plugins), "ANSIBLE_STRATEGY": wanted}


def ssh_strategy() -> tuple[str, list[str]]:
    """`strategy()` as Packer's provisioner takes its environment: `NAME=VALUE` strings."""
    name, env = strategy()
    return name, [f"{k}={v}" for k, v in env.items()]


def container_connection(
    engine_vars: dict[str, str | bool],
) -> tuple[dict[str, Any], dict[str, str]]:
    """How Ansible reaches a stage container: the host variables and the environment. Under
    mitogen, Ansible's `docker` connection (the docker CLI, which reads DOCKER_HOST and its TLS
    variables itself), which mitogen takes over: one `docker exec` of one Python for the whole
    run. Otherwise community.docker's `docker_api` connection, given the engine's address
    (`engine_vars`: it does not read DOCKER_HOST)."""
    name, env = strategy()
    common = {"ansible_python_interpreter": "/usr/bin/python3"}
    if name == "linear":
        return {"ansible_connection": "community.docker.docker_api", **engine_vars, **common}, env
    # The CLI's engine is the SDK's: DOCKER_HOST wins over DOCKER_CONTEXT and `docker context use`.
    env |= {"DOCKER_HOST": str(engine_vars["ansible_docker_docker_host"])}
    return {"ansible_connection": "docker", "ansible_user": "root", **common}, env


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


# Roles the Packer pass runs for itself: the sources mount and the trace removal change a
# booted guest by design; everything else was done when the base disk was made.
PASS_ROLES = ("vm_sources", "vm_finalize")


def check_converged(lines: list[str]) -> None:
    """The VM ships the base disk, not the disk Packer's pass booted: a task of that pass that
    changed anything (other than PASS_ROLES) made a guest the shipped disk is not."""
    changed = [t for t in changed_tasks(lines) if t.split(" : ")[0] not in PASS_ROLES]
    if changed:
        raise ProvisionError(
            "Packer's pass over the base disk changed what the base disk should already have "
            f"(the shipped disk would lack it): {', '.join(changed)}; make these tasks "
            "idempotent (`changed_when`), or let the base disk's `--tags vm` run do them"
        )
