"""Model stacks and the GPU profile. Pure logic first (spec rules, role variants, the guard run
as a real shell script on this GPU-less host), then the real GPU example: container (the guard
refuses, the override starts it) and VM + verify (static GPU checks pass, runtime ones skip)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from imagebuild import requested, resolved, roles
from imagebuild import spec as specmod
from imagebuild.errors import SpecError
from imagebuild.verify import gpu
from tests.conftest import ROOT, build_vm, run_invoke

GUARD = roles.ROLES_DIR / "nvidia_driver" / "templates" / "gpu-guard.sh.j2"


def gpu_spec(tmp_path: Path, **changes: object) -> Path:
    """Both examples copied (onnx-gpu reuses onnx-serve's app and requirements), then edited."""
    shutil.copytree(
        ROOT / "examples",
        tmp_path / "examples",
        ignore=shutil.ignore_patterns("*.lock", "__pycache__"),
    )
    path = tmp_path / "examples" / "onnx-gpu" / "imagebuild.yaml"
    data = yaml.safe_load(path.read_text()) | changes
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def spec_error(path: Path) -> SpecError:
    with pytest.raises(SpecError) as e:
        specmod.load(path)
    return e.value


def test_the_gpu_example_is_valid_and_selects_cuda_variants(tmp_path: Path) -> None:
    spec = specmod.load(gpu_spec(tmp_path))
    assert spec.gpu is not None and spec.gpu.driver == "535"
    onnx = roles.role("onnxruntime")
    assert onnx.variant(False).python == ["onnxruntime"]
    assert onnx.variant(True).python[0].startswith("onnxruntime-gpu")
    assert set(specmod.GPU_ROLES) <= set(roles.known_stacks())


def test_unknown_stack_lists_the_known_ones(tmp_path: Path) -> None:
    err = str(spec_error(gpu_spec(tmp_path, stacks=["tensorflow"])))
    assert "unknown stack 'tensorflow'" in err
    for known in ("cuda_runtime", "nvidia_driver", "onnxruntime", "pytorch"):
        assert known in err


def test_gpu_roles_and_gpu_profile_need_each_other(tmp_path: Path) -> None:
    no_gpu = str(spec_error(gpu_spec(tmp_path / "a", gpu=None)))
    assert "stacks[0]" in no_gpu and "'nvidia_driver' needs a `gpu:` profile" in no_gpu
    missing = str(spec_error(gpu_spec(tmp_path / "b", stacks=["onnxruntime"])))
    assert "gpu:" in missing and "nvidia_driver, cuda_runtime" in missing


def test_version_helpers() -> None:
    assert gpu.upstream("535.261.03-1") == "535.261.03"
    assert gpu.upstream("11.8.89~11.8.0-5~deb12u1") == "11.8.89"
    assert gpu.version_ge("535.261.03", "520.61.05")
    assert not gpu.version_ge("470.256.02", "520.61.05")
    assert gpu.guard_outcome(0, "") == "starts"
    assert gpu.guard_outcome(78, "x\nimagebuild GPU guard: no GPU: driver absent\n") == (
        "exit 78: no GPU"
    )


def render_guard(tmp_path: Path, **overrides: object) -> Path:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters["quote"] = shlex.quote
    defaults = roles.defaults("nvidia_driver") | overrides
    text = env.from_string(GUARD.read_text()).render(**defaults)
    out = tmp_path / "guard"
    out.write_text(text)
    out.chmod(0o755)
    return out


@pytest.mark.skipif(Path("/proc/driver/nvidia").exists(), reason="this host has an NVIDIA driver")
def test_guard_refuses_without_the_stack_and_the_override_starts(tmp_path: Path) -> None:
    guard = render_guard(tmp_path)
    env = {"PATH": "/usr/bin:/bin"}
    r = subprocess.run([guard, "echo", "started"], capture_output=True, text=True, env=env)
    # This host has neither the NVIDIA libraries nor a GPU: the first missing thing is named.
    assert r.returncode == gpu.GUARD_EXIT and r.stdout == ""
    assert "library missing: libcudart.so.12" in r.stderr and "refusing to start" in r.stderr
    env["IMAGEBUILD_ALLOW_NO_GPU"] = "1"
    r = subprocess.run([guard, "echo", "started"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout == "started\n"
    assert "IMAGEBUILD_ALLOW_NO_GPU=1 is set" in r.stderr


# --- the real GPU example ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_built(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):
    """examples/onnx-gpu locked, fetched and built as a container (real mirror, PyPI, engine)."""
    spec = gpu_spec(tmp_path_factory.mktemp("gpu"))
    dist = spec.parent / "dist"
    args = ["--spec", str(spec), "--cache-dir", str(cache_dir)]
    for task in ("lock", "fetch"):
        r = run_invoke(task, *args)
        assert r.returncode == 0, r.stderr
    r = run_invoke("build-container", *args, "--dist", str(dist))
    assert r.returncode == 0, r.stderr[-5000:]
    return specmod.load(spec), dist


def test_a_cuda_version_without_locked_wheels_is_refused_at_its_line(tmp_path: Path) -> None:
    err = str(spec_error(gpu_spec(tmp_path, gpu={"driver": "535", "cuda": "11.8"})))
    assert "gpu.cuda" in err and "'11.8'" in err and "12.2" in err


def test_cuda_components_follow_the_stacks(tmp_path: Path) -> None:
    """cuda_runtime installs the runtime plus what the other stacks ask for, all one CUDA minor."""
    spec = specmod.load(gpu_spec(tmp_path / "a"))
    cuda = {r.name: r for r in requested.of(spec).stacks}["cuda_runtime"]
    assert cuda.python == [
        "nvidia-cuda-runtime-cu12==12.2.*",
        "nvidia-cublas-cu12==12.2.*",
        "nvidia-cufft-cu12==11.0.8.*",
        "nvidia-curand-cu12==10.3.3.*",
        "nvidia-cudnn-cu12==9.*",
    ]
    probe = specmod.load(gpu_spec(tmp_path / "b", stacks=["nvidia_driver", "cuda_runtime"]))
    cuda = {r.name: r for r in requested.of(probe).stacks}["cuda_runtime"]
    assert cuda.python == ["nvidia-cuda-runtime-cu12==12.2.*"]


def test_the_toolkit_variables_come_from_the_spec(tmp_path: Path) -> None:
    spec = specmod.load(gpu_spec(tmp_path))
    assert resolved.toolkit_env(spec) == {
        "NVIDIA_VISIBLE_DEVICES": "all",
        "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
        "NVIDIA_REQUIRE_CUDA": "cuda>=12.2",
    }


@pytest.mark.network
def test_lock_refuses_a_driver_the_archive_lacks(tmp_path: Path, cache_dir: Path) -> None:
    spec = gpu_spec(tmp_path, gpu={"driver": "550", "cuda": "12.2"})
    r = run_invoke("lock", "--spec", str(spec), "--cache-dir", str(cache_dir))
    assert r.returncode == 2, r.stderr
    assert "gpu.driver" in r.stderr and "libnvidia-ml1 resolves to 535." in r.stderr
    assert not spec.with_suffix(".lock").exists()


def _in_image(
    image: str, *argv: str, env: tuple[str, ...] = (), entry: str = "", root: bool = False
) -> Any:
    run = ["docker", "run", "--rm", "--network", "none", *[f"-e{e}" for e in env]]
    run += ["--user=root"] if root else []
    run += [f"--entrypoint={entry}"] if entry else []
    return subprocess.run([*run, image, *argv], capture_output=True, text=True, timeout=120)


@pytest.mark.network
@pytest.mark.engine
def test_gpu_container_fails_loudly_without_a_gpu(gpu_built) -> None:
    spec, _ = gpu_built
    image = f"{spec.repository}:{spec.version}"
    start = time.monotonic()
    r = _in_image(image)
    took = time.monotonic() - start
    assert r.returncode == gpu.GUARD_EXIT, r.stderr
    assert "no GPU" in r.stderr and "IMAGEBUILD_ALLOW_NO_GPU=1" in r.stderr
    assert took < 3, f"the guard took {took:.1f}s (docker run included)"
    r = _in_image(image, "--version", env=("IMAGEBUILD_ALLOW_NO_GPU=1",))
    assert r.returncode == 0 and r.stdout.strip().endswith(spec.version), r.stderr


@pytest.mark.network
@pytest.mark.engine
def test_gpu_container_has_cuda_but_no_driver(gpu_built) -> None:
    """No driver user space in the lock's shared section or the image; the CUDA 12 wheels in
    both; the toolkit's variables in the config; every CUDA library resolves but libcuda."""
    spec, _ = gpu_built
    image = f"{spec.repository}:{spec.version}"
    lock = json.loads(spec.path.with_suffix(".lock").read_text())
    shared = {p["name"] for p in lock["os_shared"]}
    vm_only = {p["name"] for p in lock["os_vm_only"]}
    for pkg in ("libcuda1", "libnvidia-ml1", "nvidia-smi", "nvidia-kernel-dkms"):
        assert pkg in vm_only and pkg not in shared
    groups = {w["name"]: w["group"] for w in lock["python"]}
    for dist in ("nvidia-cuda-runtime-cu12", "nvidia-cublas-cu12", "nvidia-cudnn-cu12"):
        assert groups[dist] == "cuda_runtime"
    assert groups["onnxruntime-gpu"] == "onnxruntime"
    find = "find / -xdev ( -name 'libcuda.so*' -o -name 'libnvidia-ml.so*' -o -name nvidia-smi )"
    found = _in_image(
        image, "-c", find.replace("(", "\\(").replace(")", "\\)"), entry="/bin/sh", root=True
    )
    assert found.returncode == 0 and found.stdout == "", found.stdout + found.stderr
    inspect = ["docker", "image", "inspect", image]
    config = json.loads(subprocess.run(inspect, capture_output=True, text=True).stdout)[0]
    env = dict(e.split("=", 1) for e in config["Config"]["Env"])
    assert {k: env.get(k) for k in resolved.toolkit_env(spec)} == resolved.toolkit_env(spec)
    provider = "onnxruntime/capi/libonnxruntime_providers_cuda.so"
    r = _in_image(image, f"/opt/venv/lib/python3.11/site-packages/{provider}", entry="ldd")
    missing = sorted({ln.split()[0] for ln in r.stdout.splitlines() if "not found" in ln})
    assert r.returncode == 0 and missing == [], r.stdout  # libcuda: cudart loads it at run time
    for lib in ("libcudnn.so.9", "libcublasLt.so.12", "libcudart.so.12", "libcufft.so.11"):
        assert f"{lib} => /opt/venv/" in r.stdout, r.stdout


@pytest.mark.network
@pytest.mark.engine
def test_gpu_app_refuses_the_cpu_unless_told(gpu_built) -> None:
    """The app asks for the CUDA provider (guard bypassed: the app's own refusal is tested)."""
    spec, _ = gpu_built
    image = f"{spec.repository}:{spec.version}"
    args = ("-m", "app", "--config", "/opt/app/gpu.yaml", "--check")
    r = _in_image(image, *args, entry="/opt/venv/bin/python")
    assert r.returncode == 3 and r.stdout == "", r.stderr
    assert "CUDAExecutionProvider could not start" in r.stderr and "libcuda.so.1" in r.stderr
    assert "refusing to run on the CPU" in r.stderr
    r = _in_image(image, *args, env=("IMAGEBUILD_ALLOW_NO_GPU=1",), entry="/opt/venv/bin/python")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["provider"] == "CPUExecutionProvider"
    assert "running on the CPU" in r.stderr
    # The image's own CUDA call gets as far as the (absent) driver and says so.
    r = _in_image(image, entry="/usr/local/bin/imagebuild-cuda-probe")
    assert r.returncode == 1 and "cuda runtime: 12.2" in r.stdout, r.stdout + r.stderr
    assert "cudaGetDeviceCount: error 35" in r.stderr


@pytest.mark.network
@pytest.mark.engine
@pytest.mark.vm
def test_gpu_vm_verifies_statically_and_skips_runtime_checks(probe_built, cache_dir: Path) -> None:
    """The smallest GPU spec (gpu-probe: the driver stack and CUDA's runtime, qcow2 only) as a
    VM: the same rows as for onnx-gpu at a third of the CI time (no 2.5 GB of CUDA wheels to
    install, compress and hash under TCG)."""
    spec = probe_built
    dist = spec.path.parent / "dist"
    r = build_vm(spec.path, cache_dir, dist)
    assert r.returncode == 0, r.stderr[-5000:]
    r = run_invoke("verify", "--spec", str(spec.path), "--dist", str(dist))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = {
        row["id"]: row for row in json.loads((dist / "verify" / "report.json").read_text())["rows"]
    }
    ml = rows["gpu:libnvidia-ml.so.1 version"]
    assert ml["outcome"] == "passed" and ml["container"] == gpu.ABSENT != ml["vm"]
    module = rows["gpu:nvidia kernel module version (modinfo)"]
    assert module["outcome"] == "passed" and module["vm"] == ml["vm"]
    assert module["container"] == gpu.ABSENT
    driver = rows["gpu:driver user space in the image"]
    assert (driver["container"], driver["outcome"]) == ("none", "passed")
    ldd = rows[f"gpu:{gpu.LDD_ROW}"]
    assert (ldd["container"], ldd["vm"], ldd["outcome"]) == ("none", "none", "passed")
    assert int(rows[f"gpu:{gpu.LDD_COUNT_ROW}"]["vm"]) > 0
    digest = rows[f"gpu:{gpu.DIGEST_ROW}"]
    assert digest["outcome"] == "passed" and len(digest["vm"]) == 64
    require = rows["gpu:NVIDIA_REQUIRE_CUDA"]
    assert (require["container"], require["outcome"]) == ("cuda>=12.2", "passed")
    enough = rows["gpu:driver >= what the CUDA runtime needs"]
    assert enough["outcome"] == "passed" and enough["vm"].endswith(": yes")
    guard = rows["gpu:entrypoint without a GPU, no override"]
    assert guard["outcome"] == "passed" and guard["vm"] == f"exit {gpu.GUARD_EXIT}: no GPU"
    for runtime in ("gpu:nvidia-smi driver version", "gpu:CUDA call (imagebuild-cuda-probe)"):
        assert rows[runtime]["outcome"] == "skipped" and "no NVIDIA GPU" in rows[runtime]["problem"]
    assert "skipped: no NVIDIA GPU" in r.stdout
    # An env value with %, $, quotes, a backslash and double spaces: the same in both artifacts
    # (the container's image config and the VM's unit + wrapper, as the service sees it).
    note = rows["env:PROBE_NOTE"]
    assert (note["outcome"], note["container"], note["vm"]) == (
        "passed",
        spec.env["PROBE_NOTE"],
        spec.env["PROBE_NOTE"],
    )
    assert "\\" in spec.env["PROBE_NOTE"] and "%" in spec.env["PROBE_NOTE"]


VERSIONS = Path(__file__).parent / "data" / "nvidia-version"

FAKE_HOST = r"""
set -eu
F=$1
# Keep the real /dev/null reachable, then a private /dev with only what the case gives.
touch "$F/null" && mount --bind /dev/null "$F/null"
mount --bind "$F/ldconfig" /sbin/ldconfig
mount -t tmpfs none /proc/driver
[ ! -e "$F/version" ] || { mkdir /proc/driver/nvidia; cp "$F/version" /proc/driver/nvidia/; }
mount -t tmpfs none /sys/module
[ ! -e "$F/sysversion" ] ||
  { mkdir /sys/module/nvidia; cp "$F/sysversion" /sys/module/nvidia/version; }
mount -t tmpfs none /dev
touch /dev/null && mount --bind "$F/null" /dev/null
[ ! -e "$F/nvidia0" ] || touch /dev/nvidia0
shift
exec "$@"
"""


def _proc(name: str) -> str:
    return (VERSIONS / f"{name}.txt").read_text()


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"),
    reason="a private mount namespace (fake driver, libraries, devices) needs root",
)
@pytest.mark.parametrize(
    ("proc", "sys", "libcuda", "owned", "device", "says"),
    [
        (None, None, "580.159.04", False, True, "no GPU: the NVIDIA kernel driver is not loaded"),
        (_proc("open-580"), None, "580.159.04", False, False, "no GPU: no /dev/nvidia<N> device"),
        (
            _proc("proprietary-470"),
            None,
            "470.256.02",
            False,
            True,
            "driver too old: kernel driver 470.256.02 < 535.54.03, which CUDA 12.2 needs",
        ),
        (
            _proc("open-580"),
            None,
            None,
            False,
            True,
            "driver user space missing: libcuda.so.1 is not in the linker cache",
        ),
        # The VM owns its driver: user space and module must agree.
        (
            _proc("proprietary-535"),
            None,
            "535.104.05",
            True,
            True,
            "driver mismatch: user-space libcuda.so.535.104.05 does not match the kernel driver "
            "535.129.03",
        ),
        (_proc("proprietary-535"), None, "535.129.03", True, True, None),
        # A container: the toolkit's libcuda is the host's; any driver >= the minimum starts.
        (_proc("proprietary-535"), None, "535.129.03", False, True, None),
        (_proc("open-535"), None, "535.129.03", False, True, None),
        (_proc("open-550"), None, "550.54.14", False, True, None),
        (_proc("open-580"), None, "580.159.04", False, True, None),
        # /sys/module/nvidia/version, where it is readable, wins over /proc's wording.
        (_proc("proprietary-470"), "580.159.04\n", "580.159.04", False, True, None),
    ],
    ids=[
        "no-driver",
        "no-device",
        "too-old-470",
        "no-libcuda",
        "vm-mismatch",
        "vm-match",
        "proprietary-535",
        "open-535",
        "open-550",
        "open-580",
        "sysfs-580",
    ],
)
def test_guard_names_each_missing_piece_on_a_faked_gpu_host(
    tmp_path: Path,
    proc: str | None,
    sys: str | None,
    libcuda: str | None,
    owned: bool,
    device: bool,
    says: str | None,
) -> None:
    """The guard's later checks, on this GPU-less host: its /proc/driver, /sys/module, /dev and
    linker cache are faked in a private mount namespace (the host's are untouched)."""
    marker = tmp_path / "driver-in-image"
    guard = render_guard(tmp_path, nvidia_driver_owned_marker=str(marker))
    if owned:
        marker.write_text("535\n")
    fake, lib = tmp_path / "fake", tmp_path / "lib"
    fake.mkdir(), lib.mkdir()
    libs = list(roles.defaults("nvidia_driver")["nvidia_driver_libraries"])
    for n in libs:
        (lib / n).touch()
    if libcuda:
        (lib / f"libcuda.so.{libcuda}").touch()
        (lib / "libcuda.so.1").symlink_to(f"libcuda.so.{libcuda}")
        libs.append("libcuda.so.1")
    cache = "".join(f"\t{n} (libc6,x86-64) => {lib / n}\n" for n in libs)
    (fake / "ldconfig").write_text(f"#!/bin/sh\nprintf '%s' {shlex.quote(cache)}\n")
    (fake / "ldconfig").chmod(0o755)
    if proc:
        (fake / "version").write_text(proc)
    if sys:
        (fake / "sysversion").write_text(sys)
    if device:
        (fake / "nvidia0").touch()
    r = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            FAKE_HOST,
            "sh",
            str(fake),
            str(guard),
            "echo",
            "started",
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    if says is None:
        assert (r.returncode, r.stdout, r.stderr) == (0, "started\n", "")
    else:
        assert r.returncode == gpu.GUARD_EXIT and r.stdout == "", r.stderr
        assert f"imagebuild GPU guard: {says}" in r.stderr


# --- the GPU proof: the smallest GPU image, packed for a Docker-less GPU host --------------------


@pytest.fixture(scope="module")
def probe_built(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):
    """examples/gpu-probe locked, fetched and built as a container."""
    work = tmp_path_factory.mktemp("probe")
    shutil.copytree(
        ROOT / "examples", work / "examples", ignore=shutil.ignore_patterns("*.lock", "__pycache__")
    )
    spec = work / "examples" / "gpu-probe" / "imagebuild.yaml"
    args = ["--spec", str(spec), "--cache-dir", str(cache_dir)]
    for task in ("lock", "fetch"):
        r = run_invoke(task, *args)
        assert r.returncode == 0, r.stderr
    r = run_invoke("build-container", *args, "--dist", str(spec.parent / "dist"))
    assert r.returncode == 0, r.stderr[-5000:]
    return specmod.load(spec)


@pytest.mark.network
@pytest.mark.engine
def test_gpu_probe_packs_small_and_runs_only_on_a_gpu_host(probe_built, tmp_path: Path) -> None:
    spec = probe_built
    image = f"{spec.repository}:{spec.version}"
    proof = [sys.executable, str(ROOT / "bench" / "gpu_proof.py")]
    out = tmp_path / "probe.rootfs.tar.xz"
    r = subprocess.run(
        [*proof, "pack", image, str(out)], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size < 60 * 2**20, f"{out.stat().st_size / 2**20:.1f} MiB"
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    for path in (
        "usr/local/bin/imagebuild-gpu-guard",
        "usr/local/bin/imagebuild-cuda-probe",
        "opt/venv/lib/python3.11/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12",
        "etc/ld.so.conf.d/imagebuild-cuda.conf",
        ".imagebuild-proof-config.json",
    ):
        assert path in names, path
    assert not [n for n in names if "/libcuda.so" in n or n.endswith("nvidia-smi")]
    # This host has no NVIDIA driver: `run` says so before touching anything.
    r = subprocess.run([*proof, "run", str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no NVIDIA driver on this host" in r.stderr, r.stderr
    # The image's own entrypoint is the guarded probe: refused here, naming the missing GPU.
    r = _in_image(image)
    assert r.returncode == gpu.GUARD_EXIT and "no GPU" in r.stderr, r.stderr
    r = _in_image(image, env=("IMAGEBUILD_ALLOW_NO_GPU=1",))
    assert r.returncode == 1 and "cuda runtime: 12.2" in r.stdout, r.stdout + r.stderr


def test_a_vm_only_change_keys_the_disk_not_the_stacks_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(roles.ROLES_DIR / "nvidia_driver", tmp_path / "nvidia_driver")
    monkeypatch.setattr(roles, "ROLES_DIR", tmp_path)
    before = {part: roles.files_digest("nvidia_driver", part) for part in ("shared", "vm")}
    vm_tasks = tmp_path / "nvidia_driver" / roles.VM_ONLY
    vm_tasks.write_text(vm_tasks.read_text() + "\n# changed\n")
    assert roles.files_digest("nvidia_driver", "shared") == before["shared"]
    assert roles.files_digest("nvidia_driver", "vm") != before["vm"]
    guard = tmp_path / "nvidia_driver" / "templates" / "gpu-guard.sh.j2"
    guard.write_text(guard.read_text() + "\n# changed\n")
    assert roles.files_digest("nvidia_driver", "shared") != before["shared"]


def test_update_knows_every_name_the_spec_asks_for(tmp_path: Path) -> None:
    """`lock --update NAME` accepts what the spec newly asks for through its stack roles too
    (it knew only `packages` and `vm.packages`): their Debian packages and Python names."""
    spec = specmod.load(gpu_spec(tmp_path))
    names = requested.of(spec).names
    assert {"nvidia-kernel-dkms", "libnvidia-ml1"} <= names  # nvidia_driver's vm_packages
    assert {"onnxruntime-gpu", "nvidia-cuda-runtime-cu12"} <= names  # stack roles' Python lines
    assert set(spec.packages) | set(spec.vm.packages) <= names
    assert "no-such-package" not in names


def test_the_wrapper_path_is_the_app_roles_and_the_units() -> None:
    """imagebuild names the entrypoint wrapper (verify, the app overlay) by the path the app role
    writes it to; the VM's unit starts that same path."""
    from imagebuild.resolved import WRAPPER

    assert roles.task_arg("app", "Entrypoint wrapper", "template", "dest") == WRAPPER
    assert WRAPPER.startswith("/usr/local/bin/")
    unit = (roles.ROLES_DIR / "vm_service" / "templates" / "unit.j2").read_text()
    assert f"ExecStart={WRAPPER}\n" in unit
    with pytest.raises(KeyError, match="no task 'Nope'"):
        roles.task_arg("app", "Nope", "template", "dest")
