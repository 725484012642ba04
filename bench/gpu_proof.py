"""GPU proof for a host without Docker: run a built GPU image's own guard and CUDA probe on a real
NVIDIA GPU, with the host's driver made visible the way the NVIDIA Container Toolkit does it.

  # here (Docker): flatten the image's root filesystem into one xz tar (~50 MiB for gpu-probe)
  python bench/gpu_proof.py pack local/gpu-probe:0.1.0 gpu-probe.rootfs.tar.xz
  # on the GPU host, as root (python3 and util-linux only; no Docker, no network):
  python3 bench/gpu_proof.py run gpu-probe.rootfs.tar.xz

`run` unpacks the root filesystem, gives it a private /dev with the host's NVIDIA device nodes
(and null/zero/random), /proc and a read-only /sys, copies the host driver's user space
(libcuda, NVML, the PTX JIT compiler, nvidia-smi: what the toolkit's `compute,utility`
capabilities inject) into the image's library folder, runs the image's ldconfig, then, with the
image's environment, chroots into it and runs `imagebuild-gpu-guard imagebuild-cuda-probe` (or
the command given after `--`). It prints the host driver, the image's CUDA runtime and what ran,
and exits with the command's status. The host is left as it was (private mount namespace,
temporary folder removed).

`run` needs only the standard library (the GPU host has no project venv); `pack` uses the
docker SDK.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

GUARD = "/usr/local/bin/imagebuild-gpu-guard"
PROBE = "/usr/local/bin/imagebuild-cuda-probe"
CONFIG = ".imagebuild-proof-config.json"  # the image config, stored inside the packed tar
# The driver's user space the toolkit injects for NVIDIA_DRIVER_CAPABILITIES=compute,utility.
DRIVER_LIBS = re.compile(
    r"^lib(cuda|cudadebugger|nvidia-ml|nvidia-ptxjitcompiler|nvidia-nvvm|nvidia-cfg)\.so"
)
DRIVER_BINS = ("nvidia-smi",)
LIBDIR = "usr/lib/x86_64-linux-gnu"


def pack(image: str, out: Path) -> None:
    """`docker export` of a container of the image (the engine flattens the layers), with the
    image config beside the files, xz-compressed; written under a temporary name, then renamed."""
    import docker

    client = docker.from_env()
    config = client.images.get(image).attrs["Config"]
    container = client.containers.create(image, network_mode="none")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with tempfile.TemporaryFile() as flat:
            for chunk in container.export():
                flat.write(chunk)
            flat.seek(0)
            # xz itself, on every core (Python's lzma uses one: 76 s -> about half on two);
            # the GPU host's Python reads its multi-block output as any .xz.
            with tmp.open("wb") as f:
                xz = subprocess.Popen(["xz", "-6", "-T0", "-c"], stdin=subprocess.PIPE, stdout=f)
                assert xz.stdin is not None
                with (
                    xz.stdin,
                    tarfile.open(fileobj=xz.stdin, mode="w|") as dst,
                    tarfile.open(fileobj=flat) as src,
                ):
                    for member in src:
                        dst.addfile(member, src.extractfile(member) if member.isreg() else None)
                    blob = json.dumps(config, sort_keys=True).encode()
                    info = tarfile.TarInfo(CONFIG)
                    info.size = len(blob)
                    dst.addfile(info, io.BytesIO(blob))
                if xz.wait() != 0:
                    raise SystemExit(f"xz failed (exit {xz.returncode})")
        tmp.replace(out)
    finally:
        container.remove(force=True)
        tmp.unlink(missing_ok=True)
    print(f"packed {image} -> {out} ({out.stat().st_size / 2**20:.1f} MiB)")


def host_driver() -> str:
    """The host's kernel driver version (the guard's own rule: first dotted token)."""
    for path in ("/sys/module/nvidia/version", "/proc/driver/nvidia/version"):
        try:
            line = Path(path).read_text().splitlines()[0]
        except (OSError, IndexError):
            continue
        if m := re.search(r"\d+\.\d+(\.\d+)*", line):
            return m.group(0)
    return ""


def driver_files() -> list[Path]:
    """The host driver's libraries (real files and soname links) from its linker cache."""
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    found: dict[str, Path] = {}
    for line in out.splitlines():
        name, _, path = line.strip().partition(" => ")
        name = name.split(" ")[0]
        if DRIVER_LIBS.match(name) and "x86-64" in line and path:
            p = Path(path)
            found.setdefault(name, p)
            real = p.resolve()
            found.setdefault(real.name, real)
    return sorted(found.values())


def _unpack(rootfs: Path, dest: Path) -> dict:
    config: dict = {}
    with tarfile.open(rootfs, "r:*") as tar:
        for member in tar:
            if member.name == CONFIG:
                config = json.load(tar.extractfile(member))  # type: ignore[arg-type]
                continue
            if member.isdev():  # no device nodes from an image
                continue
            tar.extract(member, dest, numeric_owner=True, set_attrs=True)
    return config


# Inside a private mount namespace: /dev with the host's NVIDIA nodes only, /proc, a read-only
# /sys, then the image's ldconfig and the command, chrooted, with the image's environment.
SETUP = r"""
set -eu
R=$1; shift
mount -t tmpfs -o mode=0755 none "$R/dev"
for d in null zero random urandom; do touch "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"; done
for d in /dev/nvidia*; do
  [ -e "$d" ] || continue
  if [ -d "$d" ]; then mkdir -p "$R$d"; else touch "$R$d"; fi
  mount --bind "$d" "$R$d"
done
mkdir -p "$R/proc" "$R/sys" "$R/tmp"
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys" && mount -o remount,bind,ro "$R/sys" 2>/dev/null || true
chroot "$R" /sbin/ldconfig
exec chroot "$R" /usr/bin/env -i "$@"
"""


def run(rootfs: Path, command: list[str]) -> int:
    if os.geteuid() != 0:
        print("gpu_proof run: needs root (mount namespace, chroot)", file=sys.stderr)
        return 2
    driver = host_driver()
    if not driver:
        print(
            "gpu_proof run: no NVIDIA driver on this host (no /sys/module/nvidia/version, no "
            "/proc/driver/nvidia/version): run it on a GPU host",
            file=sys.stderr,
        )
        return 2
    print(f"host driver: {driver}")
    print(f"host devices: {' '.join(sorted(str(p) for p in Path('/dev').glob('nvidia*')))}")
    with tempfile.TemporaryDirectory(prefix="gpu-proof-") as tmp:
        root = Path(tmp, "rootfs")
        root.mkdir()
        config = _unpack(rootfs, root)
        libdir = root / LIBDIR
        for f in driver_files():
            target = libdir / f.name
            target.unlink(missing_ok=True)
            if f.is_symlink():
                target.symlink_to(os.readlink(f))
            else:
                shutil.copy2(f, target)
        for b in DRIVER_BINS:
            if found := shutil.which(b):
                shutil.copy2(found, root / "usr/bin" / b)
        injected = sorted(p.name for p in driver_files())
        print(f"injected from the host: {' '.join(injected)}")
        env = [e for e in config.get("Env") or [] if not e.startswith("NVIDIA_")]
        argv = command or [GUARD, PROBE]
        print(f"running in the image: {shlex.join(argv)}", flush=True)
        r = subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                SETUP,
                "sh",
                str(root),
                *env,
                *argv,
            ]
        )
    print(f"exit status: {r.returncode}")
    return r.returncode


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="gpu_proof", description=__doc__, formatter_class=raw)
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack", help="flatten IMAGE's root filesystem into OUT (.tar.xz)")
    p.add_argument("image")
    p.add_argument("out", type=Path)
    r = sub.add_parser("run", help="run the image's guard + CUDA probe on this GPU host")
    r.add_argument("rootfs", type=Path)
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD... instead of guard+probe")
    args = parser.parse_args(argv)
    if args.verb == "pack":
        pack(args.image, args.out)
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return run(args.rootfs, command)


if __name__ == "__main__":
    sys.exit(main())
