"""The base disk's tree and filesystem made the same on every build: an instance's state
removed without following any link the tree holds, times clamped, ext4 change times pinned
(real mkfs.ext4, dumpe2fs and debugfs on small images); and the Packer pass's convergence rule."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from imagebuild import provision
from imagebuild.builders import disk_tree, ext4
from imagebuild.cache import sha256_file

SDE = 1_700_000_000
UUID = "0b7c6b52-5f0e-5a4e-9c55-6a1d0d4f3a10"


def tree(root: Path) -> Path:
    files = {
        "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
        "etc/ssh/ssh_host_ed25519_key": "PRIVATE",
        "etc/ssh/sshd_config": "PermitRootLogin no\n",
        "var/log/dpkg.log": "2026-12-05 10:30:38 install openssh-server\n",
        "var/log/apt/history.log": "Start-Date: 2026-12-05\n",
        "var/lib/apt/lists/deb.debian.org_dists_bookworm_Release": "x",
        "var/lib/apt/lists/lock": "",
        "var/cache/ldconfig/aux-cache": "random",
        "root/.ansible/tmp/x": "y",
        "root/.bash_history": "ls\n",
        "home/ml/.bash_history": "ls\n",
        "home/ml/notes.txt": "keep\n",
        "tmp/.X0-lock": "1",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    os.chmod(root / "var/log/dpkg.log", 0o640)
    return root


def test_sysprep_removes_every_instance_state_and_keeps_the_rest(tmp_path: Path) -> None:
    root = tree(tmp_path / "root")
    gone = disk_tree.sysprep(root)
    assert set(gone) == {
        "/etc/ssh/ssh_host_ed25519_key",
        "/var/lib/apt/lists/deb.debian.org_dists_bookworm_Release",
        "/var/cache/ldconfig/aux-cache",
        "/root/.ansible",
        "/root/.bash_history",
        "/home/ml/.bash_history",
        "/tmp/.X0-lock",
    }
    assert (root / "etc/machine-id").read_text() == ""  # present, empty: first boot makes one
    log = root / "var/log/dpkg.log"
    assert log.read_text() == "" and log.stat().st_mode & 0o777 == 0o640
    assert (root / "var/log/apt/history.log").read_text() == ""
    for kept in ("etc/ssh/sshd_config", "home/ml/notes.txt", "var/lib/apt/lists/lock"):
        assert (root / kept).exists(), kept


def test_links_in_the_tree_are_never_followed(tmp_path: Path) -> None:
    """A hostile image's links point at this host: nothing behind them is read, emptied,
    removed or written."""
    host = tmp_path / "host"
    (host / "ssh").mkdir(parents=True)
    (host / "ssh/ssh_host_rsa_key").write_text("the host's own key")
    (host / "important.log").write_text("host log")
    (host / "fstab").write_text("host fstab")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "etc/ssh").symlink_to(host / "ssh")
    (root / "var/log").symlink_to(host)
    (root / "etc/fstab").symlink_to(host / "fstab")
    (root / "etc/machine-id").symlink_to(host / "important.log")
    disk_tree.sysprep(root)
    disk_tree.write_file(root, "etc/fstab", "UUID=x / ext4 defaults 0 1\n")
    assert (host / "ssh/ssh_host_rsa_key").read_text() == "the host's own key"
    assert (host / "important.log").read_text() == "host log"
    assert (host / "fstab").read_text() == "host fstab"
    assert not (root / "etc/fstab").is_symlink() and "UUID=x" in (root / "etc/fstab").read_text()
    machine_id = root / "etc/machine-id"
    assert machine_id.read_text() == "" and not machine_id.is_symlink()
    (root / "boot").symlink_to(host)
    with pytest.raises(disk_tree.TreeError, match="/boot in the VM's tree is not a folder"):
        disk_tree.write_file(root, "boot/grub/grub.cfg", "x")
    assert not (host / "grub").exists()


def test_files_made_and_copied_out_ignore_umask_and_links(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib/grub/i386-pc").mkdir(parents=True)
    grub = root / "usr/lib/grub/i386-pc"
    (grub / "boot.img").write_bytes(b"boot")
    (grub / "lzma_decompress.img").symlink_to("/etc/shadow")
    os.mkfifo(grub / "fifo")
    got = disk_tree.copy_files(root, "usr/lib/grub/i386-pc", tmp_path / "copy")
    assert sorted(p.name for p in got.iterdir()) == ["boot.img"]  # no link, no fifo opened
    old = os.umask(0o077)
    try:
        disk_tree.write_file(root, "boot/grub/grub.cfg", "x")
    finally:
        os.umask(old)
    assert (root / "boot/grub/grub.cfg").stat().st_mode & 0o777 == 0o644
    assert (root / "boot").stat().st_mode & 0o777 == 0o755


def test_clamp_times_leaves_nothing_newer_than_the_source_date(tmp_path: Path) -> None:
    root = tree(tmp_path / "root")
    old = root / "etc/ssh/sshd_config"
    os.utime(old, (SDE - 100, SDE - 100))
    (root / "etc/link").symlink_to("/nonexistent")
    disk_tree.clamp_times(root, SDE)
    assert int(old.stat().st_mtime) == SDE - 100  # older times are the package's own: kept
    for p in [root, *root.rglob("*")]:
        assert os.lstat(p).st_mtime <= SDE, p


def test_the_same_folder_gives_the_same_filesystem_bytes(tmp_path: Path) -> None:
    """mkfs.ext4 -d copies each source inode's change time (the kernel's, not settable):
    rewriting a file between two runs changes it; the pinned change times make both equal."""
    src = tree(tmp_path / "src")
    disk_tree.clamp_times(src, SDE)
    made = []
    for n in (1, 2):
        img = tmp_path / f"{n}.img"
        ext4.make_image(src, img, 32 << 20, "t", UUID, SDE)
        made.append(sha256_file(img))
        time.sleep(1.1)  # the next change time is another second
        f = src / "home/ml/notes.txt"
        f.write_text("keep\n")
        os.utime(f, (SDE, SDE))
    assert made[0] == made[1]


def test_used_inodes_read_from_dumpe2fs_ranges() -> None:
    listing = (
        "Inode count:              32\nFirst inode:              11\n"
        "Group 0: (Blocks 0-8191)\n  Free inodes: 14-16\n"
        "Group 1: (Blocks 8192-16383)\n  Free inodes: 17, 19-32\n"
    )
    assert ext4.used_inodes(listing) == [2, 11, 12, 13, 18]


def test_the_packer_pass_may_change_only_its_own_roles() -> None:
    lines = [
        "qemu.vm: TASK [vm_sources : Mount the sources disk] ****",
        "qemu.vm: changed: [default]",
        "qemu.vm: TASK [vm_base : SSH daemon policy (keys only)] ****",
        "qemu.vm: ok: [default]",
        "qemu.vm: TASK [vm_finalize : Remove build-time traces] ****",
        "qemu.vm: changed: [default]",
    ]
    provision.check_converged(lines)  # the pass's own changes: fine
    lines[3] = "qemu.vm: changed: [default]"
    with pytest.raises(provision.ProvisionError, match=r"vm_base : SSH daemon policy"):
        provision.check_converged(lines)


def test_disk_diff_names_the_files_two_disks_differ_by(tmp_path: Path) -> None:
    """Two raw disks made from trees that differ in one file's bytes, one file's mode and one
    file present on one side only: exactly those are named (real debugfs dumps)."""
    from imagebuild.builders import disk_diff
    from imagebuild.builders.disk import PART_OFFSET

    disks = []
    for n in (1, 2):
        src = tree(tmp_path / f"src{n}")
        if n == 2:
            (src / "etc/ssh/sshd_config").write_text("PermitRootLogin yes\n")
            os.chmod(src / "home/ml/notes.txt", 0o600)
            (src / "etc/planted").write_text("built at 10:30\n")
        disk_tree.clamp_times(src, SDE)
        raw = tmp_path / f"d{n}.raw"
        ext4.make_image(src, raw, 1 << 30, "t", UUID, SDE, PART_OFFSET)  # sparse: 1 GiB
        disks.append(raw)
    assert disk_diff.readable(disks[0]) and not disk_diff.readable(tmp_path / "x.ova")
    assert disk_diff.differing(disks[0], disks[0], tmp_path, 1) == []
    assert disk_diff.differing(disks[0], disks[1], tmp_path, 1, limit=2) == [
        "/etc/planted (only in d2.raw)",
        "/etc/ssh/sshd_config",
        "...",
    ]
    assert disk_diff.differing(disks[0], disks[1], tmp_path, 1) == [
        "/etc/planted (only in d2.raw)",
        "/etc/ssh/sshd_config",
        "/home/ml/notes.txt",
    ]
