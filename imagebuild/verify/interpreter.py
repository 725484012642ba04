"""imagebuild's scripts (the inventory, the file digests) run inside an artifact by the
artifact's own Python, which is part of what verify checks: replaced by /bin/true, removed or
hanging, it must be a finding naming its path, never a traceback in verify. So the interpreters
are tried first, in one round trip (the spec's, then Debian's by two names, stopping at the
first that runs), and a script's output that is not the JSON object it prints is a failure
naming the script, its exit status and what it printed."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from imagebuild import inventory
from imagebuild.lock.lockfile import Lock
from imagebuild.spec import Spec
from imagebuild.verify.model import Item

RUNS = "runs"
MARK = "imagebuild-python-ok"
# Per candidate: its path, where it leads, and what it printed followed by `exit=N` (cut at
# 400 bytes: a `yes` in its place is stopped by the pipe, a `sleep` by timeout).
PROBE = f"""
for p in "$@"; do
  real=$(readlink -f -- "$p" 2>/dev/null || echo "$p")
  said=$( {{ timeout 20 "$p" -c 'print("{MARK}")' </dev/null 2>&1; printf 'exit=%s' "$?"; }} \\
    | head -c 400 | tr '\\n\\t' '  ')
  printf '%s\\t%s\\t%s\\n' "$p" "$real" "$said"
  [ "$said" = "{MARK} exit=0" ] && break
done
"""


class ScriptFailed(Exception):
    """A script run inside the artifact gave no result: a finding about the artifact."""


@dataclass(frozen=True)
class Interpreters:
    tried: dict[str, str]  # candidate -> RUNS or why not, in the order tried

    @property
    def target(self) -> str:
        return next(iter(self.tried))

    @property
    def working(self) -> str | None:
        """The first candidate that runs (the spec's own if it does)."""
        return next((p for p, why in self.tried.items() if why == RUNS), None)

    def state(self) -> str:
        """RUNS, or why the spec's interpreter does not and what was used instead."""
        why = self.tried[self.target]
        if why == RUNS:
            return RUNS
        return why + (f"; read with {self.working}" if self.working else "; no Python here runs")

    def problem(self) -> str:
        """The spec's interpreter, by its path, and `state`; "" when it runs."""
        return "" if self.working == self.target else f"{self.target} {self.state()}"


def candidates(spec: Spec, lock: Lock) -> list[str]:
    """The interpreter the scripts need (the venv's: its distributions), then Debian's."""
    version = lock.header.get("python")
    names = [inventory.target_python(spec), "/usr/bin/python3"]
    if version:
        names.append(f"/usr/bin/python{version}")
    return list(dict.fromkeys(names))


def _why(real: str, path: str, said: str) -> str:
    output, _, code = said.rpartition("exit=")
    if not code.strip().isdigit():  # cut before the status: it printed a lot
        output, code = said, "unknown (output cut)"
    where = f" (resolves to {real})" if real != path else ""
    shown = repr(output.strip()[:200]) if output.strip() else "nothing"
    return f"does not run Python{where}: exit {code.strip()}, printed {shown}"


def probe(host: Any, paths: list[str]) -> Interpreters:
    r = host.run(f"sh -c {shlex.quote(PROBE)} probe {shlex.join(paths)}")
    tried: dict[str, str] = {}
    for line in r.stdout.splitlines():
        path, _, rest = line.partition("\t")
        real, _, said = rest.partition("\t")
        if path in paths:
            tried[path] = RUNS if said.strip() == f"{MARK} exit=0" else _why(real, path, said)
    if paths[0] not in tried:  # the shell itself failed: no line at all
        tried = {paths[0]: f"could not be tried: exit {r.rc}, {r.stderr.strip()[-200:]!r}"}
    return Interpreters(tried)


def rows(pythons: Interpreters) -> dict[str, str]:
    return {pythons.target: pythons.state()}


def items(spec: Spec) -> list[Item]:
    target = inventory.target_python(spec)
    return [Item("interpreter", target, RUNS, RUNS)]


def parse(what: str, rc: int, stdout: str, stderr: str = "") -> dict[str, Any]:
    """The JSON object a script printed; else ScriptFailed naming `what` and the head of what
    it said (a broken interpreter prints nothing and exits 0)."""
    try:
        out = json.loads(stdout)
    except json.JSONDecodeError:
        out = None
    if rc == 0 and isinstance(out, dict):
        return out
    said = stderr.strip()[-300:] or stdout.strip()[:300]
    raise ScriptFailed(
        f"{what} failed: exit {rc}, printed {said!r}"
        if said
        else f"{what} failed: exit {rc}, printed nothing"
    )


def text(value: Any) -> str:
    """`value` if a script printed a string there (else TypeError: it printed another shape)."""
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def texts(mapping: Any) -> dict[str, str]:
    return {text(k): text(v) for k, v in mapping.items()}
