"""`invoke build-vm`: Packer builds the VM from the same spec, lock and playbook as the container.

qemu target: the container's cached layers + the VM-only packages become the base disk
(imagebuild.builders.disk); Packer's qemu source boots it (TCG unless KVM really works), its Ansible
provisioner runs ansible/vm.yml (the container's site.yml + VM plays + finalize) over SSH on
127.0.0.1 with a per-build key passed as systemd credential, then shuts down. Its disk is compressed
while it is turned into the other formats (imagebuild.builders.formats). Everything is assembled
in a hidden folder inside dist/ and renamed into place at the end; the record is written last.

ami target: imagebuild.builders.ami (this build's qcow2 as an EBS snapshot, or a stock AMI
provisioned by the template's amazon-ebs source).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imagebuild import (
    ansible_vars,
    builder,
    checksums,
    distnames,
    leftovers,
    machines,
    packer,
    progress,
    provenance,
    provision,
    roles,
    sshgate,
    tools,
    vmboot,
)
from imagebuild.builders import app_layer, app_overlay, context, disk, stages, vm_outputs
from imagebuild.builders.formats import filename
from imagebuild.cache import atomic_file, sha256_file
from imagebuild.inputs import Inputs
from imagebuild.obtain import told
from imagebuild.resolved import SOURCES_DIR, Resolved
from imagebuild.spec import Spec

ON_ERROR = ("cleanup", "abort")


@dataclass(frozen=True)
class VmResult:
    target: str
    accelerator: str
    key: str
    base_disk: disk.BaseDisk | None
    outputs: dict[str, Path]
    seconds: dict[str, float] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    noop: bool = False

    def render(self) -> str:
        """What `build-vm` prints: the base disk, the outputs, the parity, the timings."""
        lines = []
        if d := self.base_disk:
            state = told(d.pulled, d.reused, f"built in {d.seconds}s")
            lines.append(f"base disk sha256:{d.sha256[:12]} kernel {d.kernel} ({state})")
        if self.noop:
            lines.append("vm: nothing changed")
        lines += [f"{name:<16} {path}" for name, path in self.outputs.items()]
        lines += [f"parity {k}: {v}" for k, v in self.parity.items()]
        if self.seconds:
            lines.append("seconds " + ", ".join(f"{k} {v}" for k, v in self.seconds.items()))
        return "\n".join(lines)


def _build_qemu(name: str) -> list[tuple[int, str]]:
    """This build's QEMU processes (Packer names them with `-name NAME`)."""
    return [(pid, cmd) for pid, cmd, _ in leftovers.matching([f" {name} "], ("qemu-system",))]


def _stop_strays(name: str, work: Path) -> None:
    """Safety net after Packer: no QEMU or Ansible process of this build may outlive it (QEMU is
    named NAME; Ansible's arguments name files in the scratch folder)."""
    strays = leftovers.stop_processes([f" {name} "], ("qemu-system",))
    for p in strays + leftovers.stop_processes([str(work)], ("ansible",)):
        progress.say(f"build-vm: stopped leftover process {p}")


def _keep_for_login(values: dict[str, Any], work: Path, staging: Path) -> None:
    """--on-error=abort: the VM stays up; keep what it takes to log in (the build key would go
    with the scratch folder) and say how."""
    for name in ("build_key", "build_key.pub"):
        shutil.copy2(work / name, staging / name)
    ports = [
        m
        for _, cmd in _build_qemu(values["qemu_name"])
        for m in re.findall(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-:22", cmd)
    ]
    login = (
        (f"ssh -i {staging / 'build_key'} -p {ports[0]} -o StrictHostKeyChecking=no root@127.0.0.1")
        if ports
        else "(the VM is not running any more)"
    )
    progress.say(
        f"build-vm: --on-error=abort: the VM is kept running; log in with: {login}; "
        f"serial console: {staging / 'serial.log'}"
    )


def outputs(dist: Path, spec: Spec) -> dict[str, Path]:
    out = {fmt: dist / filename(fmt, spec) for fmt in spec.vm.formats}
    out |= {
        "packages": distnames.path(dist, spec, distnames.VM_PACKAGES),
        "sbom": distnames.path(dist, spec, distnames.VM_SBOM),
        "provenance": distnames.path(dist, spec, distnames.VM_PROVENANCE),
        "packer_manifest": distnames.path(dist, spec, distnames.PACKER_MANIFEST),
        "record": distnames.path(dist, spec, distnames.VM_RECORD),
    }
    return out


def ansible_vars_file(
    r: Resolved, sources_label: str, inventory_out: Path, app_archive: str = "", trim: bool = True
) -> Path:
    """The container's playbook variables (same paths: the sources sit where the container
    build mounts them) + the VM-only ones, as a file for `--extra-vars @file` (as data:
    imagebuild.ansible_vars)."""
    values = {
        **r.playbook_vars(app_archive),
        **r.vm_vars(sources_label, str(inventory_out)),
        "imagebuild_sources_dir": SOURCES_DIR,
        "imagebuild_trim": trim,
    }
    return ansible_vars.write(values, inventory_out.with_name("ansible-vars.yml"))


def packer_values(spec: Spec, work: Path, **overrides: Any) -> dict[str, Any]:
    """Every template variable; the target fills in its own."""
    ami = spec.vm.ami
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    values: dict[str, Any] = {
        "name": spec.name,
        "version": spec.version,
        "vm_name": filename("qcow2", spec),
        "qemu_name": f"imagebuild-{spec.name}-{work.name}",
        "output_dir": "",
        "base_disk": "",
        "base_disk_sha256": "",
        "sources_disk": "",
        "sources_dir": "",
        "disk_size": f"{spec.vm.disk_gb * 1024}M",
        "memory": spec.vm.memory_mb,
        "cpus": spec.vm.cpus,
        **machines.HOST.packer_values("tcg"),
        "accelerator": "tcg",
        "ssh_private_key_file": str(work / "build_key"),
        "ssh_host_port": 2222,  # the qemu source's; Gate.new picks one per build
        "guest_qemuargs": [],
        "serial_log": str(work / "serial.log"),
        "ansible_dir": str(roles.ANSIBLE_DIR),
        "ansible_vars_file": "",
        "ansible_user": "root",
        "ansible_become": False,
        "ansible_strategy_env": provision.ssh_strategy()[1],
        "manifest_file": str(work / "packer-manifest.json"),
        "aws_region": ami.region if ami else "",
        "aws_instance_type": ami.instance_type if ami else "",
        "aws_source_ami": ami.source_ami if ami else "",
        "aws_ssh_username": ami.ssh_username if ami else "admin",
        # unique per build, as Packer's {{timestamp}} convention: a rebuild never collides
        "aws_ami_name": f"{spec.name}-{spec.version}-{stamp}",
        "aws_encrypt_boot": ami.encrypt_boot if ami else True,
        "aws_ssh_cidrs": list(ami.ssh_cidrs) if ami else [],
    }
    return values | overrides


def _pairs(args: list[str]) -> list[list[str]]:
    """QEMU's `-opt value` list as Packer's qemuargs rows."""
    return [args[i : i + 2] for i in range(0, len(args), 2)]


def make_build_key(work: Path) -> None:
    tools.run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "imagebuild-build",
            "-f",
            str(work / "build_key"),
        ]
    )


def build(inputs: Inputs, dist: Path, on_error: str = "cleanup") -> VmResult:
    """The qemu target: the qcow2 and the formats made from it (builders.targets)."""
    dist = dist.resolve()  # Packer runs in the template folder: every path must be absolute
    spec, key = inputs.spec, inputs.keys.vm
    out = outputs(dist, spec)
    seconds: dict[str, float] = {}
    with context.new_build(inputs) as b:
        start = time.monotonic()
        layers, _ = stages.build_layers(b, "build-vm")
        record = out["record"]
        leftovers.sweep_staging(dist, b.inputs.cache, "build-vm")  # also when nothing else is to do
        formats = {out[f].name: out[f] for f in spec.vm.formats}
        if up_to_date(dist, spec, key) and provenance.signed_as_asked(
            out["provenance"], inputs, "vm", formats
        ):
            previous = json.loads(record.read_text())
            # The base disk the VM was made from (cached or pulled); none for an app overlay's
            # VM: it had none, and making one now would cost what the overlay saved.
            same = disk.base_disk(b, layers) if previous.get("base_disk") else None
            progress.say(f"build-vm: nothing changed ({key[:12]}); outputs in {dist}")
            checksums.listed(dist, list(out.values()))
            return VmResult("qemu", previous["accelerator"], key, same, out, seconds, {}, True)
        app, prior = app_overlay.select(b, layers)
        base: disk.BaseDisk | None = None
        staging = dist / f".imagebuild-vm-{b.build_id}"
        staging.mkdir(parents=True)
        # whose it is, should we be killed
        (staging / ".owner").write_text(f"{b.inputs.cache.root}\n")
        to = vm_outputs.Delivery(staging, out, seconds)
        keep = False
        try:
            done = None
            if prior is not None and isinstance(app, app_layer.AppFiles):
                accel = "none (app overlay: no boot)"
                try:
                    done = app_overlay.build(b, prior, app, layers[-1], to)
                except app_overlay.OverlayError as e:  # before any output: the full build
                    progress.say(f"build-vm: app overlay failed ({e}): a full build")
            if done is not None:
                parity, vm_inv = done
            else:
                base = disk.base_disk(b, layers)
                seconds["base disk"] = round(time.monotonic() - start, 1)
                sources = disk.sources_disk(b)
                machine = machines.of(inputs.lock.arch)
                accel, why = vmboot.probe_accelerator(machine.arch)
                progress.say(f"build-vm: accelerator {accel} ({why})")
                parity, vm_inv = _packer_qemu(b, base, sources, (machine, accel), on_error, to)
            result = VmResult("qemu", accel, key, base, out, seconds, parity)
            with atomic_file(record) as t:  # last: its presence means every output is complete
                body = asdict(result) | {
                    "builder": builder.versions() | {"packer": packer.version()}
                }
                t.write_text(json.dumps(body, default=str, indent=1))
            checksums.record(dist, list(out.values()), to.known)
            if isinstance(app, app_layer.AppFiles) and "qcow2" in out:  # for the next app change
                sha = checksums.read(dist)[out["qcow2"].name]
                app_overlay.keep(
                    b.inputs.cache, inputs.keys.vm_but_app, out["qcow2"], sha, app, vm_inv
                )
            return result
        except BaseException:
            keep = on_error == "abort"
            if keep:
                progress.say(f"build-vm: --on-error=abort: VM and its disk kept in {staging}")
            raise
        finally:
            if not keep:
                shutil.rmtree(staging, ignore_errors=True)


def _packer_qemu(
    b: context.Build,
    base: disk.BaseDisk,
    sources: Path,
    boots_on: tuple[machines.Machine, str],
    on_error: str,
    to: vm_outputs.Delivery,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Packer's pass over a throw-away overlay of the base disk (the check that every role is
    converged on it, and the VM's inventory from inside), then the outputs, made from the base
    disk itself: the guest's boot never reaches the shipped bytes, so the same inputs give the
    same disk. (parity, the VM's inventory)."""
    machine, accel = boots_on
    staging = to.staging
    spec, work = b.inputs.spec, b.workdir
    make_build_key(work)
    inventory_out = work / "inventory.json"
    vars_file = ansible_vars_file(b.inputs.resolved, disk.SOURCES_LABEL, inventory_out)
    booted = vmboot.overlay(base.path, work)  # Packer copies this (kilobytes), never the base
    gate = sshgate.Gate.new(work)
    values = packer_values(
        spec,
        work,
        output_dir=str(staging / "packer-out"),
        base_disk=str(booted),
        base_disk_sha256=sha256_file(booted),
        sources_disk=str(sources),
        **machine.packer_values(accel),
        accelerator=accel,
        ansible_vars_file=str(vars_file),
        serial_log=str(staging / "serial.log"),  # kept with the VM by --on-error=abort
        ssh_host_port=gate.port,
        guest_qemuargs=_pairs(gate.qemu_args((work / "build_key.pub").read_text())),
    )
    strategy = provision.ssh_strategy()[0]
    what = f"qemu/{accel}: boot, vm.yml (Ansible strategy {strategy}), shutdown"
    log = packer.log_file(b.inputs.cache.root, spec.name)
    # The formats need only the base disk: made while Packer boots (TCG leaves a core to
    # qemu-img now and then: 10 s less here), and stopped with the build if it fails.
    with ThreadPoolExecutor(1) as pool:
        made = pool.submit(vm_outputs.formats, base.path, b.inputs, to, True)
        try:
            with sshgate.opened_when_up(gate) as abort:
                timeline = packer.build(values, work, "qemu.vm", on_error, log, what, abort)
            to.seconds |= {f"packer {k}": v for k, v in packer.phases(timeline).items()}
        except BaseException:
            while not wait([made], timeout=0.5).done:  # a tool started after a kill: again
                vm_outputs.stop_formats(to)
            if on_error == "abort":
                _keep_for_login(values, work, staging)
            raise
        finally:
            if on_error != "abort":
                _stop_strays(values["qemu_name"], work)
        made.result()
    lines = [ln for _, ln in timeline]
    provision.check_converged(lines)
    shutil.rmtree(staging / "packer-out")  # the booted overlay: what it holds is not shipped
    vm_inv = json.loads(inventory_out.read_text())
    manifest = (work / "packer-manifest.json").read_bytes()
    made_from = provenance.subject("base disk", base.sha256)
    parity = vm_outputs.ship(None, manifest, vm_inv, made_from, b.inputs, to)
    # The base disk is the container's filesystem: the shared roles must find nothing to do.
    parity["shared_roles_changed"] = provision.shared_changed(lines, spec)
    return parity, vm_inv


def up_to_date(dist: Path, spec: Spec, key: str) -> bool:
    """Would `build-vm` find nothing to do (a record with this VM key, every output present)?"""
    out = outputs(dist, spec)
    record = out["record"]
    if not record.exists() or not all(p.exists() for p in out.values()):
        return False
    return json.loads(record.read_text()).get("key") == key
