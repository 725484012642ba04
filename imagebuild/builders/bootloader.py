"""How a raw disk is made bootable for its architecture's firmware, one class per firmware behind
`for_arch`: the partition table and the GRUB image, both from the locked GRUB inside the rootfs
(its modules copied out as regular files; `grub-mkimage` of this host's grub-common builds the
image for either target). The root filesystem is partition 1 at 1 MiB on every layout, so what
reads or patches it (verify, the app overlay, disk_diff) needs no architecture.

BIOS (amd64): an MBR, GRUB's boot.img in its code area and core.img in the gap before 1 MiB.
UEFI (arm64): a GPT whose EFI system partition (partition 2) fills that same gap, a FAT12
filesystem holding GRUB as EFI/BOOT/BOOTAA64.EFI (the removable-media path: no NVRAM entry
needed). It lies before the root partition, so cloud-init's growpart can still grow the root
into a larger disk. Made with mtools, without a mount; its bytes fixed by the volume ID, mkfs's
`--invariant` and SOURCE_DATE_EPOCH (mtools' file and folder times).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Protocol

from imagebuild import tools
from imagebuild.builders import disk_tree
from imagebuild.errors import ImageBuildError

PART_OFFSET = 1 << 20  # the root partition's start on every layout
SECTOR = 512
COMMON_MODULES = ["ext2", "normal", "linux", "configfile", "search"]


class BootloaderError(ImageBuildError):
    pass


class Bootloader(Protocol):
    package: str  # the locked package whose GRUB modules it needs
    target: str  # GRUB's platform (grub-mkimage -O)
    modules: list[str]  # what its image holds besides COMMON_MODULES

    def root_end(self, size: int) -> int:
        """Where the root filesystem of a `size`-byte disk ends."""
        ...

    def partition(self, raw: Path, root_uuid: str) -> None:
        """Write the partition table of `raw` (made, sparse, of its final size)."""
        ...

    def install(self, rootfs: Path, raw: Path, root_uuid: str, sde: int) -> None:
        """Make `raw` bootable (its root filesystem written)."""
        ...


def _grub_image(rootfs: Path, boot: Bootloader, out: Path, prefix: str) -> Path:
    """`boot`'s GRUB image from the tree's modules; returns the modules' folder copy."""
    target = boot.target
    grub_dir = disk_tree.copy_files(rootfs, f"usr/lib/grub/{target}", out.parent / f"grub-{target}")
    if not (grub_dir / "normal.mod").is_file():
        shutil.rmtree(grub_dir, ignore_errors=True)
        raise BootloaderError(
            f"no GRUB {target} modules in the VM rootfs: vm.packages needs {boot.package}"
        )
    argv = ["grub-mkimage", "-O", target, "-d", str(grub_dir), "-o", str(out), "-p", prefix]
    tools.run([*argv, *boot.modules, *COMMON_MODULES])
    return grub_dir


class Bios:
    package, target = "grub-pc-bin", "i386-pc"
    modules = ["biosdisk", "part_msdos"]

    def root_end(self, size: int) -> int:
        return size

    def partition(self, raw: Path, root_uuid: str) -> None:
        # The MBR's disk identifier from the root filesystem's UUID (sfdisk draws a random one).
        layout = (
            f"label: dos\nlabel-id: 0x{root_uuid[:8]}\n"
            f"start={PART_OFFSET // SECTOR}, type=83, bootable\n"
        )
        tools.run(["sfdisk", "--quiet", str(raw)], input=layout)

    def install(self, rootfs: Path, raw: Path, root_uuid: str, sde: int) -> None:
        core = raw.parent / "core.img"
        grub_dir = _grub_image(rootfs, self, core, "(hd0,msdos1)/boot/grub")
        if core.stat().st_size > PART_OFFSET - SECTOR:
            raise BootloaderError(
                f"GRUB core.img ({core.stat().st_size} bytes) does not fit before 1 MiB"
            )
        with raw.open("r+b") as f:
            f.write((grub_dir / "boot.img").read_bytes()[:440])  # keep the partition table
            f.seek(SECTOR)
            f.write(core.read_bytes())
        core.unlink()
        shutil.rmtree(grub_dir)


class Uefi:
    package, target = "grub-efi-arm64-bin", "arm64-efi"
    modules = ["part_gpt"]
    removable = "BOOTAA64.EFI"
    ESP_START = 34  # the first sector after the primary GPT's 128 entries
    ESP_SECTORS = PART_OFFSET // SECTOR - ESP_START  # up to the root partition

    def root_end(self, size: int) -> int:
        return size - PART_OFFSET  # the backup GPT at the disk's end: a MiB kept free

    def partition(self, raw: Path, root_uuid: str) -> None:
        size = raw.stat().st_size

        def part_uuid(name: str) -> uuid.UUID:
            return uuid.uuid5(uuid.UUID(root_uuid), name)

        root_sectors = (self.root_end(size) - PART_OFFSET) // SECTOR
        # Partition 1 (root) first in the table, the ESP (sfdisk's type U) as 2 before it.
        layout = (
            f"label: gpt\nlabel-id: {root_uuid}\nfirst-lba: {self.ESP_START}\n"
            f"start={PART_OFFSET // SECTOR}, size={root_sectors}, type=L, "
            f"uuid={part_uuid('root')}, name=root\n"
            f"start={self.ESP_START}, size={self.ESP_SECTORS}, type=U, uuid={part_uuid('esp')}, "
            "name=esp\n"
        )
        tools.run(["sfdisk", "--quiet", str(raw)], input=layout)

    def install(self, rootfs: Path, raw: Path, root_uuid: str, sde: int) -> None:
        work = raw.parent / "esp"
        work.mkdir()
        try:
            efi = work / self.removable
            grub_dir = _grub_image(rootfs, self, efi, "(hd0,gpt1)/boot/grub")
            shutil.rmtree(grub_dir)
            os.utime(efi, (sde, sde))
            esp = work / "esp.img"
            with esp.open("wb") as f:
                f.truncate(self.ESP_SECTORS * SECTOR)
            volume_id = root_uuid.replace("-", "")[:8]
            tools.run(["mkfs.vfat", "--invariant", "-i", volume_id, "-n", "EFI", str(esp)])
            env = {**os.environ, "SOURCE_DATE_EPOCH": str(sde), "MTOOLS_SKIP_CHECK": "1"}
            tools.run(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"], env=env)
            tools.run(
                ["mcopy", "-m", "-i", str(esp), str(efi), f"::/EFI/BOOT/{self.removable}"],
                env=env,
            )
            with raw.open("r+b") as f:
                f.seek(self.ESP_START * SECTOR)
                f.write(esp.read_bytes())
        finally:
            shutil.rmtree(work)


BOOTLOADERS: dict[str, Bootloader] = {"amd64": Bios(), "arm64": Uefi()}


def for_arch(arch: str) -> Bootloader:
    return BOOTLOADERS[arch]
