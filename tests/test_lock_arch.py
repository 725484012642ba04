"""Another architecture in the lock (spec `base.architectures`): its sections' text form, the
checks a hand-edited or hostile lock meets, and, against the real mirror and PyPI, an arm64
section resolved, fetched, exported and imported beside amd64's."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from packaging.utils import parse_wheel_filename

from imagebuild import fetch as fetching
from imagebuild import keys as keying
from imagebuild import requested
from imagebuild import spec as specmod
from imagebuild.cache import Cache
from imagebuild.errors import SpecError, StaleLockError
from imagebuild.lock import python as pylock
from imagebuild.lock import schema
from imagebuild.lock.lockfile import ArchSection, DebPackage, Lock, Wheel, moves, read, render
from imagebuild.resolved import resolve
from imagebuild.spec_sections import DEFAULT_VM_PACKAGES
from tests.conftest import EXAMPLE, copy_example, run_invoke
from tests.test_bootloader import check_uefi_install


def arm64_of(rows: list[DebPackage]) -> list[DebPackage]:
    """The rows as an arm64 section would hold them (same names, arm64 files)."""
    names = requested.FOREIGN_NAMES["arm64"]
    return [
        dataclasses.replace(
            p,
            name=names.get(p.name, p.name),
            arch="arm64" if p.arch == "amd64" else p.arch,
            filename=p.filename.replace("_amd64.deb", "_arm64.deb"),
            sha256=p.sha256 if p.arch == "all" else p.sha256[::-1],
        )
        for p in rows
    ]


def arm64_wheels(rows: list[Wheel]) -> list[Wheel]:
    """Pure wheels as they are, the others as their aarch64 builds would be named."""
    return [
        w
        if w.filename.endswith("-any.whl")
        else dataclasses.replace(
            w,
            filename=w.filename.replace("x86_64", "aarch64"),
            url=w.url.replace("x86_64", "aarch64"),
            sha256=w.sha256[::-1],
        )
        for w in rows
    ]


def two_arch_lock(tmp_path: Path) -> Lock:
    lk = read(EXAMPLE / "imagebuild.lock")
    inputs = json.loads(json.dumps(lk.inputs))
    inputs["base"]["architectures"] = ["amd64", "arm64"]
    arm = ArchSection(arm64_of(lk.shared), arm64_of(lk.vm), arm64_wheels(lk.python))
    return dataclasses.replace(lk, inputs=inputs, foreign={"arm64": arm}, path=tmp_path / "x.lock")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "x.lock"
    path.write_text(text)
    return path


def test_an_arm64_section_round_trips_and_each_file_is_listed_once(tmp_path: Path) -> None:
    lk = two_arch_lock(tmp_path)
    text = render(lk)
    keys = [ln.split('"')[1] for ln in text.splitlines() if ln.startswith('  "')]
    assert keys[-3:] == ["os_shared.arm64", "os_vm_only.arm64", "python.arm64"]
    again = read(write(tmp_path, text))
    assert again == lk and render(again) == text
    # `all` packages and pure wheels are in both architectures' sections: fetched once.
    shas = [f.sha256 for f in again.files]
    assert len(shas) == len(set(shas))
    assert set(shas) == {r.sha256 for _, _, rows in again.sections() for r in rows}
    assert len(shas) > len(lk.shared) + len(lk.vm) + len(lk.python)
    # One architecture: the text is what it was (every committed lock reads back byte for byte).
    for committed in EXAMPLE.parent.glob("*/imagebuild.lock"):
        assert render(read(committed)) == committed.read_text()


def test_a_build_of_arm64_reads_a_view_of_its_section(tmp_path: Path) -> None:
    """`Lock.for_arch`: the arm64 rows as shared/vm/python (what its repo, keys and build read),
    while the digest, the rendering and the rows' lines stay the file's."""
    lk = read(write(tmp_path, render(two_arch_lock(tmp_path))))
    arm = lk.for_arch("arm64")
    sec = lk.foreign["arm64"]
    assert (arm.arch, arm.shared, arm.vm, arm.python) == ("arm64", sec.shared, sec.vm, sec.python)
    assert lk.for_arch("amd64") is lk and lk.arch == "amd64"
    assert arm.for_arch("amd64") is lk and arm.for_arch("arm64") == arm  # a view's, the file's
    assert arm.digest == lk.digest and render(arm) == render(lk)
    assert arm.section("amd64") == lk.section("amd64") and arm.section("arm64") == sec
    assert arm.section_digest("shared") != lk.section_digest("shared")
    own = next(p for p in arm.shared if p.arch == "arm64")
    where = arm.row(own)
    line = int(where.split(":")[1])
    assert where.endswith(f"os_shared.arm64[{arm.shared.index(own)}]")
    assert f'"sha256":"{own.sha256}"' in lk.path.read_text().splitlines()[line - 1]
    with pytest.raises(KeyError):
        lk.for_arch("riscv64")
    # No stage of arm64 shares a key with amd64's (its layers are other bytes), even were every
    # input of a stage the same in both sections (the architecture is part of each key).
    req = requested.of(specmod.load(EXAMPLE / "imagebuild.yaml"))
    host, other = (keying.compute(resolve(req, v)).stages for v in (lk, arm))
    assert host == keying.compute(resolve(req, read(EXAMPLE / "imagebuild.lock"))).stages
    assert not set(host.values()) & set(other.values())
    same_base = dataclasses.replace(arm, shared=lk.shared)  # the base's own input made equal
    assert keying.compute(resolve(req, same_base)).stages["base"] != host["base"]


def test_an_architecture_repo_index_names_its_architecture(tmp_path: Path) -> None:
    from imagebuild.fetch import _release

    packages = tmp_path / "Packages"
    packages.write_text("Package: x\n")
    text = _release("bookworm", "arm64", packages, 0)
    assert "Architectures: arm64\n" in text and " main/binary-arm64/Packages\n" in text


def test_moves_name_the_architecture_section(tmp_path: Path) -> None:
    lk = two_arch_lock(tmp_path)
    sec = lk.foreign["arm64"]
    kernel = next(i for i, p in enumerate(sec.vm) if p.name == "linux-image-cloud-arm64")
    vm = list(sec.vm)
    vm[kernel] = dataclasses.replace(vm[kernel], version="9.9")
    moved = dataclasses.replace(lk, foreign={"arm64": dataclasses.replace(sec, vm=vm)})
    said = moves(lk, moved)
    assert said[0] == "os_vm_only.arm64:" and "linux-image-cloud-arm64" in said[1]
    assert said[1].endswith("-> 9.9")
    dropped = moves(lk, dataclasses.replace(lk, foreign={}))  # arm64 taken out of the spec
    assert "os_shared.arm64:" in dropped and any(ln.startswith("  - ") for ln in dropped)


def binary(rows: list[dict]) -> int:
    return next(i for i, r in enumerate(rows) if not r["filename"].endswith("-any.whl"))


def x86_wheel_in_arm64(d: dict) -> None:
    d["python.arm64"][binary(d["python.arm64"])] = d["python"][binary(d["python"])]


def same_sha_other_file(d: dict) -> None:
    d["python.arm64"][binary(d["python.arm64"])]["sha256"] = d["python"][binary(d["python"])][
        "sha256"
    ]


def amd64_deb_in_arm64(d: dict) -> None:
    d["os_vm_only.arm64"][2]["filename"] = d["os_vm_only"][2]["filename"]


# (id, edit of the lock's data, (section, row) where the problem is reported, message)
TAMPERED: list[tuple[str, Callable[[dict], object], tuple[str, int | str | None] | None, str]] = [
    (
        "deb-arch-field",
        lambda d: d["os_shared.arm64"][3].update(arch="amd64"),
        ("os_shared.arm64", 3),
        "os_shared.arm64[3].arch: not arm64 or all",
    ),
    ("deb-amd64-file", amd64_deb_in_arm64, ("os_vm_only.arm64", 2), "not a arm64 .deb"),
    (
        "x86-wheel",
        x86_wheel_in_arm64,
        ("python.arm64", "binary"),
        "not a wheel for arm64 (aarch64)",
    ),
    (
        "same-sha-other-file",
        same_sha_other_file,
        ("python.arm64", "binary"),
        "another file or size",
    ),
    (
        "unknown-section",
        lambda d: d.update({"python.riscv64": []}),
        ("python.riscv64", None),
        "python.riscv64: not a section of this lock",
    ),
    ("missing-section", lambda d: d.pop("python.arm64"), None, "python.arm64: missing"),
    (
        "section-not-list",
        lambda d: d.update({"python.arm64": "x"}),
        ("python.arm64", None),
        "python.arm64: not a list of rows",
    ),
    (
        "twice",
        lambda d: d["os_vm_only.arm64"].append(d["os_shared.arm64"][0]),
        ("os_vm_only.arm64", "last"),
        "is also os_shared.arm64[0]",
    ),
    (
        "arch-not-a-string",
        lambda d: d["inputs"]["base"].update(architectures=["amd64", ["arm64"]]),
        ("inputs", None),
        "inputs.base.architectures: ['amd64', ['arm64']] is not amd64 then others",
    ),
    (
        "host-not-first",
        lambda d: d["inputs"]["base"].update(architectures=["arm64", "amd64"]),
        ("inputs", None),
        "inputs.base.architectures: ['arm64', 'amd64'] is not amd64 then others",
    ),
]


def text_of(data: dict) -> str:
    """`data` written one row per line, as `render` writes a lock (so lines mean something)."""
    lines = ["{"]
    for k, v in data.items():
        if isinstance(v, list) and v:
            rows = ",\n".join("    " + json.dumps(r, sort_keys=True) for r in v)
            lines.append(f'  "{k}": [\n{rows}\n  ],')
        else:
            lines.append(f'  "{k}": {json.dumps(v, sort_keys=True)},')
    lines[-1] = lines[-1].rstrip(",")
    return "\n".join([*lines, "}"]) + "\n"


@pytest.mark.parametrize(
    ("edit", "at", "message"), [t[1:] for t in TAMPERED], ids=[t[0] for t in TAMPERED]
)
def test_a_tampered_architecture_section_is_refused_at_its_line(
    tmp_path: Path,
    edit: Callable[[dict], object],
    at: tuple[str, int | str | None] | None,
    message: str,
) -> None:
    data = json.loads(render(two_arch_lock(tmp_path)))
    edit(data)
    text = text_of(data)
    path = write(tmp_path, text)
    with pytest.raises(StaleLockError) as e:
        read(path)
    said = str(e.value)
    assert message in said
    if at is not None:
        section, row = at
        # the first binary wheel (where the edits above put one), the row appended
        index = row
        if row == "binary":
            index = binary(data[section])
        elif row == "last":
            index = len(data[section]) - 1
        assert isinstance(index, int | None)
        assert f"{path}:{schema.line(text, section, index)}: " in said, said


def test_the_vm_packages_stand_for_the_architecture_own(tmp_path: Path) -> None:
    spec = copy_example(tmp_path / "p")
    req = requested.of(specmod.load(spec))
    arm = req.vm_for("arm64")
    assert "linux-image-cloud-arm64" in arm and "grub-efi-arm64-bin" in arm
    assert not {"linux-image-cloud-amd64", "grub-pc-bin"} & set(arm)
    assert req.vm_for("amd64") == req.vm
    # A package the arm64 section cannot have is blamed on the spec line asking for it.
    err = req.package_error("grub-efi-arm64-bin", "gone", "arm64")
    grub = DEFAULT_VM_PACKAGES.index("grub-pc-bin")
    assert isinstance(err, SpecError) and f"vm.packages[{grub}]: 'grub-pc-bin'" in str(err)
    # `lock --update` of one architecture's kernel moves the other's too.
    both = {"linux-image-cloud-amd64", "linux-image-cloud-arm64"}
    for name in both:
        assert requested.same_package({name, "numpy"}, "arm64") == both | {"numpy"}


def test_wheel_tags_per_architecture(tmp_path: Path) -> None:
    spec = specmod.load(copy_example(tmp_path / "p"))
    amd, arm = pylock.target_tags(spec, "amd64"), pylock.target_tags(spec, "arm64")
    assert pylock.platform_tag(spec) == "manylinux_2_36_x86_64"
    assert pylock.platform_tag(spec, "arm64") == "manylinux_2_36_aarch64"
    assert {t.platform for t in amd} - {"any"} == {
        *(f"manylinux_2_{m}_x86_64" for m in range(36, 4, -1)),
        "manylinux2014_x86_64",
        "manylinux2010_x86_64",
        "manylinux1_x86_64",
    }
    assert all(t.platform == "any" or t.platform.endswith("_aarch64") for t in arm)
    assert "manylinux2014_aarch64" in {t.platform for t in arm}


def arch_spec(tmp_path: Path, requirements: str | None = None) -> Path:
    spec = copy_example(tmp_path / "p")
    text = spec.read_text().replace(
        "  components: [main]\n", "  components: [main]\n  architectures: [amd64, arm64]\n"
    )
    spec.write_text(text)
    if requirements is not None:
        (spec.parent / "requirements.in").write_text(requirements)
    return spec


@pytest.mark.network
def test_arm64_is_locked_fetched_exported_and_imported(tmp_path: Path, cache_dir: Path) -> None:
    spec = arch_spec(tmp_path)
    r = run_invoke("lock", "--spec", str(spec), "--cache-dir", str(cache_dir))
    assert r.returncode == 0, r.stderr
    assert "lock: OS packages (arm64)" in r.stderr and "lock: Python (arm64)" in r.stderr
    lk = read(spec.with_suffix(".lock"))
    arm = lk.foreign["arm64"]
    assert {p.arch for p in arm.shared + arm.vm} == {"arm64", "all"}
    assert {p.arch for p in lk.shared + lk.vm} == {"amd64", "all"}
    assert {"linux-image-cloud-arm64", "grub-efi-arm64-bin"} <= {p.name for p in arm.vm}
    assert {p.name for p in arm.shared} == {p.name for p in lk.shared}
    assert {w.name for w in arm.python} == {w.name for w in lk.python}
    for w in arm.python:  # each wheel runs on arm64: aarch64 or pure
        platforms = {t.platform for t in parse_wheel_filename(w.filename)[3]}
        assert platforms == {"any"} or all(p.endswith("aarch64") for p in platforms), w
    pure = {w.sha256 for w in lk.python if w.filename.endswith("-none-any.whl")}
    assert pure and pure <= {w.sha256 for w in arm.python}
    r = run_invoke("lock", "--check", "--spec", str(spec))
    assert r.returncode == 0 and "; arm64: " in r.stdout, r.stderr
    first = spec.with_suffix(".lock").read_bytes()
    r = run_invoke("lock", "--spec", str(spec), "--cache-dir", str(cache_dir))
    assert "lock: unchanged" in r.stderr and spec.with_suffix(".lock").read_bytes() == first

    archive = tmp_path / "blobs.tar"
    r = run_invoke(
        "fetch", "--spec", str(spec), "--cache-dir", str(cache_dir), "--export", str(archive)
    )
    assert r.returncode == 0, r.stderr
    with tarfile.open(archive) as tar:
        held = {Path(m.name).name for m in tar.getmembers() if m.isfile()}
    assert held == {f.sha256 for f in lk.files}
    assert {p.sha256 for p in arm.shared + arm.vm + arm.python} <= held
    # arm64's own apt repo and wheelhouse, which its build installs from (Lock.for_arch).
    repo, vm_repo, wheels = fetching.source_dirs(Cache(cache_dir), lk.for_arch("arm64"))
    for at, rows in ((repo, arm.shared), (vm_repo, arm.shared + arm.vm)):
        index = (at / "dists/bookworm/main/binary-arm64/Packages").read_text()
        listed = {ln.split(": ")[1] for ln in index.splitlines() if ln.startswith("SHA256: ")}
        assert listed == {p.sha256 for p in rows}
    assert {f.name for f in wheels.glob("*.whl")} == {w.filename for w in arm.python}
    # arm64's disk boots UEFI from the locked GRUB: its ESP made from that .deb (bootloader.py).
    check_uefi_install(next(vm_repo.glob("pool/grub-efi-arm64-bin_*.deb")), tmp_path)
    fresh = tmp_path / "fresh-cache"
    r = run_invoke(
        "fetch", "--spec", str(spec), "--cache-dir", str(fresh), "--import", str(archive)
    )
    archive.unlink()
    assert r.returncode == 0, r.stderr
    assert "fetched 0" in r.stdout, r.stdout
    shutil.rmtree(fresh)
    # Taking arm64 out of the spec makes the lock stale, naming the field.
    spec.write_text(spec.read_text().replace("  architectures: [amd64, arm64]\n", ""))
    r = run_invoke("lock", "--check", "--spec", str(spec))
    assert r.returncode == 3 and "base.architectures: removed" in r.stderr, r.stderr


@pytest.mark.network
def test_a_wheel_without_an_arm64_build_is_named(tmp_path: Path, cache_dir: Path) -> None:
    spec = arch_spec(tmp_path, "numpy\nintel-openmp\n")  # Intel's OpenMP: x86 wheels only
    r = run_invoke("lock", "--spec", str(spec), "--cache-dir", str(cache_dir))
    assert r.returncode != 0 and "lock: Python (arm64)" in r.stderr
    assert "requirements.in:2" in r.stderr and "intel-openmp" in r.stderr, r.stderr
    assert "aarch64" in r.stderr
    assert not spec.with_suffix(".lock").exists()  # nothing half-written
