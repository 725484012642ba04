"""The VM's base disk, made without downloads and without loop mounts.

It is the container's finished filesystem (its cached layers: base, os, python, stacks, app)
plus `ansible/vm.yml --tags vm` (the lock's VM-only packages, network, sshd, service) run in a
container on top, exported into a folder, then laid out as a bootable BIOS disk: `sfdisk` on a
sparse file, `mkfs.ext4 -d` into the partition's offset, GRUB's boot.img + core.img (from the
locked grub-pc-bin inside the rootfs) written in front of it, `qemu-img convert` to qcow2.
Parity with the container therefore holds by construction, and Packer's Ansible pass over the
booted VM finds every role converged. Before mkfs the tree loses every instance's state and
any time past the lock's source date (builders.disk_tree), so the same inputs give the same
bytes: this disk is what the VM formats are made from; Packer boots a throw-away overlay of it.
Cached under the hash of every input.

Also here: the sources disk, a read-only ext4 image of the local apt repo + wheelhouse the build
VM mounts (the cloud kernel has no 9p), made the same way.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagebuild import diskimage, machines, progress, tools
from imagebuild.builders import bootloader, disk_tree, ext4
from imagebuild.builders.bootloader import PART_OFFSET
from imagebuild.builders.context import Build
from imagebuild.builders.layers import Layer
from imagebuild.builders.stage_container import stage_container
from imagebuild.cache import sha256_file
from imagebuild.cache_entries import DISK, Consistency, EntryKind
from imagebuild.errors import ImageBuildError
from imagebuild.keys import STAGES, sources_disk_key
from imagebuild.obtain import obtain

ROOT_LABEL, SOURCES_LABEL = "imagebuild-root", "imagebuild-src"


class DiskError(ImageBuildError):
    pass


@dataclass(frozen=True)
class BaseDisk:
    path: Path  # qcow2, in the cache
    sha256: str
    key: str
    kernel: str
    root_uuid: str
    reused: bool
    seconds: float
    pulled: bool = False  # from the registry cache


def _extract(chunks: object, rootfs: Path) -> None:
    """`docker export` stream -> folder, owners and modes kept (we are root)."""
    rootfs.mkdir()
    tar = subprocess.Popen(
        [
            "tar",
            "-x",
            "-p",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--exclude=.dockerenv",
            "-C",
            str(rootfs),
            "-f",
            "-",
        ],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert tar.stdin is not None
    try:
        for chunk in chunks:  # type: ignore[attr-defined]
            tar.stdin.write(chunk)
    finally:
        tar.stdin.close()
        err = tar.stderr.read().decode() if tar.stderr else ""
        if tar.wait() != 0:
            raise DiskError(f"extracting the VM rootfs failed:\n{err[-2000:]}")


def _configure(rootfs: Path, hostname: str, root_uuid: str, sde: int, arch: str) -> str:
    """Files that belong to the disk, not to provisioning (Docker bind-mounts /etc/hostname,
    /etc/hosts, /etc/resolv.conf in a container, so a role could not write them), no instance's
    state, times clamped (builders.disk_tree). Returns the kernel version the disk boots."""
    boot = disk_tree.inside(rootfs, "boot/x").parent
    kernels = sorted(p.name.removeprefix("vmlinuz-") for p in boot.glob("vmlinuz-*"))
    if not kernels:
        raise DiskError("no /boot/vmlinuz-* in the VM rootfs: vm.packages needs a linux-image")
    kernel = kernels[-1]
    if not (boot / f"initrd.img-{kernel}").exists():
        raise DiskError(f"no /boot/initrd.img-{kernel}: vm.packages needs initramfs-tools")
    gone = disk_tree.sysprep(rootfs)
    progress.say(f"build-vm: base disk: removed instance state: {' '.join(gone) or 'none'}")
    write = functools.partial(disk_tree.write_file, rootfs)
    write("etc/fstab", f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n")
    write("etc/hostname", hostname + "\n")
    write("etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {hostname}\n")
    disk_tree.remove(rootfs, "etc/resolv.conf")  # dhclient writes it
    write(
        "boot/grub/grub.cfg",
        "set timeout=0\n"
        f"search --no-floppy --fs-uuid --set=root {root_uuid}\n"
        f"linux /boot/vmlinuz-{kernel} root=UUID={root_uuid} ro console=tty0 "
        f"console={machines.MACHINES[arch].console},115200 net.ifnames=0\n"
        f"initrd /boot/initrd.img-{kernel}\n"
        "boot\n",
    )
    disk_tree.clamp_times(rootfs, sde)
    return kernel


def _assemble(rootfs: Path, out: Path, size: int, root_uuid: str, sde: int, arch: str) -> None:
    raw = out.with_suffix(".raw")
    with raw.open("wb") as f:
        f.truncate(size)
    boot = bootloader.for_arch(arch)
    boot.partition(raw, root_uuid)
    ext4.make_image(rootfs, raw, boot.root_end(size), ROOT_LABEL, root_uuid, sde, PART_OFFSET)
    boot.install(rootfs, raw, root_uuid, sde)
    # Clusters of ext4's block size: the cached disk holds the filesystem's used blocks and no
    # more (the formats are converted from it, with their own cluster sizes).
    tools.run(
        [
            "qemu-img",
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            f"cluster_size={ext4.BLOCK}",
            str(raw),
            str(out),
        ]
    )
    raw.unlink()


def base_disk(b: Build, layers: list[Layer]) -> BaseDisk:
    """The cached base disk for this spec + lock, made now if missing (its key: keys.disk_key;
    bump keys.DISK_LAYOUT when the layout code here changes)."""
    start = time.monotonic()
    key, cache = b.inputs.keys.disk, b.inputs.cache
    kind, rule = _entry(b, key, layers)

    def make(tmp: Path, known: dict[str, str]) -> None:
        known["disk.qcow2"] = _make(b, layers, key, tmp)  # disk.json: hashed by obtain

    origin = obtain(
        cache, kind, key, make, label="build-vm: base disk", rule=rule, remote=b.inputs.remote
    )
    final = cache.dir("disks", key)
    meta = json.loads((final / "disk.json").read_text())  # as the rule checked it
    return BaseDisk(
        final / "disk.qcow2",
        meta["sha256"],
        key,
        meta["kernel"],
        _root_uuid(key),
        reused=origin == "cached",
        seconds=round(time.monotonic() - start, 2),
        pulled=origin == "pulled",
    )


def _root_uuid(key: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"imagebuild:{key}"))


def _entry(b: Build, key: str, layers: list[Layer]) -> tuple[EntryKind, Consistency]:
    """The base disk entry `key`, local or pulled: its kind, bounded by the spec's disk (a qcow2
    holds its virtual size and, with 4 KiB clusters, about 1/400 more in tables), and its rule: a
    valid disk entry of this key, made from exactly `layers`, with this key's root UUID and a
    kernel the lock installs, and one self-contained qcow2 of the spec's size (diskimage)."""
    disk_gb, lock = b.inputs.spec.vm.disk_gb, b.inputs.lock
    kind = DISK.capped("disk.qcow2", (disk_gb << 30) * 65 // 64 + (1 << 20))
    kernels = {
        p.name.removeprefix("linux-image-").removesuffix("-unsigned")
        for p in [*lock.shared, *lock.vm]
        if p.name.startswith("linux-image-")
    }

    def kernel_problem(meta: dict[str, Any]) -> str | None:
        if meta["kernel"] in kernels:
            return None
        return f"its disk.json names kernel {meta['kernel']}, which no locked linux-image installs"

    expect = {"key": key, "layers": [ly.diff_id for ly in layers], "root_uuid": _root_uuid(key)}
    rule = kind.rule(b.inputs.cache, expect, kernel_problem)
    return kind, diskimage.entry_rule(rule, "disk.qcow2", "qcow2", disk_gb)


def _make(b: Build, layers: list[Layer], key: str, tmp: Path) -> str:
    """Make the base disk in `tmp`; returns its sha256."""
    assert len(layers) == len(STAGES)
    spec = b.inputs.spec
    root_uuid = _root_uuid(key)
    rootfs = b.workdir / "vm-rootfs"
    try:
        with (
            progress.stage("build-vm: base disk: VM-only packages", f"key {key[:12]}") as st,
            stage_container(
                b,
                "vm",
                layers,
                ["vm"],
                "vm.yml",
                b.inputs.fetched.repo_vm,
                b.inputs.resolved.vm_vars(),
            ) as (container, result),
        ):
            st["note"] = f"ansible changed={result.changed}"
            _extract(container.export(chunk_size=1 << 20), rootfs)
        with progress.stage("build-vm: base disk: assemble", f"{spec.vm.disk_gb} GiB") as st:
            sde, arch = b.inputs.resolved.sde, b.inputs.lock.arch
            kernel = _configure(rootfs, spec.name, root_uuid, sde, arch)
            disk = tmp / "disk.qcow2"
            _assemble(rootfs, disk, spec.vm.disk_gb << 30, root_uuid, sde, arch)
            sha = sha256_file(disk)
            st["note"] = f"kernel {kernel}, {disk.stat().st_size / 1e6:.0f} MB qcow2"
        meta = {
            "key": key,
            "layers": [ly.diff_id for ly in layers],
            "sha256": sha,
            "kernel": kernel,
            "root_uuid": root_uuid,
        }
        (tmp / "disk.json").write_text(json.dumps(meta, indent=1))
        return sha
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def sources_disk(b: Build) -> Path:
    """Read-only ext4 image of `repo/` (shared + VM sections) and `wheels/`, cached by the lock
    sections it holds. Files are copied (hard links into the blob store would not survive)."""
    key = sources_disk_key(b.inputs.lock)

    def build(tmp: Path, known: dict[str, str]) -> None:
        with progress.stage("build-vm: sources disk", "local apt repo + wheelhouse") as st:
            tree = b.workdir / "sources"
            shutil.copytree(b.inputs.fetched.repo_vm, tree / "repo", symlinks=False)
            shutil.copytree(b.inputs.fetched.wheelhouse, tree / "wheels", symlinks=False)
            used = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
            size = (used * 13 // 10 + (64 << 20)) // (1 << 20) << 20  # room for ext4 metadata
            fs_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"imagebuild:{key}"))
            epoch = b.inputs.lock.source_date_epoch
            ext4.make_image(tree, tmp / "sources.img", size, SOURCES_LABEL, fs_uuid, epoch)
            shutil.rmtree(tree)
            st["note"] = f"{used / 1e6:.0f} MB"

    obtain(b.inputs.cache, "disks", key, build)
    return b.inputs.cache.dir("disks", key) / "sources.img"
