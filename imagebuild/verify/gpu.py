"""The GPU part of verify (specs with `gpu:`): static checks that need no GPU, the start-up
guard's refusal, and runtime checks that are skipped, with the reason, where no GPU is visible.

Expected values come from the lock (package versions) and the roles' defaults (sonames, module
name, the minimum driver per CUDA version): the same sources the roles themselves use."""

from __future__ import annotations

import shlex
from typing import Any

from imagebuild import roles
from imagebuild.lock import GPU_VERSION_PACKAGES
from imagebuild.lock.lockfile import Lock
from imagebuild.spec import Spec
from imagebuild.verify.items import ABSENT, Item

GUARD_EXIT = 78  # EX_CONFIG, what the guard template exits with
DRIVER_LIBS = {"libcuda.so.1": "libcuda1", "libnvidia-ml.so.1": GPU_VERSION_PACKAGES["driver"]}


def _cuda_soname() -> str:
    return str(roles.defaults("cuda_runtime")["cuda_runtime_soname"])


def upstream(version: str) -> str:
    """`535.261.03-1` -> `535.261.03`; `11.8.89~11.8.0-5~deb12u1` -> `11.8.89`."""
    return version.rsplit("-", 1)[0].split("~")[0]


def min_driver(spec: Spec) -> str:
    assert spec.gpu is not None
    table = roles.defaults("nvidia_driver")["nvidia_driver_min_for_cuda"]
    return str(table.get(spec.gpu.cuda, "0"))


def version_ge(a: str, b: str) -> bool:
    return [int(x) for x in a.split(".")] >= [int(x) for x in b.split(".")]


def driver_enough(driver: str, need: str) -> str:
    """The row value of "driver >= what the CUDA runtime needs", observed or expected."""
    ok = driver != ABSENT and version_ge(driver, need)
    return f"{driver} >= {need}: {'yes' if ok else 'no'}"


def script() -> str:
    d = roles.defaults("nvidia_driver")
    sonames = " ".join([*DRIVER_LIBS, _cuda_soname()])
    ko = f"/lib/modules/*/{d['nvidia_driver_modules_dir']}/{d['nvidia_driver_module']}"
    return f"""
for so in {sonames}; do
  p=$(/sbin/ldconfig -p | awk -v so="$so" '$1 == so {{print $NF; exit}}')
  echo "lib $so ${{p:+$(readlink -f "$p")}}"
done
ko=$(ls {ko} 2>/dev/null | head -n 1)
echo "ko ${{ko:+$(/sbin/modinfo -F version "$ko")}}"
echo "nouveau $(cat /etc/modprobe.d/*.conf 2>/dev/null | grep -c '^blacklist nouveau')"
if [ -e /dev/nvidiactl ]; then echo "dev present"; else echo "dev absent"; fi
"""


def guard_outcome(rc: int, stderr: str) -> str:
    """`starts`, or `exit N: <what is missing>` (the guard's reason up to its first colon)."""
    if rc == 0:
        return "starts"
    reason = next((ln for ln in stderr.splitlines() if ln.startswith("imagebuild GPU guard:")), "")
    return f"exit {rc}: {reason.removeprefix('imagebuild GPU guard:').split(':')[0].strip()}"


def facts(host: Any, spec: Spec, run_as: str, wrapper: str) -> dict[str, dict[str, str]]:
    """`run_as` prefixes commands that must run as the runtime user (empty in the container)."""
    assert spec.gpu is not None
    out: dict[str, str] = {}
    device = "absent"
    for line in host.check_output(f"sh -c {shlex.quote(script())}").splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "lib":
            so, _, path = rest.partition(" ")
            out[f"{so} version"] = path.rsplit(".so.", 1)[1] if ".so." in path else ABSENT
        elif kind == "ko":
            out["nvidia kernel module version (modinfo)"] = rest or ABSENT
        elif kind == "nouveau":
            out["nouveau blacklisted"] = "yes" if rest.strip() not in ("", "0") else "no"
        elif kind == "dev":
            device = rest
    ml = out.get("libnvidia-ml.so.1 version", ABSENT)
    out["driver >= what the CUDA runtime needs"] = driver_enough(ml, min_driver(spec))
    r = host.run(f"env -u {spec.gpu.allow_missing_env} {run_as}{wrapper} --version")
    out["entrypoint without a GPU, no override"] = guard_outcome(r.rc, r.stderr)
    smi = host.run("nvidia-smi --query-gpu=driver_version --format=csv,noheader")
    out["nvidia-smi driver version"] = smi.stdout.strip() if smi.rc == 0 else f"exit {smi.rc}"
    return {"gpu": out, "gpu-device": {"/dev/nvidiactl": device}}


def items(spec: Spec, lock: Lock) -> list[Item]:
    if not spec.gpu:
        return []
    versions = {p.name: upstream(p.version) for p in [*lock.shared, *lock.vm]}
    ml = versions.get(GPU_VERSION_PACKAGES["driver"], ABSENT)
    cudart = versions.get(GPU_VERSION_PACKAGES["cuda"], ABSENT)
    out = [Item("gpu", f"{so} version", versions.get(pkg, ABSENT), versions.get(pkg, ABSENT))
           for so, pkg in DRIVER_LIBS.items()]  # fmt: skip
    enough = driver_enough(ml, min_driver(spec))
    out += [
        Item("gpu", f"{_cuda_soname()} version", cudart, cudart),
        Item("gpu", "driver >= what the CUDA runtime needs", enough, enough),
        # The kernel module exists only in the VM, built for its kernel; its version must be the
        # user space's, or nothing would load.
        Item("gpu", "nvidia kernel module version (modinfo)", ABSENT, ml, shared=False),
        Item("gpu", "nouveau blacklisted", "no", "yes", shared=False),
        # Neither artifact sees a GPU under verify: both must refuse to start, naming it.
        Item("gpu", "entrypoint without a GPU, no override", f"exit {GUARD_EXIT}: no GPU",
             f"exit {GUARD_EXIT}: no GPU"),
        Item("gpu", "nvidia-smi driver version", ml, ml, runtime_gpu=True),
    ]  # fmt: skip
    return out
