"""The app overlay on a real disk (mkfs.ext4 -d at the partition offset, qemu-img, debugfs,
e2fsck; no engine, no boot): the new app's files replace the old app's, what was removed is
gone, and a disk that is not what its record says is an OverlayError, not a half-made VM."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from imagebuild.builders import app_layer, app_overlay
from imagebuild.builders.disk import PART_OFFSET
from imagebuild.builders.ext4 import make_image
from imagebuild.builders.layers import Layer

SDE = 1_700_000_000
BELOW = {
    "opt": ["5", 0o755, 0, 0, 0, SDE, ""],
    "usr": ["5", 0o755, 0, 0, 0, SDE, ""],
    "usr/local": ["5", 0o755, 0, 0, 0, SDE, ""],
    "usr/local/bin": ["5", 0o755, 0, 0, 0, SDE, ""],
}
SPEC = SimpleNamespace(app=SimpleNamespace(dest="/opt/app"))
WRAPPER = app_layer.WRAPPER


def made_app_layer(path: Path, files: dict[str, bytes]) -> app_layer.AppFiles:
    """An app layer as the app stage writes one (folders first, root's, the epoch's mtime)."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for d in ("opt", "opt/app", "usr", "usr/local", "usr/local/bin"):
            info = tarfile.TarInfo(d + "/")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, SDE
            tar.addfile(info)
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755 if "bin" in name else 0o644, SDE
            tar.addfile(info, io.BytesIO(data))
    got = app_layer.app_files(Layer(path, path.name, 0, 0), BELOW, SPEC)  # type: ignore[arg-type]
    assert isinstance(got, app_layer.AppFiles), got
    return got


def debugfs(disk: Path, command: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    raw = tmp / "check.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", disk, raw], check=True)
    return subprocess.run(
        ["debugfs", "-R", command, f"{raw}?offset={PART_OFFSET}"], capture_output=True, text=True
    )


@pytest.fixture
def prior(tmp_path: Path) -> app_overlay.Prior:
    """A small disk (partition at the base disk's offset) holding the old app."""
    tree = tmp_path / "tree"
    for d in ("opt/app", "usr/local/bin"):
        (tree / d).mkdir(parents=True)
    (tree / "opt/app/old.py").write_text("old\n")
    (tree / "opt/app/keep.py").write_text("v1\n")
    (tree / "usr/local/bin/imagebuild-entrypoint").write_text("#!/bin/sh\n")
    raw, disk = tmp_path / "disk.raw", tmp_path / "disk.qcow2"
    make_image(
        tree, raw, 64 << 20, "root", "2b5c3c3e-0000-4000-8000-000000000001", SDE, PART_OFFSET
    )
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, disk], check=True)
    files = {"opt/app/old.py": b"old\n", "opt/app/keep.py": b"v1\n", WRAPPER: b"#!/bin/sh\n"}
    old = made_app_layer(tmp_path / "old.tar", files)
    return app_overlay.Prior(disk, old, {})


def test_the_new_app_replaces_the_old_one(prior: app_overlay.Prior, tmp_path: Path) -> None:
    new_tar = tmp_path / "new.tar"
    files = {"opt/app/keep.py": b"v2\n", "opt/app/new.py": b"new\n", WRAPPER: b"#!/bin/sh\nx\n"}
    new = made_app_layer(new_tar, files)
    work = tmp_path / "work"
    work.mkdir()
    out = app_overlay.apply(prior, new, new_tar, work, SDE)
    assert debugfs(out, "cat /opt/app/keep.py", tmp_path).stdout == "v2\n"
    assert debugfs(out, "cat /opt/app/new.py", tmp_path).stdout == "new\n"
    assert "File not found" in debugfs(out, "stat /opt/app/old.py", tmp_path).stderr
    stat = debugfs(out, "stat /usr/local/bin/imagebuild-entrypoint", tmp_path).stdout
    assert "Mode:  0755" in stat and "User:     0" in stat
    assert not (work / "overlay.raw").exists()


def test_a_disk_unlike_its_record_is_refused(prior: app_overlay.Prior, tmp_path: Path) -> None:
    """The record names a file the disk lacks: debugfs says so, the overlay stops (build-vm
    then makes the VM in full) and leaves no raw copy behind."""
    lying = app_overlay.Prior(
        prior.disk,
        app_layer.AppFiles(prior.app.diff_id, [*prior.app.added, ("opt/app/gone.py", "file")]),
        {},
    )
    new_tar = tmp_path / "new.tar"
    new = made_app_layer(new_tar, {"opt/app/keep.py": b"v2\n"})
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(app_overlay.OverlayError, match="gone.py|File not found"):
        app_overlay.apply(lying, new, new_tar, work, SDE)
    assert not (work / "overlay.raw").exists()


def test_a_layer_that_changes_more_than_the_app_is_not_overlaid(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("etc/passwd")
        tar.addfile(info, io.BytesIO(b""))
    below = {**BELOW, "etc": ["5", 0o755, 0, 0, 0, SDE, ""]}
    got = app_layer.app_files(Layer(path, "x", 0, 0), below, SPEC)  # type: ignore[arg-type]
    assert got == "the app stage added etc/passwd, outside /opt/app"


@pytest.mark.parametrize(
    "name",
    [
        "opt/app/x-1.0.dist-info/METADATA",
        "opt/app/lib/y.egg-info",
        "opt/app/z.pth",
        "opt/app/deps/w-1.0-py3.11.egg/EGG-INFO/PKG-INFO",
    ],
)
def test_python_distribution_metadata_is_more_than_app_files(tmp_path: Path, name: str) -> None:
    """What importlib.metadata would list (the inventory runs in the app's folder): such an app
    layer changes what is installed, so neither a VM overlay nor a kept inventory is taken."""
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w") as tar:
        tar.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
    got = app_layer.app_files(Layer(path, "x", 0, 0), BELOW, SPEC)  # type: ignore[arg-type]
    assert got == f"the app stage added {name}: Python distribution metadata"


def test_a_kept_vm_whose_paths_are_not_plain_is_not_used(
    prior: app_overlay.Prior, tmp_path: Path
) -> None:
    """The kept record's paths become debugfs commands: one that is not a plain path (a newline
    would start another command) makes the entry unusable (a full build), however sealed."""
    from imagebuild.cache import Cache, sha256_file

    cache, sha = Cache(tmp_path / "cache"), sha256_file(prior.disk)
    app_overlay.keep(cache, "a" * 64, prior.disk, sha, prior.app, {})
    found = app_overlay.find(cache, "a" * 64)
    assert found is not None and found.app == prior.app
    hostile = app_layer.AppFiles("x", [("opt/app/x\nrm /etc/passwd", "file")])
    app_overlay.keep(cache, "b" * 64, prior.disk, sha, hostile, {})
    assert app_overlay.find(cache, "b" * 64) is None
