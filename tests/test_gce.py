"""--target gce's upload and request against a local Cloud Storage API (gcp-storage-emulator on
127.0.0.1, Google's own google-cloud-storage client): no cloud reached. The image request is
written, never sent (no Compute Engine emulator): its content is checked here."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from imagebuild.builders import gce_image
from imagebuild.cache import sha256_file
from tests.conftest import serve_gcs

SETTINGS = SimpleNamespace(project="imagebuild-demo", bucket="images", family="demo")


@pytest.fixture()
def gcs(monkeypatch: pytest.MonkeyPatch):
    with serve_gcs(SETTINGS.bucket) as env:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        yield gce_image.bucket(SETTINGS)  # type: ignore[arg-type]


def test_the_tarball_is_uploaded_once_and_never_overwritten(gcs, tmp_path: Path) -> None:
    """Uploaded (resumable, CRC32C checked), downloaded back the same bytes; uploaded again: the
    object already there is taken (same CRC32C and size), not written; another file of that name
    is refused naming both digests, and the object keeps its bytes."""
    tarball = tmp_path / "demo-1.0.gce.tar.gz"
    tarball.write_bytes(os.urandom(3 << 20) * 7)  # > one 16 MiB chunk
    first = gce_image.upload(gcs, tarball)
    assert first["how"] == "uploaded" and first["size"] == tarball.stat().st_size
    back = tmp_path / "back"
    gcs.blob(tarball.name).download_to_filename(str(back))
    assert sha256_file(back) == sha256_file(tarball)
    again = gce_image.upload(gcs, tarball)
    assert again["how"] == "already there" and again["generation"] == first["generation"]
    other = tmp_path / "other" / tarball.name
    other.parent.mkdir()
    data = bytearray(tarball.read_bytes())
    data[1000] ^= 0xFF  # the same size, one byte different
    other.write_bytes(data)
    with pytest.raises(gce_image.GcpError, match="exists and is not this build's"):
        gce_image.upload(gcs, other)
    assert gcs.get_blob(tarball.name).generation == first["generation"]


def test_a_missing_bucket_is_named_before_anything_is_built(gcs) -> None:
    missing = SimpleNamespace(project="imagebuild-demo", bucket="no-such-bucket", family="")
    with pytest.raises(gce_image.GcpError, match=r"gs://no-such-bucket not found \(vm.gce"):
        gce_image.bucket(missing)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "version", "image"),
    [("demo", "1.0.2", "demo-1-0-2"), ("wordcount-api", "0.2.0_rc1", "wordcount-api-0-2-0-rc1")],
)
def test_the_image_request_is_images_insert_of_the_uploaded_tarball(
    name: str, version: str, image: str
) -> None:
    spec = SimpleNamespace(name=name, version=version)
    lock = SimpleNamespace(digest="ab" * 32)
    req = gce_image.image_request(spec, lock, SETTINGS, f"{name}-{version}.gce.tar.gz")  # type: ignore[arg-type]
    assert req["method"] == "POST"
    assert req["url"] == (
        "https://compute.googleapis.com/compute/v1/projects/imagebuild-demo/global/images"
    )
    body = req["body"]
    assert body["name"] == image and body["family"] == "demo"
    assert body["rawDisk"] == {
        "source": f"https://storage.googleapis.com/images/{name}-{version}.gce.tar.gz",
        "containerType": "TAR",
    }
    assert body["architecture"] == "X86_64" and "ab" * 32 in body["description"]
    assert all(len(v) <= 63 for v in body["labels"].values())


def test_a_name_compute_engine_refuses_is_named() -> None:
    spec = SimpleNamespace(
        name="1demo",
        version="1.0",
        error=lambda field, msg: ValueError(f"{field}: {msg}"),
    )
    with pytest.raises(ValueError, match="name: '1demo-1-0'.*not a Compute Engine image name"):
        gce_image.image_name(spec)  # type: ignore[arg-type]


def test_the_target_needs_vm_gce_and_the_gce_format_named_at_their_lines(tmp_path: Path) -> None:
    """Checked before the cache is read or anything is built (the task exits 2)."""
    import shutil

    from imagebuild.builders.targets import spec_problems
    from imagebuild.spec import load
    from tests.conftest import ROOT

    (missing,) = spec_problems("gce", load(ROOT / "examples" / "onnx-serve" / "imagebuild.yaml"))
    assert missing.field == "vm.gce" and "needs vm.gce (bucket, project)" in str(missing)
    wordcount = tmp_path / "wordcount-api"
    shutil.copytree(ROOT / "examples" / "wordcount-api", wordcount)
    assert spec_problems("gce", load(wordcount / "imagebuild.yaml")) == []
    text = (wordcount / "imagebuild.yaml").read_text()
    (wordcount / "imagebuild.yaml").write_text(text.replace(", gce, raw]", ", raw]"))
    (no_format,) = spec_problems("gce", load(wordcount / "imagebuild.yaml"))
    assert no_format.field == "vm.formats" and "imagebuild.yaml:32:" in str(no_format)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bucket", '"images\\nx"'),
        ("bucket", '"im\'ages"'),
        ("bucket", "../images"),
        ("bucket", "/etc/passwd"),
        ("project", "x" * 5000),
        ("family", '"a b; rm -rf /"'),
        ("project", "99999999999999999999"),
    ],
)
def test_hostile_vm_gce_values_are_refused_at_their_line(
    field: str, value: str, tmp_path: Path
) -> None:
    """A newline, a quote, `..`, an absolute path, a huge value or a number in vm.gce: a spec
    error naming the field and line (they reach a URL, the request JSON and labels otherwise)."""
    import shutil

    from imagebuild.errors import SpecError
    from imagebuild.spec import load
    from tests.conftest import ROOT

    spec = tmp_path / "wordcount-api"
    shutil.copytree(ROOT / "examples" / "wordcount-api", spec)
    text = (spec / "imagebuild.yaml").read_text()
    good = "gce: {bucket: wordcount-images, project: imagebuild-demo, family: wordcount-api}"
    settings = {"bucket": "wordcount-images", "project": "imagebuild-demo"}
    settings["family"] = "wordcount-api"
    settings[field] = value
    bad = "gce: {" + ", ".join(f"{k}: {v}" for k, v in settings.items()) + "}"
    assert good in text
    (spec / "imagebuild.yaml").write_text(text.replace(good, bad))
    with pytest.raises(SpecError, match=rf"imagebuild.yaml:\d+: vm\.gce\.{field}"):
        load(spec / "imagebuild.yaml")
