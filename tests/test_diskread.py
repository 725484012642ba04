"""The VM disk's digests read on this host (verify/diskread.py), for real: a small ext4 disk made
by mkfs.ext4, copied out by qemu-img, checked by e2fsck, dumped by debugfs, hashed by the digest
script confined to the dump with this host's dpkg. A link in the image that points at a path of
this host must resolve inside the image, and an image's /etc/ld.so.preload must not reach the
dpkg run there."""

from __future__ import annotations

import _json
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from imagebuild.verify import diskread, filebytes, model
from tests.conftest import qcow2_disk

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("debugfs"), reason="needs root (chroot) and debugfs"
)

STATUS = """Package: demo
Status: install ok installed
Priority: optional
Section: misc
Maintainer: t <t@t>
Architecture: all
Version: 1.0
Description: demo
"""


def disk(tmp_path: Path, host_file: Path, corrupt: bool = False) -> Path:
    """A qcow2 whose partition (at 1 MiB) holds one installed package, `demo`: a file as its
    md5sums say, one changed, and one behind a link to `host_file`'s folder (an absolute path
    of this host, where the file does have the listed digest)."""
    root = tmp_path / "src"
    demo = root / "usr/share/demo"
    demo.mkdir(parents=True)
    (demo / "a").write_text("a\n")
    (demo / "b").write_text("changed\n")
    (demo / "link").symlink_to(host_file.parent)
    (root / "usr/bin").mkdir()
    (root / "usr/bin/extra").write_text("#!/bin/sh\n")
    etc = root / "etc"
    etc.mkdir()
    (etc / "shadow").write_text("root:*:1::::::\n")
    (etc / "machine-id").write_text("")
    # A shared object the loader cannot bind (Python's, without Python): preloaded, it stops
    # every program the loader starts, so dpkg would find nothing.
    (root / "lib").mkdir()
    shutil.copyfile(_json.__file__, root / "lib/stopper.so")
    (etc / "ld.so.preload").write_text("/lib/stopper.so\n")
    info = root / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(STATUS)
    (root / "var/lib/dpkg/updates").mkdir()
    files = {"a": b"a\n", "b": b"b\n", f"link/{host_file.name}": host_file.read_bytes()}
    (info / "demo.md5sums").write_text(
        "".join(f"{hashlib.md5(v).hexdigest()}  usr/share/demo/{k}\n" for k, v in files.items())
    )
    (info / "demo.list").write_text(
        "/.\n/usr\n/usr/share\n/usr/share/demo\n" + "".join(f"/usr/share/demo/{k}\n" for k in files)
    )
    damage = "set_inode_field /usr/share/demo/a links_count 7" if corrupt else None
    return qcow2_disk(root, tmp_path, damage)


def read(qcow2: Path, work: Path) -> tuple[dict[str, str], dict[str, object] | str]:
    want = {"venv": None, "app": "/nonexistent", "skip": []}
    with diskread.DiskRead(qcow2, work, filebytes.SCRIPT, want) as r:
        hygiene = r.hygiene()
        try:
            return hygiene, r.digests()
        except filebytes.ScriptFailed as e:
            return hygiene, str(e)


def test_digests_are_the_disks_own_read_inside_it(tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    secret = host / "secret"
    secret.write_text("this host's file\n")
    hygiene, digests = read(disk(tmp_path, secret), tmp_path / "work")
    assert isinstance(digests, dict), digests
    # The changed file is named with its package; the link's target is looked for inside the
    # image (missing there), never on this host, where its digest would have matched.
    assert digests["deb"] == "/usr/share/demo/b (demo) /usr/share/demo/link/secret (missing) (demo)"
    # The image's preload file is a finding, and was kept from the loader that ran dpkg.
    assert digests["unlocked"] == "/etc/ld.so.preload /usr/bin/extra"
    assert "meta" not in digests  # names and modes are read in the running VM
    assert hygiene[model.ROOT_PASSWORD] == "locked"  # read from the same copy (root:*)
    assert not (tmp_path / "work").exists()  # the copy and the dump are gone
    assert secret.read_text() == "this host's file\n"


def test_a_filesystem_with_errors_is_not_dumped(tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret").write_text("x\n")
    _, digests = read(disk(tmp_path, host / "secret", corrupt=True), tmp_path / "work")
    assert isinstance(digests, str) and "e2fsck -fn" in digests, digests
    assert "its files are not read" in digests
