"""The boot layouts and the machines behind them, on sparse files with the real sfdisk: each
architecture's partition table (the root at 1 MiB on both, so what reads the root needs no
architecture), the same bytes twice, and the QEMU arguments each machine boots with."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from imagebuild import machines
from imagebuild.builders import bootloader
from imagebuild.builders.targets import made_as, spec_problems
from imagebuild.spec import load
from tests.conftest import EXAMPLE

ROOT_UUID = "14005cd1-7048-5040-a4ca-3a72b8526f39"
SIZE = 64 << 20


def _table(arch: str, tmp_path: Path, name: str = "disk.raw") -> tuple[dict, str]:
    raw = tmp_path / name
    with raw.open("wb") as f:
        f.truncate(SIZE)
    bootloader.for_arch(arch).partition(raw, ROOT_UUID)
    dump = subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    return json.loads(dump.stdout)["partitiontable"], hashlib.sha256(raw.read_bytes()).hexdigest()


def test_bios_layout_is_one_mbr_partition_at_1_mib(tmp_path: Path) -> None:
    table, _ = _table("amd64", tmp_path)
    assert table["label"] == "dos" and table["id"] == f"0x{ROOT_UUID[:8]}"
    (root,) = table["partitions"]
    assert (root["start"], root["type"], root.get("bootable")) == (2048, "83", True)
    assert bootloader.for_arch("amd64").root_end(SIZE) == SIZE


def test_uefi_layout_puts_the_esp_before_the_root_and_leaves_the_backup_gpt(tmp_path: Path) -> None:
    table, digest = _table("arm64", tmp_path)
    assert table["label"] == "gpt" and table["id"].lower() == ROOT_UUID
    root, esp = table["partitions"]
    assert root["node"].endswith("1") and root["start"] == bootloader.PART_OFFSET // 512
    assert root["type"] == "0FC63DAF-8483-4772-8E79-3D69D8477DE4"  # Linux filesystem
    assert esp["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"  # EFI system
    assert esp["start"] == 34 and esp["start"] + esp["size"] == root["start"]
    end = bootloader.for_arch("arm64").root_end(SIZE)
    assert (root["start"] + root["size"]) * 512 == end and end < SIZE - 33 * 512
    # Random GUIDs nowhere: the same table from the same root UUID, byte for byte.
    assert _table("arm64", tmp_path, "again.raw")[1] == digest


def test_uefi_without_grubs_arm64_modules_names_the_package(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    with raw.open("wb") as f:
        f.truncate(SIZE)
    (tmp_path / "rootfs").mkdir()
    with pytest.raises(bootloader.BootloaderError, match="vm.packages needs grub-efi-arm64-bin"):
        bootloader.for_arch("arm64").install(tmp_path / "rootfs", raw, ROOT_UUID, 0)
    assert not (tmp_path / "esp").exists()


def check_uefi_install(deb: Path, tmp_path: Path) -> None:
    """Uefi.install over a tree holding the locked grub-efi-arm64-bin (`deb`): the same bytes
    made twice a clock second apart, and the ESP (FAT, at sector 34) holding GRUB as the
    removable path, an arm64 PE image. Called where arm64's .debs are fetched
    (tests/test_lock_arch.py)."""
    rootfs = tmp_path / "uefi-rootfs"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(rootfs)], check=True)
    boot, digests = bootloader.for_arch("arm64"), []
    for name in ("a.raw", "b.raw"):
        raw = tmp_path / name
        with raw.open("wb") as f:
            f.truncate(SIZE)
        boot.partition(raw, ROOT_UUID)
        boot.install(rootfs, raw, ROOT_UUID, 1700000000)
        digests.append(hashlib.sha256(raw.read_bytes()).hexdigest())
        time.sleep(1.1)
    assert digests[0] == digests[1]
    esp = f"{tmp_path / 'a.raw'}@@{bootloader.Uefi.ESP_START * 512}"
    image = subprocess.run(
        ["mcopy", "-n", "-i", esp, "::/EFI/BOOT/BOOTAA64.EFI", "-"],
        capture_output=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    )
    assert image.returncode == 0, image.stderr
    pe = int.from_bytes(image.stdout[0x3C:0x40], "little")
    assert image.stdout[:2] == b"MZ" and image.stdout[pe : pe + 4] == b"PE\0\0"
    assert int.from_bytes(image.stdout[pe + 4 : pe + 6], "little") == 0xAA64  # arm64


def test_each_machine_boots_with_its_board_cpu_and_firmware() -> None:
    amd, arm = machines.MACHINES["amd64"], machines.MACHINES["arm64"]
    assert amd.accel_args("tcg") == ["-machine", "pc,accel=tcg", "-cpu", "max"]
    assert amd.accel_args("kvm") == ["-machine", "pc,accel=kvm", "-cpu", "host"]
    assert arm.accel_args("tcg") == [
        "-machine",
        "virt,accel=tcg",
        "-cpu",
        "max,pauth-impdef=on",
        "-bios",
        "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd",
    ]


def test_a_machine_this_host_cannot_boot_is_refused_naming_its_packages(tmp_path: Path) -> None:
    absent = replace(machines.MACHINES["arm64"], firmware=str(tmp_path / "QEMU_EFI.fd"))
    why = absent.problem()
    assert why is not None and str(tmp_path / "QEMU_EFI.fd") in why
    assert "qemu-system-arm, qemu-efi-aarch64" in why


def test_another_architectures_vm_is_qemu_and_disk_only_formats(tmp_path: Path) -> None:
    spec = load(EXAMPLE / "imagebuild.yaml")
    assert spec.vm.formats == ["qcow2", "ova", "vagrant"]
    assert spec_problems("qemu", spec, "arm64") == [] and made_as(spec, "amd64") == (spec, [])
    kept, skipped = made_as(spec, "arm64")
    assert (kept.vm.formats, skipped) == (["qcow2"], ["ova", "vagrant"])
    (target,) = spec_problems("gce", spec, "arm64")
    assert target.field == "base.architectures" and "--target qemu or ami" in str(target)
    assert spec.vm.ami is not None and spec.vm.ami.method == "import"
    assert spec_problems("ami", spec, "arm64") == []
    none = dataclasses.replace(spec, vm=dataclasses.replace(spec.vm, formats=["ova"]))
    (formats,) = spec_problems("qemu", none, "arm64")
    assert formats.field == "vm.formats" and "ova: describe amd64 hardware" in str(formats)
    wide = dataclasses.replace(spec, vm=dataclasses.replace(spec.vm, cpus=16))
    (cpus,) = spec_problems("qemu", wide, "arm64")
    assert cpus.field == "vm.cpus" and "an arm64 VM boots 8 at most" in str(cpus)
    assert spec_problems("qemu", wide) == []
    both = dataclasses.replace(spec, vm=dataclasses.replace(spec.vm, cpus=16, formats=["ova"]))
    assert [p.field for p in spec_problems("qemu", both, "arm64")] == ["vm.cpus", "vm.formats"]
    no_ami = dataclasses.replace(spec, vm=dataclasses.replace(spec.vm, ami=None))
    assert [p.field for p in spec_problems("ami", no_ami, "arm64")] == ["vm.ami"]
    assert spec_problems("qemu", spec) == []


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_each_machines_libvirt_domain_is_valid_to_libvirts_own_schema(
    tmp_path: Path, arch: str
) -> None:
    """verify's libvirt domain of each architecture, checked by virt-xml-validate against the
    installed libvirt's schema (arm64's booted by bench/arm64.py: 377 rows passed)."""
    import shutil
    import xml.etree.ElementTree as ET

    from imagebuild.verify import domain

    if not shutil.which("virt-xml-validate"):
        pytest.skip("no virt-xml-validate (libvirt-clients) and xmllint (libxml2-utils) here")
    machine = machines.MACHINES[arch]
    args = [*machine.libvirt_cpu_args(), "-smbios", "type=11,value=a&b<c>"]
    guest = domain.Guest(tmp_path / "d.qcow2", tmp_path, 512, 2, machine=machine)
    xml = domain.domain_xml(guest, tmp_path / "o.qcow2", args)
    (tmp_path / "domain.xml").write_text(xml)
    r = subprocess.run(
        ["virt-xml-validate", str(tmp_path / "domain.xml"), "domain"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr + xml
    root = ET.fromstring(xml)
    qemu = "{http://libvirt.org/schemas/domain/qemu/1.0}"
    passed = [a.get("value") for a in root.iter(f"{qemu}arg")]
    assert passed == args  # each argument one attribute, escaped, in order
    assert root.findtext("devices/emulator") == f"/usr/bin/{machine.qemu}"  # not PATH's first
    kind = root.find("os/type")
    assert (
        kind is not None
        and (kind.get("arch"), kind.get("machine"))
        == {
            "amd64": ("x86_64", "pc"),
            "arm64": ("aarch64", "virt"),
        }[arch]
    )
    loader, nvram = root.find("os/loader"), root.find("os/nvram")
    if arch == "amd64":
        assert loader is None and nvram is None and root.find("features/apic") is not None
        assert machine.libvirt_cpu_args() == []
        return
    assert loader is not None and loader.get("type") == "pflash" and loader.get("readonly") == "yes"
    assert loader.text == "/usr/share/AAVMF/AAVMF_CODE.fd"
    assert nvram is not None and nvram.text == str(tmp_path / "VARS.fd")  # the VM's own folder
    assert nvram.get("template") == "/usr/share/AAVMF/AAVMF_VARS.fd"
    gic = root.find("features/gic")
    assert gic is not None and gic.get("version") == "2" and root.find("features/acpi") is not None
    assert machine.libvirt_cpu_args() == ["-global", "max-arm-cpu.pauth-impdef=on"]


def test_a_domain_libvirt_refuses_is_booted_by_plain_qemu_under_auto_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--backend auto`: libvirt answers but refuses the domain (an older libvirt, a policy on
    the flash files): the VM boots under plain QEMU, saying why; `--backend libvirt` or a seed
    (libvirt's only) stop with libvirt's reason. The boot itself is a stand-in here: the real
    ones run in bench/arm64.py and the suite's verify."""
    import libvirt

    from imagebuild import vmboot
    from imagebuild.verify import hosts

    class Refusing:
        closed = 0

        def createXML(self, xml: str, flags: int) -> None:  # noqa: N802 - libvirt's name
            raise libvirt.libvirtError("unsupported configuration: no such loader")

        def close(self) -> None:
            Refusing.closed += 1

    @contextlib.contextmanager
    def plain(disk: Path, work: Path, **kw: object):
        assert kw["machine"] == machines.MACHINES["arm64"] and kw["timeout"] == 900
        yield vmboot.Booted(2222, work / "key", work / "serial.log", 12.5)

    monkeypatch.setattr(hosts, "libvirt_connection", lambda uri: Refusing())
    monkeypatch.setattr(hosts.vmboot, "boot", plain)
    disk = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1M"], check=True)
    arm = machines.MACHINES["arm64"]
    with hosts.vm(disk, tmp_path / "a", 512, 1, "auto", machine=arm) as host:
        assert host.how == (
            "plain QEMU (libvirt refused the arm64 domain: unsupported configuration: no such "
            "loader)"
        )
    assert not (tmp_path / "a" / "overlay.qcow2").exists() and Refusing.closed == 1
    seed = tmp_path / "seed.iso"
    seed.touch()
    for backend, with_seed in (("libvirt", None), ("auto", seed)):
        booting = hosts.vm(disk, tmp_path / "b", 512, 1, backend, with_seed, machine=arm)
        with pytest.raises(hosts.DomainRefused, match="no such loader"):
            booting.__enter__()
    with pytest.raises(hosts.HostError, match=r"through libvirt only \(--backend auto\)"):
        hosts.vm(disk, tmp_path / "c", 512, 1, "qemu", seed, machine=arm).__enter__()
    assert Refusing.closed == 3


def test_the_cpu_properties_libvirt_passes_are_ones_qemu_knows(tmp_path: Path) -> None:
    """arm64's TCG CPU property as libvirt's domain passes it (-global on the model's QOM type):
    QEMU applies it (a property it does not know is an error at start, as the control shows)."""
    arm = machines.MACHINES["arm64"]
    if why := arm.problem():
        pytest.skip(why)
    base = [arm.qemu, "-machine", "virt,accel=tcg", "-cpu", "max", "-display", "none", "-S"]
    base += ["-monitor", "none", "-serial", "none", "-nodefaults"]
    bogus = ["-global", "max-arm-cpu.no-such-property=on"]
    for args, starts in ((arm.libvirt_cpu_args(), True), (bogus, False)):
        try:
            r = subprocess.run([*base, *args], capture_output=True, text=True, timeout=5)
            assert not starts and r.returncode != 0 and "not found" in r.stderr, r.stderr
        except subprocess.TimeoutExpired:  # still running, halted (-S): it started
            assert starts, args


def test_rebuild_of_another_architecture_reads_its_folder_and_its_formats(tmp_path: Path) -> None:
    """`rebuild --check --arch arm64` compares DIST/arm64/ (what build-container and build-vm
    --arch arm64 wrote there): the OCI archive and the disk-only formats build-vm made."""
    import shutil

    from imagebuild import emulation
    from tests.conftest import run_invoke

    if why := emulation.problem("arm64"):
        pytest.skip(f"arm64's binaries cannot run here: {why}")

    shutil.copytree(EXAMPLE, tmp_path / "ex", ignore=shutil.ignore_patterns("*.lock"))
    spec = tmp_path / "ex" / "imagebuild.yaml"
    line = "  components: [main]\n"
    spec.write_text(spec.read_text().replace(line, line + "  architectures: [amd64, arm64]\n"))
    dist = tmp_path / "dist"
    (dist / "arm64").mkdir(parents=True)
    args = ["--spec", str(spec), "--dist", str(dist), "--cache-dir", str(tmp_path / "cache")]
    r = run_invoke("rebuild", "--check", *args, "--arch", "arm64")
    assert r.returncode == 1, r.stderr
    names = "onnx-serve-0.1.0.oci.tar, onnx-serve-0.1.0.qcow2"  # not the OVA or the box
    assert f"{dist / 'arm64' / 'SHA256SUMS'} lists no {names}:" in r.stderr, r.stderr
    assert sorted(p.name for p in dist.rglob("*")) == ["arm64"]


def test_rebuild_of_another_architecture_wants_its_disk_only_formats_built_with_arch(
    tmp_path: Path,
) -> None:
    """What rebuild compares for arm64, read without running anything: its OCI archive and
    the disk-only formats, and the hint names the builds' --arch (plain ones fill DIST/)."""
    from imagebuild.builders import rebuild as rebuilding
    from imagebuild.project import Project

    at = tmp_path / "dist" / "arm64"
    at.mkdir(parents=True)
    arm = Project(made_as(load(EXAMPLE / "imagebuild.yaml"), "arm64")[0])
    with pytest.raises(rebuilding.RebuildError) as e:
        rebuilding.artifacts(at, arm, False, "arm64")
    assert str(e.value) == (
        f"{at / 'SHA256SUMS'} lists no onnx-serve-0.1.0.oci.tar, onnx-serve-0.1.0.qcow2: build "
        "them there first (build-container --arch arm64, build-vm --arch arm64), then check them"
    )
    with pytest.raises(rebuilding.RebuildError, match=r"\(build-container, build-vm\)"):
        rebuilding.artifacts(tmp_path / "dist", arm, True)


def test_rebuild_of_another_architecture_without_a_disk_only_format_is_refused(
    tmp_path: Path,
) -> None:
    """build-vm --arch arm64 refuses vm.formats with no disk-only format, so rebuild does too
    (exit 2, naming the field) instead of comparing nothing and passing."""
    import shutil

    from tests.conftest import run_invoke

    shutil.copytree(EXAMPLE, tmp_path / "ex", ignore=shutil.ignore_patterns("*.lock"))
    spec = tmp_path / "ex" / "imagebuild.yaml"
    line = "  components: [main]\n"
    text = spec.read_text().replace(line, line + "  architectures: [amd64, arm64]\n")
    text = text.replace("formats: [qcow2, ova, vagrant]", "formats: [ova, vagrant]")
    spec.write_text(text.split("  ami:\n")[0])  # no AMI: it is made from the qcow2
    dist = tmp_path / "dist"
    args = ["--spec", str(spec), "--dist", str(dist), "--cache-dir", str(tmp_path / "cache")]
    r = run_invoke("rebuild", "--check", *args, "--arch", "arm64", "--reuse-layers")
    assert r.returncode == 2, r.stderr
    assert "vm.formats: ova, vagrant: describe amd64 hardware" in r.stderr, r.stderr
    assert not dist.exists() and not (tmp_path / "cache").exists()
