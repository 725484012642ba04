"""The GPU part of verify (specs with `gpu:`): static checks that need no GPU, the start-up
guard's refusal, and runtime checks that are skipped, with the reason, where no GPU is visible.

The container carries the CUDA user space but no driver (the host's is injected); the VM
carries both. Expected values come from the lock (package versions), the spec (CUDA version)
and the roles' defaults and meta (sonames, module name, minimum drivers, libraries to `ldd`):
the same sources the roles themselves use."""

from __future__ import annotations

import shlex
from typing import Any

from imagebuild import resolved, roles
from imagebuild.lock import GPU_VERSION_PACKAGES
from imagebuild.lock.lockfile import Lock
from imagebuild.requested import Requested
from imagebuild.spec import Spec
from imagebuild.verify.model import ABSENT, Item

GUARD_EXIT = 78  # EX_CONFIG, what the guard template exits with
DRIVER_LIBS = {"libcuda.so.1": "libcuda1", "libnvidia-ml.so.1": GPU_VERSION_PACKAGES["driver"]}
# The driver's user space by file name: in the VM only (the toolkit injects the host's). Not
# libcudart (the CUDA runtime, the image's own) nor dpkg's or lintian's files named after them.
DRIVER_FILES = ("libcuda", "libnvidia-ml", "nvidia-smi")
DRIVER_FIND = (
    r"\( -name 'libcuda.so*' -o -name 'libnvidia-ml.so*' -o -name nvidia-smi -path '*bin/*' \)"
)
LDD_ROW = "CUDA libraries with a dependency ldd cannot find (libcuda.so.1 aside)"
LDD_COUNT_ROW = "CUDA libraries checked with ldd"
DIGEST_ROW = "CUDA user space sha256 (site-packages/nvidia)"


def upstream(version: str) -> str:
    """`535.261.03-1` -> `535.261.03`; `11.8.89~11.8.0-5~deb12u1` -> `11.8.89`."""
    return version.rsplit("-", 1)[0].split("~")[0]


def min_driver(cuda: str) -> str:
    table = roles.defaults("nvidia_driver")["nvidia_driver_min_for_cuda"]
    return str(table.get(cuda, "0"))


def version_ge(a: str, b: str) -> bool:
    return [int(x) for x in a.split(".")] >= [int(x) for x in b.split(".")]


def driver_enough(driver: str, need: str) -> str:
    """The row value of "driver >= what the CUDA runtime needs", observed or expected."""
    ok = driver != ABSENT and version_ge(driver, need)
    return f"{driver} >= {need}: {'yes' if ok else 'no'}"


def script(req: Requested) -> str:
    """Besides every library of the CUDA wheels, the site-packages-relative libraries whose
    dependencies must all resolve are the stacks' own CUDA-linked ones (meta `cuda_libs`)."""
    spec = req.spec
    assert spec.python is not None  # cuda_runtime installs wheels: the spec has a venv
    d = roles.defaults("nvidia_driver")
    ko = f"/lib/modules/*/{d['nvidia_driver_modules_dir']}/{d['nvidia_driver_module']}"
    extra = " ".join(f'"$sp"/{shlex.quote(lib)}' for lib in req.cuda_libs)
    return f"""
for so in {" ".join(DRIVER_LIBS)}; do
  p=$(/sbin/ldconfig -p | awk -v so="$so" '$1 == so {{print $NF; exit}}')
  echo "lib $so ${{p:+$(readlink -f "$p")}}"
done
echo "driverfiles $(find / -xdev {DRIVER_FIND} 2>/dev/null | sed 's,.*/,,; s,\\.so.*,,' \\
  | LC_ALL=C sort -u | tr '\\n' ' ')"
ko=$(ls {ko} 2>/dev/null | head -n 1)
echo "ko ${{ko:+$(/sbin/modinfo -F version "$ko")}}"
echo "nouveau $(cat /etc/modprobe.d/*.conf 2>/dev/null | grep -c '^blacklist nouveau')"
if [ -e /dev/nvidiactl ]; then echo "dev present"; else echo "dev absent"; fi
sp=$(ls -d {shlex.quote(spec.python.venv)}/lib/python3*/site-packages | head -n 1)
n=0
for f in "$sp"/nvidia/*/lib/*.so* {extra}; do
  [ -f "$f" ] || {{ echo "ldd ${{f#"$sp"/}}: file missing"; continue; }}
  n=$((n + 1))
  m=$(ldd "$f" 2>&1 | awk '/not found/ && $1 != "libcuda.so.1" {{print $1}}' | sort -u \\
    | tr '\\n' ' ')
  [ -z "$m" ] || echo "ldd ${{f#"$sp"/}}: $m"
done
echo "lddcount $n"
echo "digest $(cd "$sp" && find nvidia -type f | LC_ALL=C sort | xargs -d '\\n' sha256sum \\
  | sha256sum | cut -c1-64)"
"""


def guard_outcome(rc: int, stderr: str) -> str:
    """`starts`, or `exit N: <what is missing>` (the guard's reason up to its first colon)."""
    if rc == 0:
        return "starts"
    reason = next((ln for ln in stderr.splitlines() if ln.startswith("imagebuild GPU guard:")), "")
    return f"exit {rc}: {reason.removeprefix('imagebuild GPU guard:').split(':')[0].strip()}"


def facts(
    host: Any, req: Requested, run_as: str, wrapper: str, env: dict[str, str]
) -> dict[str, dict[str, str]]:
    """`run_as` prefixes commands that must run as the runtime user (empty in the container);
    `env` is the artifact's runtime environment (image config / systemd unit)."""
    spec = req.spec
    assert spec.gpu is not None
    out: dict[str, str] = {}
    device = "absent"
    missing: list[str] = []
    count = 0
    for line in host.check_output(f"sh -c {shlex.quote(script(req))}").splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "lib":
            so, _, path = rest.partition(" ")
            out[f"{so} version"] = path.rsplit(".so.", 1)[1] if ".so." in path else ABSENT
        elif kind == "driverfiles":
            out["driver user space in the image"] = rest.strip() or "none"
        elif kind == "ko":
            out["nvidia kernel module version (modinfo)"] = rest or ABSENT
        elif kind == "nouveau":
            out["nouveau blacklisted"] = "yes" if rest.strip() not in ("", "0") else "no"
        elif kind == "dev":
            device = rest
        elif kind == "ldd":
            missing.append(rest.strip())
        elif kind == "lddcount":
            count = int(rest)
        elif kind == "digest":
            out[DIGEST_ROW] = rest.strip()
    out[LDD_ROW] = "; ".join(missing) or "none"
    out[LDD_COUNT_ROW] = str(count)
    ml = out.get("libnvidia-ml.so.1 version", ABSENT)
    out["driver >= what the CUDA runtime needs"] = (
        driver_enough(ml, min_driver(spec.gpu.cuda)) if ml != ABSENT else ABSENT
    )
    for k in resolved.toolkit_env(spec):
        out[k] = env.get(k, ABSENT)
    r = host.run(f"env -u {spec.gpu.allow_missing_env} {run_as}{wrapper} --version")
    out["entrypoint without a GPU, no override"] = guard_outcome(r.rc, r.stderr)
    smi = host.run("nvidia-smi --query-gpu=driver_version --format=csv,noheader")
    out["nvidia-smi driver version"] = smi.stdout.strip() if smi.rc == 0 else f"exit {smi.rc}"
    probe = roles.defaults("cuda_runtime")["cuda_runtime_probe"]
    r = host.run(f"{run_as}{probe}")
    out["CUDA call (imagebuild-cuda-probe)"] = (
        "ok" if r.rc == 0 else f"exit {r.rc}: {r.stderr.strip()[-200:]}"
    )
    return {"gpu": out, "gpu-device": {"/dev/nvidiactl": device}}


def items(spec: Spec, lock: Lock) -> list[Item]:
    if not spec.gpu:
        return []
    vm_versions = {p.name: upstream(p.version) for p in lock.vm}
    ml = vm_versions.get(GPU_VERSION_PACKAGES["driver"], ABSENT)
    enough = driver_enough(ml, min_driver(spec.gpu.cuda))
    toolkit = resolved.toolkit_env(spec)
    out = [
        # The driver's user space: the VM's own, never the container's (the host's is injected).
        Item("gpu", "driver user space in the image", "none", " ".join(DRIVER_FILES), shared=False),
        *[
            Item("gpu", f"{so} version", ABSENT, vm_versions.get(pkg, ABSENT), shared=False)
            for so, pkg in DRIVER_LIBS.items()
        ],
        # The kernel module exists only in the VM, built for its kernel; its version must be the
        # user space's, or nothing would load.
        Item("gpu", "nvidia kernel module version (modinfo)", ABSENT, ml, shared=False),
        Item("gpu", "nouveau blacklisted", "no", "yes", shared=False),
        Item("gpu", "driver >= what the CUDA runtime needs", ABSENT, enough, shared=False),
        # The toolkit's variables are the container's; the VM's driver must meet what the
        # container requires of a host (the row above, for the same CUDA version).
        *[Item("gpu", k, v, ABSENT, shared=False) for k, v in toolkit.items()],
        # The CUDA user space: every library resolves (the driver's libcuda aside) and the
        # files are the same bytes in both.
        Item("gpu", LDD_ROW, "none", "none"),
        Item("gpu", LDD_COUNT_ROW, None, None),
        Item("gpu", DIGEST_ROW, None, None),
        # Neither artifact sees a GPU under verify: both must refuse to start, naming it.
        Item(
            "gpu",
            "entrypoint without a GPU, no override",
            f"exit {GUARD_EXIT}: no GPU",
            f"exit {GUARD_EXIT}: no GPU",
        ),
        Item("gpu", "nvidia-smi driver version", None, ml, shared=False, runtime_gpu=True),
        Item("gpu", "CUDA call (imagebuild-cuda-probe)", "ok", "ok", runtime_gpu=True),
    ]
    return out
