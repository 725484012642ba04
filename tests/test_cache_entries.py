"""Cache entries as untrusted input (imagebuild.cache_entries), without an engine: a stage entry
made by the real layer code and the real `_store`, then local entries sealed with what an older
imagebuild or a hostile registry could have left (a layer.json without `size`, a file list of
`[]`, a path with `..`, another key, other layers below): each is said, removed and None (built
again), never a traceback. Base disk entries against a real lock and a real qcow2 (qemu-img).
The OCI manifest checks made before any download (imagebuild.registry_cache.entry_files)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from imagebuild import cache_entries, lock, registry_cache, tools
from imagebuild.builders import disk, stages
from imagebuild.builders.layers import Layer, Manifest, diff_layer
from imagebuild.cache import Cache
from imagebuild.cache_entries import DISK, STAGE
from tests.conftest import EXAMPLE

SDE = 1_700_000_000
KEY_A, KEY_B = "a" * 64, "b" * 64


def rootfs_tar(files: dict[str, bytes]) -> bytes:
    """A filesystem as `docker export` streams it: folders, files, a symlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        folders = sorted({p.rsplit("/", i)[0] for p in files for i in range(1, p.count("/") + 1)})
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("etc/link")
        link.type, link.linkname = tarfile.SYMTYPE, "motd"
        tar.addfile(link)
    return buf.getvalue()


def store_stage(
    cache: Cache, key: str, below: list[Layer], files: dict[str, bytes]
) -> tuple[Layer, Manifest]:
    """A stage entry made as a build makes one: diff_layer's layer and file list, `_store`."""

    def build(tmp: Path) -> tuple[Layer, Manifest, int | None]:
        return (*diff_layer([rootfs_tar(files)], {}, tmp / "layer.tar", SDE), None)

    layer, manifest, _ = stages._store(cache, key, below, build)
    return layer, manifest


def stage_files(**meta: object) -> dict[str, bytes]:
    """The files of a base stage entry for KEY_A, made by hand (as a registry writer can),
    `meta` overriding its layer.json's fields (None: the field left out)."""
    layer = rootfs_tar({"etc/motd": b"hello\n"})
    fields = {
        "key": KEY_A,
        "below": [],
        "diff_id": hashlib.sha256(layer).hexdigest(),
        "size": len(layer),
        "entries": 3,
        **meta,
    }
    listing = {"etc": ["5", 0o755, 0, 0, 0, 0, ""], "etc/motd": ["0", 0o644, 0, 0, 6, 0, ""]}
    return {
        "layer.tar": layer,
        "layer.json": json.dumps({k: v for k, v in fields.items() if v is not None}).encode(),
        "manifest.json": json.dumps(listing).encode(),
    }


def seal(cache: Cache, kind: str, key: str, files: dict[str, bytes]) -> None:
    """Files sealed into the local cache as they are (what the pull of an older imagebuild did)."""
    with cache.building(kind, key) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)


def test_a_stage_made_here_is_read_back_from_its_files(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    base, base_listing = store_stage(cache, KEY_A, [], {"etc/motd": b"hello\n"})
    assert set(base_listing) == {"etc", "etc/motd", "etc/link"}
    layer, listing = store_stage(cache, KEY_B, [base], {"usr/bin/tool": b"#!/bin/sh\n"})
    hit = stages.cached(cache, KEY_B, [base])
    assert hit is not None
    assert hit[0].diff_id == hashlib.sha256(layer.path.read_bytes()).hexdigest() == layer.diff_id
    assert hit[0].size == layer.path.stat().st_size
    assert hit[1] == listing
    meta = json.loads((cache.dir("stages", KEY_B) / "layer.json").read_text())
    assert (meta["key"], meta["below"]) == (KEY_B, [base.diff_id])


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"size": None}, "its layer.json: 'size' is a required property"),
        ({"size": "10240"}, "its layer.json: $.size: '10240' is not of type 'integer'"),
        ({"size": 1}, "its layer.json names size 1, its files say 10240"),
        ({"diff_id": "0" * 64}, "its layer.json names diff_id 000000000000, its files say "),
        ({"key": KEY_B}, f"its layer.json names key {KEY_B[:12]}, this build's is {KEY_A[:12]}"),
        ({"below": ["c" * 64]}, "its layer.json names below [cccccccccccc], this build's is []"),
        ({"extra": 1}, "Additional properties are not allowed ('extra' was"),
    ],
)
def test_a_local_stage_whose_layer_json_lies_is_made_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict, said: str
) -> None:
    cache = Cache(tmp_path)
    seal(cache, "stages", KEY_A, stage_files(**change))
    assert stages.cached(cache, KEY_A, []) is None
    err = capsys.readouterr().err
    assert f"cache entry stages/{KEY_A[:12]} is not a valid entry (" in err
    assert said in err and err.count("\n") == 1, err
    assert not cache.dir("stages", KEY_A).exists()  # removed: the build makes it again


@pytest.mark.parametrize(
    ("listing", "said"),
    [
        ([], "its manifest.json: [] is not of type 'object'"),
        ({"../../etc/passwd": ["0", 420, 0, 0, 1, 0, ""]}, "'../../etc/passwd' is not a relative"),
        ({"/etc/passwd": ["0", 420, 0, 0, 1, 0, ""]}, "its manifest.json: '/etc/passwd' is not a"),
        ({"etc/\x00x": ["0", 420, 0, 0, 1, 0, ""]}, "its manifest.json: 'etc/\\x00x' is not a rel"),
        ({"etc/x": [["0"], 420, 0, 0, 1, 0, ""]}, "$['etc/x'][0]: ['0'] is not one of"),
        (
            {"etc/x": ["0", 420, 0, 0, 1, 0]},
            "its manifest.json: $['etc/x']: ['0', 420, 0, 0, 1, 0]",
        ),
        ({"etc/x": ["0", 0o17777, 0, 0, 1, 0, ""]}, "8191 is greater than the maximum of 4095"),
        ({"etc/x": ["Z", 420, 0, 0, 1, 0, ""]}, "'Z' is not one of"),
    ],
)
def test_a_local_stage_whose_file_list_is_not_one_is_made_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], listing: object, said: str
) -> None:
    cache = Cache(tmp_path)
    seal(cache, "stages", KEY_A, stage_files() | {"manifest.json": json.dumps(listing).encode()})
    assert stages.cached(cache, KEY_A, []) is None
    err = capsys.readouterr().err
    assert said in err and "is not a valid entry" in err, err
    assert not cache.dir("stages", KEY_A).exists()


def test_a_stage_on_other_layers_is_made_again(tmp_path: Path) -> None:
    """The layers below are bound by content: the entry made on one base is not reused on
    another (a base made again with other bytes)."""
    cache = Cache(tmp_path)
    base, _ = store_stage(cache, KEY_A, [], {"etc/motd": b"one\n"})
    store_stage(cache, KEY_B, [base], {"usr/bin/tool": b"x"})
    other = Layer(base.path, "d" * 64, base.size, base.entries)
    assert stages.cached(cache, KEY_B, [other]) is None
    assert not cache.dir("stages", KEY_B).exists()


def test_a_file_list_is_validated_once_per_content(tmp_path: Path) -> None:
    """The schema's verdict is remembered by the file's sha256 (the seal proves the bytes): a
    reuse does not validate a large file list again, other bytes are validated."""
    cache = Cache(tmp_path)
    store_stage(cache, KEY_A, [], {"etc/motd": b"hello\n"})
    sealed = cache.seal("stages", KEY_A)
    memo = json.loads((tmp_path / "verified.json").read_text())
    assert memo[f"schema:stages/manifest.json:{sealed['manifest.json']}"] == [
        cache_entries.ENTRY_FORMAT
    ]
    folder = cache.dir("stages", KEY_A)
    (folder / "manifest.json").write_text("[]")  # not what the memo's digest names
    digests = {**sealed, "manifest.json": hashlib.sha256(b"[]").hexdigest()}
    with pytest.raises(cache_entries.Refused, match="is not of type 'object'"):
        STAGE.read(folder, digests, {}, memo)


LOCK = lock.read(EXAMPLE / "imagebuild.lock")
KERNEL = next(
    p.name.removeprefix("linux-image-")
    for p in LOCK.vm
    if p.name.startswith("linux-image-") and p.name[12].isdigit()
)


def disk_build(cache: Cache, disk_gb: int = 2) -> SimpleNamespace:
    """What disk._entry reads of a build: the spec's disk size, the lock, the cache."""
    spec = SimpleNamespace(vm=SimpleNamespace(disk_gb=disk_gb))
    return SimpleNamespace(inputs=SimpleNamespace(spec=spec, lock=LOCK, cache=cache))


def disk_files(folder: Path, **meta: object) -> dict[str, str]:
    """A base disk entry for KEY_A on one layer `f...f` in `folder` (a real 2 GiB qcow2), `meta`
    overriding its disk.json's fields; its files' sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    qcow2 = folder / "disk.qcow2"
    tools.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "2G"])
    sha = hashlib.sha256(qcow2.read_bytes()).hexdigest()
    fields = {
        "key": KEY_A,
        "layers": ["f" * 64],
        "sha256": sha,
        "kernel": KERNEL,
        "root_uuid": disk._root_uuid(KEY_A),
        **meta,
    }
    (folder / "disk.json").write_text(json.dumps(fields))
    return {
        "disk.qcow2": sha,
        "disk.json": hashlib.sha256((folder / "disk.json").read_bytes()).hexdigest(),
    }


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({}, None),
        ({"key": KEY_B}, f"its disk.json names key {KEY_B[:12]}, this build's is {KEY_A[:12]}"),
        (
            {"layers": ["e" * 64]},
            "its disk.json names layers [eeeeeeeeeeee], this build's is [ffff",
        ),
        ({"root_uuid": "00000000-0000-0000-0000-000000000000"}, "names root_uuid '00000000-"),
        ({"kernel": "6.1.0-99-cloud-amd64"}, "kernel 6.1.0-99-cloud-amd64, which no locked"),
        ({"kernel": "6.1.0\n"}, "$.kernel: '6.1.0\\n' is not a kernel release"),
        ({"sha256": "0" * 64}, "its disk.json names sha256 000000000000, its files say "),
    ],
)
def test_a_disk_entry_is_bound_to_its_key_layers_and_lock(
    tmp_path: Path, change: dict, said: str | None
) -> None:
    layers = [Layer(tmp_path / "x", "f" * 64, 0, 0)]
    digests = disk_files(tmp_path / "entry", **change)
    kind, rule = disk._entry(disk_build(Cache(tmp_path / "cache")), KEY_A, layers)  # type: ignore[arg-type]
    found = rule(tmp_path / "entry", digests)
    assert found == said if said is None else said in (found or ""), found
    assert kind.caps["disk.qcow2"] < 3 << 30  # the spec's 2 GiB and its tables, not 2 TiB


def oci(*layers: dict) -> dict:
    return {"schemaVersion": 2, "layers": list(layers)}


def blob(name: str, size: int | None = 10, digest: str = "sha256:" + "ab" * 32) -> dict:
    out: dict = {"digest": digest, "annotations": {"org.opencontainers.image.title": name}}
    return out if size is None else out | {"size": size}


STAGE_BLOBS = [blob("layer.tar"), blob("layer.json"), blob("manifest.json")]


@pytest.mark.parametrize(
    ("manifest", "said"),
    [
        ([], "its manifest: [] is not of type 'object'"),
        ({}, "its manifest: 'layers' is a required property"),
        (oci(blob("layer.tar", None), *STAGE_BLOBS[1:]), "$.layers[0]: 'size' is a required"),
        (oci(blob("layer.tar", -1), *STAGE_BLOBS[1:]), "-1 is less than the minimum of 0"),
        (oci(*STAGE_BLOBS[:2]), "holds ['layer.json', 'layer.tar'], a stages entry holds"),
        (oci(*STAGE_BLOBS, blob("extra")), "holds ['extra', 'layer.json', 'layer.tar', 'manif"),
        (oci(*STAGE_BLOBS[:2], blob("layer.json")), "holds ['layer.json', 'layer.json', 'layer.t"),
        (oci(*STAGE_BLOBS[:2], blob("../manifest.json")), "holds ['../manifest.json', 'layer"),
        (
            oci(*STAGE_BLOBS[:2], blob("manifest.json", digest="md5:0")),
            "digest: 'md5:0' is not sha",
        ),
        (oci(*STAGE_BLOBS[:2], blob("manifest.json", 1 << 40)), "announces manifest.json of 1099"),
    ],
)
def test_an_artifact_is_refused_before_any_download(manifest: object, said: str) -> None:
    with pytest.raises(registry_cache.Refused) as e:
        registry_cache.entry_files(manifest, STAGE)
    assert said in str(e.value), str(e.value)


def test_an_artifact_of_the_kinds_files_names_their_digests_and_sizes() -> None:
    files = registry_cache.entry_files(oci(*STAGE_BLOBS), STAGE)
    assert files == {n: ("ab" * 32, 10) for n in ("layer.tar", "layer.json", "manifest.json")}
    assert DISK.capped("disk.qcow2", 5).caps == {"disk.qcow2": 5, "disk.json": 64 << 10}


def test_legal_odd_names_pass_and_hostile_shapes_are_refused_not_raised(tmp_path: Path) -> None:
    """A tab or a CR in a file name is legal (an app may hold one): the list passes. JSON nested
    past Python's stack, or a row whose type is not a string, is a refusal, never a traceback."""
    row = ["0", 420, 0, 0, 1, 0, ""]
    assert cache_entries.file_list_problem({"opt/app/Icon\r": row, "opt/a\tb": row}) is None
    cache = Cache(tmp_path)
    deep = b"[" * 20000 + b"]" * 20000
    seal(cache, "stages", KEY_A, stage_files() | {"manifest.json": deep})
    assert stages.cached(cache, KEY_A, []) is None
