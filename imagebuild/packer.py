"""The one way Packer is run, and the one place where Packer versions differ.

The template in `packer/` is committed and readable; the tool only writes variable values
(a `.pkrvars.hcl`, with python-hcl2) and checks them against the template's declarations.
Packer >= 1.7 needs `packer { required_plugins }` (plugins.pkr.hcl); Debian's 1.6.6 bundles every
plugin and rejects that block. `template_files` is where that difference lives.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from functools import cache
from pathlib import Path
from typing import Any

from packaging.version import Version

from imagebuild.errors import ImageBuildError
from imagebuild.roles import PROJECT_ROOT

PACKER_DIR = PROJECT_ROOT / "packer"
TEMPLATE, PLUGINS = "imagebuild.pkr.hcl", "plugins.pkr.hcl"
PLUGINS_SINCE = Version("1.7.0")


class PackerError(ImageBuildError):
    pass


@cache
def version() -> Version:
    if not shutil.which("packer"):
        raise PackerError("`packer` is not on PATH; run `bash scripts/bootstrap.sh` (apt: packer)")
    out = subprocess.run(["packer", "version"], capture_output=True, text=True).stdout
    m = re.search(r"v?(\d+\.\d+\.\d+)", out)
    if not m:
        raise PackerError(f"cannot read the Packer version from {out!r}")
    return Version(m.group(1))


def template_files(packer_version: Version) -> list[str]:
    """The template files this Packer reads: required_plugins only where plugins exist."""
    return [TEMPLATE, PLUGINS] if packer_version >= PLUGINS_SINCE else [TEMPLATE]


def _hcl2() -> Any:
    import hcl2  # here: only what reads or writes HCL pays for its import (~20 ms)

    return hcl2


def declared_variables(path: Path = PACKER_DIR / TEMPLATE) -> set[str]:
    with path.open() as f:
        doc = _hcl2().load(f)
    # python-hcl2 keeps labels quoted, as written in the file
    return {name.strip('"') for block in doc.get("variable", []) for name in block}


def _hcl_value(v: Any) -> Any:
    """python-hcl2 writes strings as expressions: quote and escape them (also `${`, `%{`)."""
    if isinstance(v, str):
        esc = v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return '"' + esc.replace("${", "$${").replace("%{", "%%{") + '"'
    if isinstance(v, list):
        return [_hcl_value(x) for x in v]
    return v


def write_vars(values: dict[str, Any], dest: Path) -> None:
    """The .pkrvars.hcl for the template; every declared variable set, nothing undeclared."""
    declared = declared_variables()
    missing, extra = declared - values.keys(), values.keys() - declared
    if missing or extra:
        raise PackerError(
            f"packer variables do not match {PACKER_DIR / TEMPLATE}: "
            f"missing {sorted(missing)}, undeclared {sorted(extra)}"
        )
    dest.write_text(_hcl2().dumps({k: _hcl_value(values[k]) for k in sorted(values)}))


def stage_template(dest: Path) -> Path:
    """Copy the template files this Packer understands into `dest` (Packer reads a folder)."""
    dest.mkdir(parents=True)
    for name in template_files(version()):
        shutil.copy2(PACKER_DIR / name, dest / name)
    return dest


def run_env(workdir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CHECKPOINT_DISABLE": "1",  # no version check over the network
        "PACKER_CACHE_DIR": str(workdir / "packer_cache"),
        # ansible-playbook from the project's venv, whatever PATH the caller has.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def log_file(cache_root: Path, name: str) -> Path:
    """Where a build's Packer log goes: the cache's logs folder, which outlives the scratch
    folder of a failed build (the error names it)."""
    logs = cache_root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.packer.log"


def build(
    values: dict[str, Any],
    work: Path,
    only: str,
    on_error: str,
    log: Path,
    what: str,
    abort: threading.Event | None = None,
) -> list[tuple[float, str]]:
    """The one way every target runs Packer: its variables written and checked, the template
    staged for this Packer, `packer validate` (offline), then `packer build -on-error=...`, both
    logged to `log`; stopped as on Ctrl-C once `abort` is set. Returns the build's timeline
    (`phases`)."""
    from imagebuild import progress

    pkrvars = work / "build.pkrvars.hcl"
    write_vars(values, pkrvars)
    tdir = stage_template(work / "packer")
    args = [f"-only={only}", f"-var-file={pkrvars}"]
    with progress.stage("build-vm: packer validate", f"{only}, Packer {version()}"):
        run(["validate", *args], tdir, work, log)
    with progress.stage("build-vm: packer build", what):
        return run(["build", f"-on-error={on_error}", *args], tdir, work, log, abort)


def run(
    args: list[str],
    template_dir: Path,
    workdir: Path,
    log: Path,
    abort: threading.Event | None = None,
) -> list[tuple[float, str]]:
    """Run `packer ARGS .` in the template folder, streaming its lines as progress and to
    `log`; return every line with its time since start (for the per-phase timings). On Ctrl-C,
    Packer gets SIGINT (its own clean-up: stop QEMU, delete output) and a minute to finish
    before it is killed."""
    color = ["-color=false"] if args[0] == "build" else []  # validate has no such flag in 1.6
    cmd = ["packer", args[0], *color, *args[1:], "."]
    tail: deque[str] = deque(maxlen=40)
    timeline: list[tuple[float, str]] = []
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=template_dir,
        env=run_env(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the terminal's Ctrl-C reaches us, we forward it
    )
    assert proc.stdout is not None
    if abort is not None:
        threading.Thread(target=_stop_on, args=(abort, proc), daemon=True).start()
    try:
        with log.open("a") as out:
            for line in proc.stdout:
                out.write(line)
                tail.append(line.rstrip())
                timeline.append((time.monotonic() - start, line.strip()))
                if line.strip():
                    print(f"  [packer] {line.rstrip()}", file=sys.stderr, flush=True)
        rc = proc.wait()
    except BaseException:
        stop(proc)
        raise
    if rc != 0:
        raise PackerError(
            f"packer {args[0]} failed (exit {rc}); full log {log}:\n" + "\n".join(tail)
        )
    return timeline


PHASES = {  # Packer 1.6 and the qemu plugin print these lines; the rest is "shutdown"
    "boot to SSH": "Connected to SSH!",
    "provisioning": "Gracefully halting virtual machine",
}


def phases(timeline: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds per phase of a qemu build, from the times its marker lines appeared."""
    out, last = {}, 0.0
    for phase, marker in PHASES.items():
        at = next((t for t, line in timeline if marker in line), None)
        if at is None:
            continue
        out[phase], last = round(at - last, 1), at
    if timeline:
        out["shutdown"] = round(timeline[-1][0] - last, 1)
    return out


def _stop_on(abort: threading.Event, proc: subprocess.Popen[str]) -> None:
    while proc.poll() is None:
        if abort.wait(0.5):
            stop(proc)
            return


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGINT to Packer's group (its own clean-up), SIGKILL after a minute. Two threads may
    call it (an abort and a Ctrl-C): a group the other one reaped already is not an error."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
