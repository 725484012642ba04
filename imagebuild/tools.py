"""External tools (qemu-img, ssh-keygen, dpkg-scanpackages, mmdebstrap, mkfs.fat, ...) run one
way: a missing tool or a failure is an ImageBuildError naming the command and quoting the tool's
own last words (stderr), never a CalledProcessError traceback."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from imagebuild.errors import ImageBuildError


class ToolError(ImageBuildError):
    pass


def run(
    argv: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    stdout: IO[Any] | None = None,
    text: bool = True,
) -> subprocess.CompletedProcess[Any]:
    """Run `argv` to completion; stdout is captured unless a file is given."""
    args = [str(a) for a in argv]
    if shutil.which(args[0]) is None:
        raise ToolError(f"{args[0]} not found on PATH (scripts/bootstrap.sh installs it)")
    r = subprocess.run(args, cwd=cwd, env=env, input=input, text=text, stderr=subprocess.PIPE,
                       stdout=subprocess.PIPE if stdout is None else stdout)  # fmt: skip
    if r.returncode != 0:
        err = r.stderr if text else r.stderr.decode(errors="replace")
        raise ToolError(f"{shlex.join(args)} failed (exit {r.returncode}):\n{err.strip()[-2000:]}")
    return r
