"""What verify checks, with the expected values derived from the spec and the lock (never from a
build log). One Item per row of the parity table."""

from __future__ import annotations

import shlex

from imagebuild.lock.lockfile import Lock
from imagebuild.requested import Requested
from imagebuild.resolved import WRAPPER, exec_argv
from imagebuild.spec import Spec
from imagebuild.verify import gpu
from imagebuild.verify import model as row
from imagebuild.verify.model import ABSENT, ANY, Item


def smoke_command(spec: Spec, run_as: str = "", args: str = "--version") -> str:
    """The entrypoint with `args` (`run_as` e.g. `runuser -u app -- `); a GPU image needs the
    guard's override where no GPU is."""
    override = f"{spec.gpu.allow_missing_env}=1 " if spec.gpu else ""
    return f"{override}{run_as}{WRAPPER} {args}".rstrip()


def behaviour_commands(spec: Spec) -> list[str]:
    """The spec's `verify.commands`, each as the shell words given to the wrapper."""
    return [shlex.join(argv) for argv in spec.verify.commands]


def behaviour_key(cmd: str) -> str:
    """A behaviour row's name: the wrapper's arguments in brackets (`[]`: none)."""
    return f"[{cmd}]"


def items(req: Requested, lock: Lock, container_libs: list[str]) -> list[Item]:
    spec = req.spec
    out = [Item("deb", p.name, p.version, p.version) for p in lock.shared]
    out += [Item("deb", p.name, ABSENT, p.version, shared=False) for p in lock.vm]
    out += [Item("deb-unlocked", row.UNLOCKED_DEBS, "[]", "[]", shared=False)]
    out += [Item("python", w.name, w.version, w.version) for w in lock.python]
    if spec.python:
        out += [Item("python-unlocked", row.VENV_TOOLING, ANY, ANY)]
    out += [Item("import", m, ANY, ANY) for m in req.imports]
    # Every library the container's linker cache knows must resolve to the same path in the VM.
    out += [Item("lib", so, ANY, ANY) for so in container_libs]
    argv = " ".join([*exec_argv(spec), *spec.cmd])
    out += [
        Item("entrypoint", row.ARGV, argv, argv),
        Item("entrypoint", row.WRAPPER_SHA, ANY, ANY),
        Item(
            "entrypoint",
            row.STARTED_BY,
            "image ENTRYPOINT",
            f"systemd ExecStart={WRAPPER}",
            shared=False,
        ),
        Item("user", row.RUNTIME_USER, spec.user, spec.user),
        # Each architecture's artifacts against its own lock section (Project.for_arch).
        Item("arch", row.ARCHITECTURE, lock.arch, lock.arch),
    ]
    if spec.verify.commands:
        # Behaviour: the same command gives the same exit status and stdout in both.
        for cmd in behaviour_commands(spec):
            key = behaviour_key(cmd)
            out += [
                Item("behaviour", f"{key}: exit status", ANY, ANY),
                Item("behaviour", f"{key}: stdout", ANY, ANY),
            ]
    else:
        # The app's output is its own business: it must succeed and say the same on both.
        out += [
            Item("smoke", smoke_command(spec), ANY, ANY),
            Item("smoke", f"{smoke_command(spec)}: exit status", "0", "0"),
        ]
    out += [Item("env", k, v, v) for k, v in sorted(spec.runtime_env.items())]
    out += [
        Item("hygiene", row.RUNS_AS_ROOT, "no", "no"),
        Item("hygiene", row.SETUID_ROW, "none", "none"),
    ]
    out += [Item("hygiene", k, "n/a", want, shared=False) for k, want in row.DISK_HYGIENE.items()]
    return out + gpu.items(spec, lock)
