"""Model stacks and the GPU profile. Pure logic first (spec rules, role variants, the guard run
as a real shell script on this GPU-less host), then the real GPU example: container (the guard
refuses, the override starts it) and VM + verify (static GPU checks pass, runtime ones skip)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import jinja2
import pytest
import yaml

from imagebuild import roles
from imagebuild import spec as specmod
from imagebuild.errors import SpecError
from imagebuild.verify import gpu
from tests.conftest import ROOT, build_vm, run_invoke

GUARD = roles.ROLES_DIR / "nvidia_driver" / "templates" / "gpu-guard.sh.j2"


def gpu_spec(tmp_path: Path, **changes: object) -> Path:
    """Both examples copied (onnx-gpu reuses onnx-serve's app and requirements), then edited."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples",
                    ignore=shutil.ignore_patterns("*.lock", "__pycache__"))  # fmt: skip
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


def render_guard(tmp_path: Path) -> Path:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters["quote"] = shlex.quote
    defaults = roles.defaults("nvidia_driver")
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
    assert "library missing: libcuda.so.1" in r.stderr and "refusing to start" in r.stderr
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


@pytest.mark.network
def test_lock_refuses_a_cuda_the_archive_lacks(tmp_path: Path, cache_dir: Path) -> None:
    spec = gpu_spec(tmp_path, gpu={"driver": "535", "cuda": "12.4"})
    r = run_invoke("lock", "--spec", str(spec), "--cache-dir", str(cache_dir))
    assert r.returncode == 2, r.stderr
    assert "gpu.cuda" in r.stderr and "libcudart11.0 resolves to 11.8" in r.stderr
    assert not spec.with_suffix(".lock").exists()


@pytest.mark.network
@pytest.mark.engine
def test_gpu_container_fails_loudly_without_a_gpu(gpu_built) -> None:
    spec, _ = gpu_built
    image = f"{spec.repository}:{spec.version}"
    run = ["docker", "run", "--rm", "--network", "none"]
    start = time.monotonic()
    r = subprocess.run([*run, image], capture_output=True, text=True, timeout=60)
    took = time.monotonic() - start
    assert r.returncode == gpu.GUARD_EXIT, r.stderr
    assert "no GPU" in r.stderr and "IMAGEBUILD_ALLOW_NO_GPU=1" in r.stderr
    assert took < 3, f"the guard took {took:.1f}s (docker run included)"
    r = subprocess.run([*run, "-e", "IMAGEBUILD_ALLOW_NO_GPU=1", image, "--version"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip().endswith(spec.version), r.stderr
    # The NVIDIA user space is in the container at the locked versions; no kernel module.
    lock = json.loads(spec.path.with_suffix(".lock").read_text())
    shared = {p["name"]: p["version"] for p in lock["os_shared"]}
    for pkg in ("libcuda1", "libnvidia-ml1", "libcudart11.0", "nvidia-smi"):
        assert pkg in shared
    assert "nvidia-kernel-dkms" in {p["name"] for p in lock["os_vm_only"]}
    onnx = [w for w in lock["python"] if w["group"] == "onnxruntime"]
    assert "onnxruntime-gpu" in {w["name"] for w in onnx}


@pytest.mark.network
@pytest.mark.engine
@pytest.mark.vm
def test_gpu_vm_verifies_statically_and_skips_runtime_checks(gpu_built, cache_dir: Path) -> None:
    spec, dist = gpu_built
    r = build_vm(spec.path, cache_dir, dist)
    assert r.returncode == 0, r.stderr[-5000:]
    r = run_invoke("verify", "--spec", str(spec.path), "--dist", str(dist))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = {row["id"]: row for row in json.loads((dist / "verify" / "report.json").read_text())[
        "rows"]}  # fmt: skip
    ml = rows["gpu:libnvidia-ml.so.1 version"]
    assert ml["outcome"] == "passed" and ml["container"] == ml["vm"] != gpu.ABSENT
    module = rows["gpu:nvidia kernel module version (modinfo)"]
    assert module["outcome"] == "passed" and module["vm"] == ml["vm"]
    assert module["container"] == gpu.ABSENT
    guard = rows["gpu:entrypoint without a GPU, no override"]
    assert guard["outcome"] == "passed" and guard["vm"] == f"exit {gpu.GUARD_EXIT}: no GPU"
    smi = rows["gpu:nvidia-smi driver version"]
    assert smi["outcome"] == "skipped" and "no NVIDIA GPU" in smi["problem"]
    assert "skipped: no NVIDIA GPU" in r.stdout


FAKE_HOST = r"""
set -eu
F=$1
# Keep the real /dev/null reachable, then a private /dev with only what the case gives.
touch "$F/null" && mount --bind /dev/null "$F/null"
mount --bind "$F/ldconfig" /sbin/ldconfig
mount -t tmpfs none /proc/driver
[ ! -e "$F/version" ] || { mkdir /proc/driver/nvidia; cp "$F/version" /proc/driver/nvidia/; }
mount -t tmpfs none /dev
touch /dev/null && mount --bind "$F/null" /dev/null
[ ! -e "$F/nvidia0" ] || touch /dev/nvidia0
shift
exec "$@"
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"),
    reason="a private mount namespace (fake driver, libraries, devices) needs root",
)
@pytest.mark.parametrize(
    ("kernel", "userspace", "device", "says"),
    [
        (None, "535.261.03", True, "no GPU: the NVIDIA kernel driver is not loaded"),
        ("535.261.03", "535.261.03", False, "no GPU: no /dev/nvidia<N> device"),
        ("470.256.02", "470.256.02", True, "driver too old: kernel driver 470.256.02 < 520.61.05"),
        ("535.261.03", "535.247.01", True,
         "driver mismatch: user-space libcuda.so.535.247.01 does not match the kernel driver "
         "535.261.03"),
        ("535.261.03", "535.261.03", True, None),
    ],
    ids=["no-driver", "no-device", "too-old", "mismatch", "starts"],
)  # fmt: skip
def test_guard_names_each_missing_piece_on_a_faked_gpu_host(
    tmp_path: Path, kernel: str | None, userspace: str, device: bool, says: str | None
) -> None:
    """The guard's later checks, on this GPU-less host: its /proc/driver, /dev and linker cache
    are faked in a private mount namespace (the host's are untouched)."""
    guard = render_guard(tmp_path)
    fake, lib = tmp_path / "fake", tmp_path / "lib"
    fake.mkdir(), lib.mkdir()
    (lib / f"libcuda.so.{userspace}").touch()
    (lib / "libcuda.so.1").symlink_to(f"libcuda.so.{userspace}")
    libs = roles.defaults("nvidia_driver")["nvidia_driver_libraries"]
    cache = "".join(f"\t{n} (libc6,x86-64) => {lib / n}\n" for n in libs)
    (fake / "ldconfig").write_text(f"#!/bin/sh\nprintf '%s' {shlex.quote(cache)}\n")
    (fake / "ldconfig").chmod(0o755)
    if kernel:
        (fake / "version").write_text(
            f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {kernel}  Release Build\n"
        )
    if device:
        (fake / "nvidia0").touch()
    r = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", FAKE_HOST, "sh",
         str(fake), str(guard), "echo", "started"],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=30,
    )  # fmt: skip
    if says is None:
        assert (r.returncode, r.stdout, r.stderr) == (0, "started\n", "")
    else:
        assert r.returncode == gpu.GUARD_EXIT and r.stdout == "", r.stderr
        assert f"imagebuild GPU guard: {says}" in r.stderr
