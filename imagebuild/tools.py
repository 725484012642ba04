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
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        text=text,
        stderr=subprocess.PIPE,
        stdin=subprocess.PIPE if input is not None else None,
        stdout=subprocess.PIPE if stdout is None else stdout,
    )
    try:
        out, err = proc.communicate(input)
    finally:
        _stop(proc)
    if proc.returncode not in ok:
        raise _failed(args, proc.returncode, err)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


STOP_GRACE = 60  # seconds an interrupted tool gets to clean up before it is killed


def _stop(proc: subprocess.Popen[Any]) -> None:
    """An interrupted tool (Ctrl-C, SIGTERM) cleans up after itself before we go on unwinding,
    as it would in a terminal: mmdebstrap unmounts its chroot's /proc, /sys and /dev and removes
    its temp folder on SIGTERM, where SIGKILL (subprocess.run's way) leaves both behind. A
    signal sent to the whole process group has reached it already: it gets a moment to act on
    that before it is sent one."""
    if proc.poll() is not None:
        return
    try:
        proc.wait(timeout=2)
        return
    except subprocess.TimeoutExpired:
        proc.terminate()
    try:
        proc.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start(argv: Sequence[str | Path]) -> subprocess.Popen[bytes]:
    """Start `argv` (stdout discarded); `wait` ends it."""
    return subprocess.Popen(_found(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait(proc: subprocess.Popen[bytes]) -> None:
    """Wait for a `start`ed tool; a failure is a ToolError as with `run`. An interrupted wait
    (Ctrl-C) does not leave it running."""
    try:
        _, err = proc.communicate()
    finally:
        _stop(proc)
    if proc.returncode != 0:
        raise _failed([str(a) for a in proc.args], proc.returncode, err)  # type: ignore[union-attr]
