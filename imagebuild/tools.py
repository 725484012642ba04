"""External tools (qemu-img, ssh-keygen, dpkg-scanpackages, mmdebstrap, mkfs.fat, ...) run one
way: a missing tool or a failure is an ImageBuildError naming the command and quoting the tool's
own last words (stderr), never a CalledProcessError traceback. `run` waits; `start` + `wait`
let a slow tool (qemu-img compressing a disk) work while Python does something else."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from imagebuild.errors import ImageBuildError


class ToolError(ImageBuildError):
    pass


def _found(argv: Sequence[str | Path]) -> list[str]:
    args = [str(a) for a in argv]
    if shutil.which(args[0]) is None:
        raise ToolError(f"{args[0]} not found on PATH (scripts/bootstrap.sh installs it)")
    return args


def _failed(args: list[str], code: int, err: str | bytes) -> ToolError:
    text = err if isinstance(err, str) else err.decode(errors="replace")
    return ToolError(f"{shlex.join(args)} failed (exit {code}):\n{text.strip()[-2000:]}")


def run(
    argv: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    stdout: IO[Any] | None = None,
    text: bool = True,
    ok: Collection[int] = (0,),
) -> subprocess.CompletedProcess[Any]:
    """Run `argv` to completion; stdout is captured unless a file is given. Exit codes in `ok`
    are answers (`qemu-img compare` says "differ" with 1), any other a ToolError."""
    args = _found(argv)
    r = subprocess.run(args, cwd=cwd, env=env, input=input, text=text, stderr=subprocess.PIPE,
                       stdout=subprocess.PIPE if stdout is None else stdout)  # fmt: skip
    if r.returncode not in ok:
        raise _failed(args, r.returncode, r.stderr)
    return r


def start(argv: Sequence[str | Path]) -> subprocess.Popen[bytes]:
    """Start `argv` (stdout discarded); `wait` ends it."""
    return subprocess.Popen(_found(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait(proc: subprocess.Popen[bytes]) -> None:
    """Wait for a `start`ed tool; a failure is a ToolError as with `run`. An interrupted wait
    (Ctrl-C) does not leave it running."""
    try:
        _, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise _failed([str(a) for a in proc.args], proc.returncode, err)  # type: ignore[union-attr]
