"""Disk files from outside a build (a registry cache's base disk, what `verify --vm` is given)
are checked before qemu-img or QEMU read them: real qemu-img on small hostile files, each
naming a FIFO as the host file it wants read. Whoever opens a FIFO to read it waits for a
writer, so a refusal that comes back shows that nothing opened what the file names (tried:
`qemu-img info` of a VMDK descriptor whose extent is a FIFO hangs; `qemu-img convert` of a
qcow2 whose data file is one, too)."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shutil
import struct
import subprocess
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from imagebuild import diskimage
from imagebuild.builders import disk
from imagebuild.cache import Cache, sha256_file
from imagebuild.cache_entries import DISK
from imagebuild.errors import ImageBuildError
from imagebuild.registry_cache import RegistryCache
from imagebuild.verify import vmdisk
from tests.conftest import EXAMPLE, ROOT, copy_example, run_invoke, serve_registry, stamps

GB = 2  # the vm.disk_gb the disks here are checked against (the smallest a spec allows)
SECTORS = GB << 21  # 512-byte sectors


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def fifo(path: Path) -> Path:
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    return path


def qcow2(path: Path, gb: int = GB) -> Path:
    qemu_img("create", "-q", "-f", "qcow2", path, f"{gb}G")
    return path


def descriptor(target: Path) -> bytes:
    """A VMDK descriptor whose one extent is `target` (QEMU opens a descriptor only when its
    type is one of the kinds made of several files)."""
    return (
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        f'createType="monolithicFlat"\n\nRW {SECTORS} FLAT "{target}" 0\n'
    ).encode()


# Hostile disks: (folder, the host file it names) -> (the disk, its format, what is said).
def backing_file(tmp: Path, target: Path) -> tuple[Path, str, str]:
    path = tmp / "backing.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", fifo(target), path, f"{GB}G")
    return path, "qcow2", f"names a backing file ({target})"


def data_file(tmp: Path, target: Path) -> tuple[Path, str, str]:
    path = tmp / "data-file.qcow2"
    qemu_img(
        "create", "-q", "-f", "qcow2", "-o", f"data_file={target},data_file_raw=on", path, f"{GB}G"
    )
    fifo(target)
    return path, "qcow2", f"names an external data file ({target})"


def raw_as_qcow2(tmp: Path, target: Path) -> tuple[Path, str, str]:
    path = tmp / "raw.qcow2"
    with path.open("wb") as f:
        f.truncate(GB << 30)
    return path, "qcow2", r"not a qcow2 file (it begins with b'\x00\x00\x00\x00')"


def wrong_size(tmp: Path, target: Path) -> tuple[Path, str, str]:
    said = f"virtual size is {1 << 30} bytes, not the spec's vm.disk_gb: {GB} ({GB << 30} bytes)"
    return qcow2(tmp / "small.qcow2", 1), "qcow2", said


def vmdk_descriptor(tmp: Path, target: Path) -> tuple[Path, str, str]:
    path = tmp / "descriptor.vmdk"
    path.write_bytes(descriptor(fifo(target)))
    return path, "vmdk", "a VMDK descriptor (its extents are other files)"


def vmdk_embedded_descriptor(tmp: Path, target: Path) -> tuple[Path, str, str]:
    """A sparse VMDK header without a capacity: QEMU then reads the descriptor inside the file
    as a descriptor file, extents and all (vmdk.c, vmdk_open_vmdk4)."""
    path = tmp / "embedded.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicSparse", path, f"{GB}G")
    data = bytearray(path.read_bytes())
    offset, size = struct.unpack_from("<QQ", data, 28)  # the descriptor, in sectors
    struct.pack_into("<Q", data, 12, 0)
    data[offset * 512 : (offset + size) * 512] = descriptor(fifo(target)).ljust(size * 512, b"\0")
    path.write_bytes(data)
    return path, "vmdk", "a VMDK header without a capacity"


def vmdk_parent(tmp: Path, target: Path) -> tuple[Path, str, str]:
    path = tmp / "child.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicSparse", target, f"{GB}G")
    qemu_img(
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicSparse",
        "-F",
        "vmdk",
        "-b",
        target,
        path,
        f"{GB}G",
    )
    fifo(target)
    return path, "vmdk", f"names a backing file ({target})"


HOSTILE = [
    backing_file,
    data_file,
    raw_as_qcow2,
    wrong_size,
    vmdk_descriptor,
    vmdk_embedded_descriptor,
    vmdk_parent,
]


def unopened(call: Callable[[], object], target: Path) -> object:
    """What `call` returns or raises, failing the test if it opened the FIFO `target` (it would
    be waiting for a writer; one is then opened so that it finishes)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as e:  # handed to the test's thread
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():
        with contextlib.suppress(OSError):
            os.close(os.open(target, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(30)
        pytest.fail(f"{target} was opened")
    return outcome[0]


def refusal(call: Callable[[], object], target: Path) -> str:
    """The message `call` refuses with, `target` unopened."""
    error = unopened(call, target)
    assert isinstance(error, ImageBuildError), f"not refused: {error!r}"
    return str(error)


def test_a_self_contained_disk_of_the_specs_size_passes(tmp_path: Path) -> None:
    good = qcow2(tmp_path / "good.qcow2")
    stream = tmp_path / "stream.vmdk"
    qemu_img(
        "convert", "-f", "qcow2", "-O", "vmdk", "-o", "subformat=streamOptimized", good, stream
    )
    sparse = tmp_path / "sparse.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicSparse", sparse, f"{GB}G")
    assert [
        diskimage.problem(p, f, GB)
        for p, f in ((good, "qcow2"), (stream, "vmdk"), (sparse, "vmdk"))
    ] == [None] * 3
    assert diskimage.info(good)["virtual-size"] == GB << 30


@pytest.mark.parametrize("make", HOSTILE, ids=lambda f: f.__name__)
def test_a_disk_naming_another_file_or_of_another_size_is_refused_unopened(
    make: Callable[[Path, Path], tuple[Path, str, str]], tmp_path: Path
) -> None:
    target = tmp_path / "host-secret"
    path, fmt, said = make(tmp_path, target)
    message = refusal(lambda: diskimage.check(path, fmt, GB, str(path)), target)
    assert message.startswith(f"{path}: ") and said in message
    assert message.endswith("refused before qemu-img or QEMU read it")


def test_qemu_img_infos_own_account_is_checked_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind the first bytes, what `qemu-img info` says of a VMDK refuses a descriptor by
    itself (should some qemu-img take other first bytes for one): its type, and its extents
    were it to claim a one-file type. Here the extent is a plain file, which `qemu-img info`
    opens (it would wait on a FIFO)."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 512)
    path = tmp_path / "d.vmdk"
    path.write_bytes(descriptor(secret))
    said = diskimage._info_problem(path, "vmdk", GB)
    assert said == "a monolithicFlat VMDK, not streamOptimized or monolithicSparse"
    told = diskimage.info(path, "vmdk")
    told["format-specific"]["data"]["create-type"] = "monolithicSparse"
    monkeypatch.setattr(diskimage, "info", lambda *_: told)
    said = diskimage._info_problem(path, "vmdk", GB)
    assert said and re.fullmatch(rf"its extents are \['{secret}'.*\], not the file itself", said)


def _tar(path: Path, members: dict[str, Path]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, src in members.items():
            tar.add(src, name)
    return path


def test_verify_vm_refuses_a_hostile_disk_before_any_conversion(tmp_path: Path) -> None:
    """`verify --vm` takes the disk out of an OVA or a box and checks it before anything reads
    it; a qcow2 it is given, and the qcow2 beside a box or OVA, are checked the same way."""
    target, work = tmp_path / "host-secret", tmp_path / "work"
    vmdk, _, _ = vmdk_descriptor(tmp_path, target)
    ova = _tar(tmp_path / "demo-1.0.ova", {"demo-1.0-disk1.vmdk": vmdk})
    message = refusal(lambda: vmdisk.bootable(ova, work, GB), target)
    assert message.startswith(f"{ova}: demo-1.0-disk1.vmdk: a VMDK descriptor")
    assert not (work / "ova.qcow2").exists()  # nothing converted
    box = _tar(tmp_path / "demo-1.0.libvirt.box", {"box.img": vmdk})
    assert f"{box}: box.img: not a qcow2 file" in refusal(
        lambda: vmdisk.bootable(box, work, GB), target
    )
    backed, _, said = backing_file(tmp_path, target)
    box = _tar(tmp_path / "demo-1.0.libvirt.box", {"box.img": backed})
    assert said in refusal(lambda: vmdisk.bootable(box, work, GB), target)
    with_data, _, said = data_file(tmp_path, tmp_path / "data")
    artifact = shutil.copy(with_data, tmp_path / "demo-1.0.qcow2")
    assert said in refusal(lambda: vmdisk.bootable(Path(artifact), work, GB), tmp_path / "data")
    # a good OVA, and a hostile qcow2 beside it: refused before `qemu-img compare` reads it
    good = qcow2(tmp_path / "good.qcow2")
    stream = tmp_path / "stream.vmdk"
    qemu_img(
        "convert", "-f", "qcow2", "-O", "vmdk", "-o", "subformat=streamOptimized", good, stream
    )
    ova = _tar(tmp_path / "good.ova", {"good-disk1.vmdk": stream})
    got = vmdisk.bootable(ova, work, GB)
    assert got.bootable == work / "ova.qcow2"
    assert diskimage.problem(got.bootable, "qcow2", GB) is None
    vmdisk.same_as(got, good)  # the same disk: no error
    assert said in refusal(lambda: vmdisk.same_as(got, Path(artifact)), tmp_path / "data")


def test_the_verify_task_refuses_a_hostile_ova_before_anything_runs(tmp_path: Path) -> None:
    """The CLI as a user runs it: exit 1 with the file and the reason, no traceback, no
    container or VM started, nothing written to dist/."""
    spec = copy_example(tmp_path / "onnx-serve")
    shutil.copy(EXAMPLE / "imagebuild.lock", spec.with_suffix(".lock"))
    secret = tmp_path / "secret"
    secret.write_text("not for the disk\n")
    vmdk = tmp_path / "disk1.vmdk"
    vmdk.write_bytes(descriptor(secret))
    ova = _tar(tmp_path / "evil.ova", {"evil-disk1.vmdk": vmdk})
    dist = tmp_path / "dist"
    r = run_invoke("verify", "--spec", str(spec), "--dist", str(dist), "--vm", str(ova))
    assert r.returncode == 1, r.stderr[-2000:]
    assert (
        f"error: {ova}: evil-disk1.vmdk: a VMDK descriptor (its extents are other files); "
        "refused before qemu-img or QEMU read it" in r.stderr
    )
    assert "Traceback" not in r.stderr and "container up" not in r.stderr
    assert stamps(dist) == {}


def _entry(cache: Cache, key: str, qcow2_file: Path) -> None:
    """A base disk entry in `cache` as a build seals one (valid disk.json), holding `qcow2_file`."""
    with cache.building("disks", key) as tmp:
        shutil.copy(qcow2_file, tmp / "disk.qcow2")
        meta = {
            "key": key,
            "layers": [],
            "sha256": sha256_file(tmp / "disk.qcow2"),
            "kernel": "6.1.0-1-cloud-amd64",
            "root_uuid": disk._root_uuid(key),
        }
        (tmp / "disk.json").write_text(json.dumps(meta))


def test_a_registry_base_disk_naming_a_host_file_is_refused_and_built_here(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Through a real registry and the rule build-vm applies to a base disk entry
    (builders.disk._entry): the entry is refused before it is sealed, nothing of it stays in
    the cache (the build makes the disk itself); a clean one of the spec's size is taken."""
    target = tmp_path / "host-secret"
    hostile, _, said = backing_file(tmp_path, target)
    a, b = Cache(tmp_path / "a"), Cache(tmp_path / "b")
    bad, good = "ab" * 32, "cd" * 32
    _entry(a, bad, hostile)
    _entry(a, good, qcow2(tmp_path / "good.qcow2"))
    lock = SimpleNamespace(shared=[SimpleNamespace(name="linux-image-6.1.0-1-cloud-amd64")], vm=[])
    inputs = SimpleNamespace(
        spec=SimpleNamespace(vm=SimpleNamespace(disk_gb=GB)), lock=lock, cache=b
    )
    build = SimpleNamespace(inputs=inputs)
    (tmp_path / "registry").mkdir()
    with serve_registry(tmp_path / "registry") as host:
        ref = f"{host}/imagebuild-cache"
        for key in (bad, good):
            RegistryCache(None, ref).publish(a, DISK, key)
        pull = RegistryCache(ref, None)
        capfd.readouterr()
        kind, rule = disk._entry(build, bad, [])  # type: ignore[arg-type]
        assert unopened(lambda: pull.fetch(b, kind, bad, rule), target) is False
        err = capfd.readouterr().err
        assert f"{ref}:disks-{bad} refused: disk.qcow2: it {said}; building it here" in err
        assert not b.dir("disks", bad).exists()
        kind, rule = disk._entry(build, good, [])  # type: ignore[arg-type]
        assert pull.fetch(b, kind, good, rule) and (b.dir("disks", good) / "disk.qcow2").is_file()


def _qemu_calls() -> list[tuple[str, list[object]]]:
    """Every literal argument list of imagebuild/ that runs qemu-img or names a QEMU -drive,
    with its file: the strings as written, anything computed as None."""
    found = []
    for path in sorted((ROOT / "imagebuild").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.List) and node.elts:
                items = [
                    e.value
                    if isinstance(e, ast.Constant)
                    else ast.unparse(e)
                    if isinstance(e, ast.JoinedStr)
                    else None
                    for e in node.elts
                ]
                if items[0] == "qemu-img" or "-drive" in items:
                    found.append((str(path.relative_to(ROOT)), items))
    return found


def test_qemu_img_and_qemu_are_always_told_the_format() -> None:
    """Never probed: a raw disk whose first bytes look like a qcow2 header would be read as
    one (and its backing file with it)."""
    calls = _qemu_calls()
    assert len(calls) >= 9, calls  # the checker sees them
    unnamed = [
        (where, items)
        for where, items in calls
        if (items[0] == "qemu-img" and not {"-f", "--image-opts"} & set(items))
        or ("-drive" in items and "format=" not in str(items[items.index("-drive") + 1]))
    ]
    assert unnamed == []
    hcl = (ROOT / "packer" / "imagebuild.pkr.hcl").read_text()
    drives = re.findall(r'\["-drive", "([^"]*)"\]', hcl)
    assert len(drives) == 2 and all("format=" in d for d in drives)
