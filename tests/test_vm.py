"""build-vm for real: Packer + QEMU (TCG here) + Ansible, then the artifacts are checked by tools
nobody here wrote (plain qemu-system-x86_64 + ssh, qemu-img, debugfs, vagrant). Expected values
come from the spec and the lock."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import docker
import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from securesystemslib.dsse import Envelope

from imagebuild import checksums, leftovers, provenance, seed, signing
from imagebuild import spec as specmod
from imagebuild.builders import ami
from imagebuild.builders.formats import filename
from imagebuild.cache import sha256_file
from imagebuild.inventory import package_entries
from imagebuild.project import Project
from imagebuild.verify import hosts
from imagebuild.vmboot import (
    Booted,
    debugfs_cat,
    free_port,
    image_info,
    make_key,
    partition_image,
)
from tests.conftest import ROOT, AppChanged, build_vm, changed, run_invoke, stamps, tree

pytestmark = [pytest.mark.network, pytest.mark.engine, pytest.mark.vm]


def _stem(spec: specmod.Spec) -> str:
    return f"{spec.name}-{spec.version}"


CLOUD_USER = "clouduser"


@pytest.fixture(scope="class")
def clone(vm_built, tmp_path_factory: pytest.TempPathFactory):
    """The qcow2 booted once as a libvirt or OpenStack user boots it: under libvirt, with a
    NoCloud seed made by cloud-localds carrying a user, key and hostname made here; returned
    once cloud-init is done, as (root over imagebuild's login credential, the seed's user). One
    boot for every test that needs a running VM (each boot is ~25 s under TCG)."""
    spec, dist, _ = vm_built
    tmp = tmp_path_factory.mktemp("clone")
    key = make_key(tmp / "key")
    iso = seed.nocloud(
        tmp / "seed.iso",
        instance_id="iid-clone-1",
        hostname="clone-1",
        cloud_config={"users": [seed.user(CLOUD_USER, Path(f"{key}.pub").read_text())]},
    )
    work = tmp / "vm"
    disk = dist / f"{_stem(spec)}.qcow2"
    with hosts.vm(disk, work, spec.vm.memory_mb, spec.vm.cpus, "libvirt", iso) as host:
        url = urlsplit(host.url)
        assert url.port is not None
        serial = work / "serial.log"
        root_key = Path(parse_qs(url.query)["ssh_identity_file"][0])
        user = Booted(url.port, key, serial, 0.0, user=CLOUD_USER)
        # cloud-init replaces the host keys and restarts sshd: nothing logs in before it is done
        r = user.ssh("cloud-init status --wait | tail -1", timeout=600)
        assert r.returncode == 0, r.stderr + serial.read_text()[-3000:]
        yield Booted(url.port, root_key, serial, 0.0), user, r.stdout.split()


@pytest.fixture(scope="class")
def booted(clone) -> Booted:
    return clone[0]


class TestOneClone:
    """The tests that need the VM running share one boot (`clone`), shut down after them."""

    def test_vm_boots_and_runs_the_entrypoint_service(self, booted: Booted, vm_built) -> None:
        spec, _, _ = vm_built
        assert booted.ssh("systemctl is-active " + spec.service_name).stdout.strip() == "active"
        unit = booted.ssh(f"systemctl show -p User -p ExecStart {spec.service_name}").stdout
        assert f"User={spec.user}" in unit and "/usr/local/bin/imagebuild-entrypoint" in unit
        out = booted.ssh(
            f"runuser -u {spec.user} -- /usr/local/bin/imagebuild-entrypoint --version"
        )
        assert out.stdout.strip() == f"{spec.name} {spec.version}"
        env = booted.ssh(f"systemctl show -p Environment {spec.service_name}").stdout
        for k, v in spec.runtime_env.items():
            assert f"{k}={v}" in env

    def test_the_guest_reaches_nothing_but_its_forwarded_port(self, booted: Booted) -> None:
        """QEMU user networking with restrict=on: a port listening on the host's loopback (what
        the guest's 10.0.2.2 would reach) stays out of reach; only the SSH forward works."""
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            port = server.getsockname()[1]
            probe = (
                f"timeout 10 bash -c '</dev/tcp/10.0.2.2/{port}' && echo reached || echo blocked"
            )
            assert booted.ssh(probe).stdout.strip() == "blocked"

    def test_container_and_vm_entrypoints_agree(self, vm_built, booted: Booted) -> None:
        spec, _, _ = vm_built
        cfg = docker.from_env().api.inspect_image(f"{spec.repository}:{spec.version}")["Config"]
        wrapper = booted.ssh("cat /usr/local/bin/imagebuild-entrypoint").stdout
        assert "exec " + " ".join(cfg["Entrypoint"]) in wrapper.replace("'", "")
        assert " ".join(cfg["Cmd"]) in wrapper.replace("'", "")

    def test_nocloud_seed_logs_in_its_user_on_a_clone(self, clone, vm_built) -> None:
        """cloud-init creates the seed's user, SSH as that user works, the service runs, and
        the seed's instance is the only one: the shipped image holds none of its own (Packer's
        boot left none), so every clone is a first boot. (A second clone booted a second overlay
        of the same bytes: nothing more to see; the disk's own /var/lib/cloud is also a hygiene
        row of verify.)"""
        spec, _, _ = vm_built
        _, as_user, status = clone
        assert status == ["status:", "done"]
        probe = "id -un; hostname; ls /var/lib/cloud/instances; sudo -n systemctl is-active "
        r = as_user.ssh(probe + spec.service_name)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [CLOUD_USER, "clone-1", "iid-clone-1", "active"]


def test_outputs_and_progress(vm_built) -> None:
    spec, dist, r = vm_built
    stem = _stem(spec)
    expected = {filename(f, spec) for f in spec.vm.formats} | {
        f"{stem}.vm.packages.txt",
        f"{stem}.vm.sbom.cdx.json",
        f"{stem}.packer-manifest.json",
        f"{stem}.vm.json",
    }
    assert expected <= tree(dist)
    assert not [p for p in tree(dist) if p.startswith(".")], "staging left in dist"
    for stage in ("base disk", "accelerator", "packer validate", "packer build", "outputs"):
        assert f"build-vm: {stage}" in r.stderr
    assert "accelerator tcg" in r.stderr or "accelerator kvm" in r.stderr
    info = image_info(dist / f"{stem}.qcow2")
    assert info["format"] == "qcow2" and info["virtual-size"] == spec.vm.disk_gb << 30
    manifest = json.loads((dist / f"{stem}.packer-manifest.json").read_text())
    assert manifest["builds"][-1]["builder_type"] == "qemu"


def test_shared_packages_equal_the_containers(vm_built, locked_example: Path) -> None:
    """The manifest written from inside the VM equals the container's on every package of the
    lock's shared section and every locked Python distribution; VM-only ones all present."""
    spec, dist, r = vm_built
    lock = Project(spec).lock
    vm = package_entries((dist / f"{_stem(spec)}.vm.packages.txt").read_text())
    ct = package_entries((dist / f"{_stem(spec)}.container.packages.txt").read_text())
    shared = [f"deb {p.name}" for p in lock.shared] + [f"python {w.name}" for w in lock.python]
    assert shared and all(vm[k] == ct[k] for k in shared)
    for p in lock.vm:
        assert vm[f"deb {p.name}"] == f"{p.version}={p.sha256}"
    assert not [k for k, v in vm.items() if v.endswith("=unlocked")], "package not in the lock"
    assert "parity shared_differ: []" in r.stdout
    assert "parity shared_roles_changed: []" in r.stdout  # Packer's pass found them converged


def test_the_sbom_is_valid_cyclonedx_naming_the_disks_it_describes(vm_built) -> None:
    spec, dist, _ = vm_built
    text = (dist / f"{_stem(spec)}.vm.sbom.cdx.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    sbom, sums = json.loads(text), checksums.read(dist)
    root = sbom["metadata"]["component"]
    assert root["type"] == "operating-system"
    qcow2 = sums[filename("qcow2", spec)]
    assert root["hashes"] == [{"alg": "SHA-256", "content": qcow2}]
    files = {p["name"].removeprefix("imagebuild:file:"): p["value"] for p in root["properties"]}
    assert files == {filename(f, spec): sums[filename(f, spec)] for f in spec.vm.formats}
    lines = (dist / f"{_stem(spec)}.vm.packages.txt").read_text().splitlines()
    assert len(sbom["components"]) == len(lines)
    # the provenance (unsigned: no key given) names the same files and the base disk
    stmt = provenance.read_statement(dist / f"{_stem(spec)}.vm.intoto.jsonl")
    assert {s["name"]: s["digest"]["sha256"] for s in stmt["subject"]} == files
    record = json.loads((dist / f"{_stem(spec)}.vm.json").read_text())
    deps = stmt["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert deps[0] == {"name": "base disk", "digest": {"sha256": record["base_disk"]["sha256"]}}
    assert {p.basename for p in Project(spec).lock.vm} <= {d["name"] for d in deps}  # VM-only too
    assert json.loads((dist / f"{_stem(spec)}.vm.intoto.jsonl").read_text())["signatures"] == []


def test_image_has_no_build_traces(vm_built, tmp_path: Path) -> None:
    """Read the disk image itself (never booted) with debugfs: no key, no machine-id, no
    sources, no host keys."""
    spec, dist, _ = vm_built
    part = partition_image(dist / f"{_stem(spec)}.qcow2", tmp_path)
    assert debugfs_cat(part, "/etc/machine-id") == b""
    ls = subprocess.run(
        ["debugfs", "-R", "ls -l /etc/ssh", str(part)], capture_output=True, text=True, check=True
    ).stdout
    assert "ssh_host_" not in ls
    for path in (
        "/root/.ssh/authorized_keys",
        "/var/lib/imagebuild",
        "/root/.ansible",
        "/var/lib/systemd/random-seed",
        "/root/.bash_history",
    ):
        r = subprocess.run(
            ["debugfs", "-R", f"stat {path}", str(part)], capture_output=True, text=True
        )
        assert "File not found" in r.stderr, path
    # Nor in the free blocks: vm_finalize deleted them and trimmed, so their bytes are gone from
    # the image file too (a lease, a journal file's header, an SSH public key: no file of the
    # image holds any of them).
    assert traces(part) == {}


TRACES = {  # name: (pattern, whether it counts only at the start of a 4 KiB block)
    "DHCP lease": (rb"fixed-address 10\.0\.\d+\.\d+;", False),
    # a journal file's first bytes (systemd's binaries hold the string too, never block-aligned)
    "journal file": (rb"LPKSHHRH", True),
    "SSH public key": (rb"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI[A-Za-z0-9+/]{43}", False),
}


def traces(image: Path) -> dict[str, set[int]]:
    """The offsets where each of TRACES occurs in the data of `image` (a filesystem image),
    by name; only names that occur. Read as the AMI upload reads a disk (ami.data_blocks: holes
    and zero blocks skipped), with each block's tail carried into the next one it adjoins, so a
    trace across two blocks is found too."""
    found: dict[str, set[int]] = {}
    tail, last = b"", -2
    for index, data in ami.data_blocks(image):
        carried = tail if index == last + 1 else b""
        start = index * ami.BLOCK - len(carried)
        for name, (pattern, aligned) in TRACES.items():
            for m in re.finditer(pattern, carried + data):
                at = start + m.start()
                if m.end() > len(carried) and (not aligned or at % 4096 == 0):
                    found.setdefault(name, set()).add(at)
        tail, last = data[-128:], index
    return found


def test_ova_is_readable_by_qemu_img_and_well_formed(vm_built, tmp_path: Path) -> None:
    spec, dist, _ = vm_built
    ova = dist / filename("ova", spec)
    with tarfile.open(ova) as t:
        names = t.getnames()
        assert names[0].endswith(".ovf") and t.getmember(names[0]).isfile()
        t.extractall(tmp_path)  # our own archive; Python 3.11.2 has no extraction filter yet
    with ova.open("rb") as f:
        assert f.read(512)[257:265] == b"ustar\x0000"  # POSIX ustar header, as OVF requires
    ovf = ET.parse(tmp_path / names[0]).getroot()
    ns = {"o": "http://schemas.dmtf.org/ovf/envelope/1"}
    refs = ovf.findall("o:References/o:File", ns)
    for ref in refs:
        f = tmp_path / ref.get(f"{{{ns['o']}}}href")
        assert f.stat().st_size == int(ref.get(f"{{{ns['o']}}}size"))
    mf = (tmp_path / next(n for n in names if n.endswith(".mf"))).read_text().splitlines()
    for line in mf:
        name, digest = line.removeprefix("SHA256(").split(")= ")
        assert sha256_file(tmp_path / name) == digest
    vmdk = next(tmp_path / n for n in names if n.endswith(".vmdk"))
    info = image_info(vmdk, "vmdk")
    assert info["format"] == "vmdk" and info["virtual-size"] == spec.vm.disk_gb << 30
    capacity = ovf.find("o:DiskSection/o:Disk", ns).get(f"{{{ns['o']}}}capacity")
    assert int(capacity) == info["virtual-size"]


def test_virt_v2v_reads_the_ova_as_the_spec_asked(vm_built) -> None:
    """A third-party importer (virt-v2v, libguestfs) reads the OVA: name, CPUs, memory, firmware,
    one disk and one NIC, as the spec asked."""
    spec, dist, _ = vm_built
    r = subprocess.run(
        ["virt-v2v", "--print-source", "-i", "ova", str(dist / filename("ova", spec))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    fields = dict(
        (k.strip(), v.strip())
        for k, v in (ln.split(":", 1) for ln in r.stdout.splitlines() if ":" in ln)
    )
    assert fields["source name"] == spec.name
    assert fields["nr vCPUs"] == str(spec.vm.cpus)
    assert fields["memory"] == f"{spec.vm.memory_mb << 20} (bytes)"
    assert fields["firmware"] == "bios"
    disks = r.stdout.split("disks:")[1].split("removable media:")[0].split()
    nics = r.stdout.split("NICs:")[1].strip().splitlines()
    assert disks[0] == "0" and len(nics) == 1, r.stdout


def _libvirt_state(conn: Any) -> tuple[set[str], set[str], set[str]]:
    pool = conn.storagePoolLookupByName("default") if "default" in conn.listStoragePools() else None
    volumes = set(pool.listVolumes()) if pool is not None else set()
    domains = {d.name() for d in conn.listAllDomains()}
    return domains, {n.name() for n in conn.listAllNetworks()}, volumes


def test_vagrant_up_boots_the_box_with_a_plain_vagrantfile(vm_built, tmp_path: Path) -> None:
    """`vagrant box add` + `vagrant up --provider libvirt` with the project's Vagrantfile (the box
    name and networking lines only): Vagrant logs in by its own convention (user vagrant, the
    insecure key replaced by a fresh one), the entrypoint runs; `vagrant destroy -f` leaves no
    domain, volume or network behind. No libvirt network is used: SSH on 127.0.0.1 only."""
    spec, dist, _ = vm_built
    conn = hosts.libvirt_connection()
    assert conn is not None, "libvirt (qemu:///system) is needed for vagrant-libvirt"
    project, box = tmp_path / "project", f"imagebuild-test/{spec.name}"
    project.mkdir()
    shutil.copy(ROOT / "vagrant" / "Vagrantfile", project / "Vagrantfile")
    env = {
        **os.environ,
        "VAGRANT_HOME": str(tmp_path / "vagrant.d"),
        "IMAGEBUILD_BOX": box,
        "IMAGEBUILD_SSH_PORT": str(free_port()),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
    }

    def vagrant(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["vagrant", *args], cwd=project, env=env, capture_output=True, text=True, timeout=900
        )

    before = _libvirt_state(conn)
    r = vagrant("box", "add", "--name", box, str((dist / filename("vagrant", spec)).resolve()))
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        r = vagrant("up", "--provider", "libvirt")
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "Key inserted" in r.stdout  # Vagrant replaced its insecure key
        r = vagrant("ssh", "-c", "imagebuild-entrypoint --version; id -un; sudo -n id -un")
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.split("\n")[:3] == [f"{spec.name} {spec.version}", "vagrant", "root"]
        r = vagrant("ssh", "-c", "grep -c 'vagrant insecure public key' .ssh/authorized_keys")
        assert r.stdout.strip() == "0", "the insecure key is still authorised"
    finally:
        destroyed = vagrant("destroy", "-f")
        domains, networks, volumes = _libvirt_state(conn)
        base = {v for v in volumes - before[2] if "_vagrant_box_image_" in v}
        pool = conn.storagePoolLookupByName("default") if base else None
        for v in base:  # the box's own volumes: vagrant keeps them for the next `up`
            pool.storageVolLookupByName(v).delete()
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert (domains, networks, volumes - base) == before


def test_an_app_change_is_written_over_the_last_vm_without_packer(
    app_changed: AppChanged, cache_dir: Path, tmp_path: Path, sign_key: Path
) -> None:
    """One changed app file: build-vm writes the new app files over the VM built before (kept
    under the key of the VM but its app) instead of a new base disk and a Packer boot; the
    result holds the new file (test_verify_passes_on_the_built_example verifies it against its
    container). Its provenance is signed with the key from the environment and names what the
    VM was made from."""
    r, dist = app_changed.build_vm, app_changed.dist
    assert "build-vm: app overlay: done" in r.stderr and "packer build" not in r.stderr
    assert not app_changed.packer_ran
    spec = specmod.load(app_changed.spec)
    part = partition_image(dist / f"{_stem(spec)}.qcow2", tmp_path)
    assert debugfs_cat(part, "/opt/app/app/__init__.py") == app_changed.changed_file.read_bytes()
    part.unlink()
    # Built again, nothing changed: no base disk is made for it (the overlay needed none).
    before = stamps(dist, cache_dir / "disks", cache_dir / "vms")
    keyed = {"IMAGEBUILD_SIGN_KEY": str(sign_key)}
    again = build_vm(app_changed.spec, cache_dir, dist, env=keyed)
    assert again.returncode == 0 and "vm: nothing changed" in again.stdout, again.stderr[-2000:]
    assert changed(before, stamps(dist, cache_dir / "disks", cache_dir / "vms")) == set()
    envelope = dist / f"{_stem(spec)}.vm.intoto.jsonl"
    signer = signing.load(str(sign_key))
    assert signer is not None
    Envelope.from_dict(json.loads(envelope.read_text())).verify([signer.public_key], 1)
    made_from = provenance.read_statement(envelope)["predicate"]["buildDefinition"]
    assert made_from["resolvedDependencies"][0]["name"] == "app layer over the previous VM"


def test_second_build_reuses_everything(vm_built, locked_example: Path, cache_dir: Path) -> None:
    """Nothing changed: no stage, base disk or output is written again, and no QEMU runs."""
    _, dist, _ = vm_built
    before = stamps(dist, cache_dir / "stages", cache_dir / "disks")
    start = time.monotonic()
    r = build_vm(locked_example, cache_dir, dist)
    assert r.returncode == 0, r.stderr
    assert changed(before, stamps(dist, cache_dir / "stages", cache_dir / "disks")) == set()
    assert time.monotonic() - start < 30


def _planted(qcow2: Path, dest: Path, tmp: Path) -> None:
    """`qcow2` with one more file, /etc/imagebuild-planted, written as a new qcow2 `dest`."""
    raw = tmp / "planted.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow2, raw], check=True)
    (tmp / "planted").write_text("built at 10:30\n")
    fs = f"{raw}?offset={1 << 20}"
    cmd = f"write {tmp / 'planted'} /etc/imagebuild-planted"
    subprocess.run(["debugfs", "-w", "-R", cmd, fs], check=True, capture_output=True)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, dest], check=True)
    raw.unlink()  # a 6 GiB sparse file, ~1 GB of it data


def test_a_rebuild_gives_the_same_bytes_and_names_a_planted_file(
    vm_built, locked_example: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """`rebuild --check`: the VM's base disk made again in a private cache (the container's
    layers reused: rebuilding those is test_container's) gives the OVA and box the dist holds,
    byte for byte (the box holds the qcow2's bytes); a copy of the dist whose qcow2 has one file
    more (its SHA256SUMS updated) is named, with that file."""
    spec, dist, _ = vm_built
    copy = tmp_path / "dist"
    copy.mkdir()
    for f in dist.iterdir():
        if f.is_file() and f.name != checksums.NAME:
            os.link(f, copy / f.name)
    qcow2 = f"{_stem(spec)}.qcow2"
    (copy / qcow2).unlink()
    _planted(dist / qcow2, copy / qcow2, tmp_path)
    sums = checksums.read(dist)
    planted = sums | {qcow2: sha256_file(copy / qcow2)}
    (copy / checksums.NAME).write_text("".join(f"{d}  {n}\n" for n, d in sorted(planted.items())))
    before = stamps(cache_dir / "stages", cache_dir / "disks")
    r = run_invoke(
        "rebuild",
        "--check",
        "--reuse-layers",
        *("--spec", str(locked_example), "--cache-dir", str(cache_dir), "--dist", str(copy)),
    )
    assert r.returncode == 1, r.stderr[-3000:]
    for name in (f"{_stem(spec)}.ova", f"{_stem(spec)}.libvirt.box"):
        assert f"same    {name} sha256:{sums[name][:12]}" in r.stdout, r.stdout
    assert ".oci.tar" not in r.stdout  # the reused layers' own archive would prove nothing
    assert (
        f"DIFFERS {qcow2} shipped sha256:{planted[qcow2][:12]} rebuilt sha256:{sums[qcow2][:12]}; "
        "differing files: /etc/imagebuild-planted (only in the shipped one)"
    ) in r.stdout, r.stdout
    assert f"1 of 3 artifacts differ from {copy}: {qcow2}" in r.stderr
    assert changed(before, stamps(cache_dir / "stages", cache_dir / "disks")) == set()
    assert not list(cache_dir.glob("imagebuild-*"))  # the private cache is gone


def _build_qemu(spec: specmod.Spec) -> list[str]:
    """QEMU processes of build-vm (Packer names them imagebuild-NAME-...)."""
    out = subprocess.run(["pgrep", "-a", "qemu-system"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if f"-name imagebuild-{spec.name}-" in ln]


def _packer_booting(spec: specmod.Spec, cache_dir: Path, dist: Path, name: str, memory: int) -> Any:
    """build-vm of a copy of the spec with another memory size (new VM key, same cached base
    disk, so Packer really starts); returns once Packer waits for the VM's SSH."""
    text = spec.path.read_text().replace(f"memory_mb: {spec.vm.memory_mb}", f"memory_mb: {memory}")
    other = spec.path.with_name(f"imagebuild-{name}.yaml")
    other.write_text(text)
    # memory is no lock input: the example's lock is this spec's lock
    shutil.copy(spec.path.with_suffix(".lock"), other.with_suffix(".lock"))
    proc = subprocess.Popen(
        [
            str(Path(os.sys.executable).with_name("invoke")),
            "build-vm",
            "--spec",
            str(other),
            "--cache-dir",
            str(cache_dir),
            "--dist",
            str(dist),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "Waiting for SSH" in line:
            break
    else:  # the build ended before Packer booted: the test would prove nothing
        pytest.fail("build-vm never reached Packer's boot:\n" + "".join(seen[-30:]))
    proc.spec_file = other  # type: ignore[attr-defined]
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_during_packer_leaves_nothing(
    vm_built, cache_dir: Path, tmp_path: Path, sig: int
) -> None:
    """SIGINT or SIGTERM while Packer boots the VM: exit != 0, no QEMU, no container, no
    staging folder, nothing new in dist."""
    spec, dist, _ = vm_built
    before, containers = tree(dist), docker.from_env().containers.list(all=True)
    proc = _packer_booting(spec, cache_dir, dist, "ctrlc", 1536)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode != 0, err
    assert _build_qemu(spec) == []
    assert tree(dist) == before
    assert len(docker.from_env().containers.list(all=True)) == len(containers)


def test_kill_9_during_packer_leaves_nothing_after_the_next_run(vm_built, cache_dir: Path) -> None:
    """kill -9 of build-vm while Packer boots (no clean-up of its own runs): once the next
    build-vm on the same cache and dist has run (nothing to rebuild for it), no QEMU or Packer
    process, scratch folder or staging folder of the killed build remains, and it said so."""
    spec, dist, _ = vm_built
    proc = _packer_booting(spec, cache_dir, dist, "kill9", 1280)
    scratch, staging = set(cache_dir.glob("imagebuild-*")), set(dist.glob(".imagebuild-vm-*"))
    assert scratch and staging, "a booting build has a scratch and a staging folder"
    proc.kill()
    proc.wait(timeout=60)
    outputs = stamps(dist)
    r = build_vm(spec.path, cache_dir, dist)
    assert r.returncode == 0, r.stderr
    assert changed(outputs, stamps(dist)) == set()  # nothing to rebuild: the VM is current
    # Packer (its own session) may stop its QEMU itself once its output pipe closes, or
    # outlive the build: either way the scratch folder is left, and the sweep names it.
    assert "removed what a killed build left on this cache" in r.stderr, r.stderr
    assert "removed a killed build's staging folder" in r.stderr, r.stderr
    deadline = time.monotonic() + 30
    while _build_qemu(spec) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _build_qemu(spec) == []
    assert not set(cache_dir.glob("imagebuild-*")) & scratch
    assert not set(dist.glob(".imagebuild-vm-*")) & staging
    assert not [cmd for _, cmd in leftovers.processes() if "packer" in cmd and "kill9" in cmd]
