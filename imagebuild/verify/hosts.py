"""Bring the two artifacts up for testinfra, and always tear them down (also on Ctrl-C).

Container: `--network none`, entrypoint replaced by `sleep infinity`, the image's own USER;
testinfra's `docker://` backend reaches it with `docker exec` (no IP traffic).
VM: a throw-away overlay on the qcow2, booted through libvirt (`qemu:///system`, domain type
qemu, the architecture's machine: a PC, or arm64's virt board with UEFI flash; libvirtd/virtlogd
started if they are not running) or, if libvirt is unusable, plain QEMU (imagebuild.vmboot).
Either way: user networking with SSH forwarded on 127.0.0.1 only and a fresh key passed as
systemd's login credential (vmboot.guest_args); testinfra's `ssh://`.
"""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import docker.errors

from imagebuild import emulation, machines, progress, vmboot
from imagebuild.engine import engine
from imagebuild.errors import ImageBuildError
from imagebuild.spec_sections import HOST_ARCH
from imagebuild.verify import orphans
from imagebuild.verify.domain import SERIAL, Guest, domain_xml


class HostError(ImageBuildError):
    pass


class DomainRefused(HostError):
    """libvirt answered but would not start the domain (`auto` then boots plain QEMU)."""


@dataclass(frozen=True)
class Host:
    url: str  # testinfra host spec
    seconds: float  # start (container) / boot to SSH (VM)
    how: str
    config: dict[str, Any]  # container: the image config; VM: {}
    setup_seconds: float = 0.0  # VM: libvirt's own time to create and start the domain
    service_url: str = ""  # where the app runs as it ships (container: a second one; VM: itself)
    image_id: str = ""  # container: the image's ID (sha256:... of its config), as the engine has it


@contextlib.contextmanager
def container(ref: str, work: Path, service: bool = False, arch: str = HOST_ARCH) -> Iterator[Host]:
    """With `service`, a second container runs the image as it ships (its own ENTRYPOINT + CMD,
    still `--network none`): verify requests the app's port inside it. Both are labelled with
    verify's work folder (orphans: a killed verify's are removed by the next). Another
    architecture's image runs under emulation, as its build's containers did."""
    client = engine()
    try:
        image = client.images.get(ref)
    except docker.errors.ImageNotFound:
        raise HostError(
            f"container image {ref!r} not found; build it or pass --container"
        ) from None
    start = time.monotonic()
    name = f"imagebuild-verify-{uuid.uuid4().hex[:8]}"
    labels = {orphans.CONTAINER_LABEL: str(work)}
    options = {"network_mode": "none", "detach": True, "labels": labels}
    options |= emulation.container_options(arch)
    started = []
    try:
        if service:
            started.append(client.containers.run(ref, name=f"{name}-service", **options))
        started.append(
            client.containers.run(
                ref,
                entrypoint=["sleep", "infinity"],
                command=[],
                name=name,
                **options,
            )
        )
        seconds, url = round(time.monotonic() - start, 2), f"docker://{name}"
        yield Host(
            url,
            seconds,
            "docker",
            image.attrs["Config"],
            service_url=f"{url}-service" if service else "",
            image_id=image.id,
        )
    finally:
        for c in started:
            c.remove(force=True)


SYSTEM_URI = "qemu:///system"


def local_uri_problem(uri: str) -> str | None:
    """verify reaches the guest's SSH on 127.0.0.1 of this host, and libvirt opens the disk by
    its path here: a libvirt on another host (`qemu+ssh://host/system`) cannot do either."""
    u = urlsplit(uri)
    if not u.scheme.startswith("qemu") or u.netloc or u.path not in ("/system", "/session"):
        return (
            f"{uri!r} is not a local QEMU libvirt URI (qemu:///system or qemu:///session): "
            "verify reaches the VM on this host's 127.0.0.1"
        )
    return None


def libvirt_connection(uri: str = SYSTEM_URI) -> Any:
    """A connection to `uri`, starting virtlogd/libvirtd for the system URI if none answers;
    None if libvirt cannot be used here (then plain QEMU is used)."""
    try:
        import libvirt
    except ImportError:
        return None
    libvirt.registerErrorHandler(lambda *_: None, None)  # errors are raised, not printed
    for attempt in range(20):
        try:
            conn = libvirt.open(uri)
            kvm_device_for_libvirt()
            return conn
        except libvirt.libvirtError:
            if attempt == 0 and uri == SYSTEM_URI and shutil.which("libvirtd"):
                progress.say("verify: starting virtlogd + libvirtd")
                subprocess.run(["virtlogd", "-d"], capture_output=True)
                subprocess.run(["libvirtd", "-d"], capture_output=True)
            time.sleep(0.5)
    return None


def kvm_device_for_libvirt(dev: Path = Path("/dev/kvm")) -> None:
    """Give /dev/kvm Debian's udev mode (root:kvm 0660) where it is root-only (no udev). libvirt
    probes QEMU with CAP_DAC_OVERRIDE (KVM found) but checks its capabilities cache as the
    qemu user (KVM not usable): the two never agree, so every capabilities lookup re-probes
    QEMU, about 48 s per domain start here. Aligned, the cache holds: 0.02 s. Our domains are
    type qemu (TCG) either way."""
    try:
        st, kvm = dev.stat(), grp.getgrnam("kvm").gr_gid
        if st.st_gid == kvm and st.st_mode & 0o060 == 0o060:
            return
        os.chown(dev, -1, kvm)
        os.chmod(dev, st.st_mode & 0o7777 | 0o060)
    except PermissionError:
        fix = f"chgrp kvm {dev} && chmod g+rw {dev}"
        progress.say(
            f"verify: {dev} is root-only, so libvirt re-probes QEMU on every domain "
            f"start (~48 s here); as root: {fix}"
        )
        return
    except (OSError, KeyError):  # no device or no kvm group: nothing libvirt could disagree on
        return
    progress.say(
        f"verify: {dev} set to root:kvm 0660 (Debian's udev default), so libvirt "
        "keeps its QEMU capabilities cache"
    )


@contextlib.contextmanager
def _libvirt_vm(conn: Any, guest: Guest, timeout: int) -> Iterator[Host]:
    machine, work = guest.machine, guest.work
    key = vmboot.make_key(work)
    overlay = vmboot.overlay(guest.disk, work)
    port = vmboot.free_port()
    login = vmboot.guest_args(port, Path(f"{key}.pub").read_text(), guest.hardware.nic)
    xml = domain_xml(guest, overlay, [*machine.libvirt_cpu_args(), *login])
    start = time.monotonic()
    import libvirt  # importable: `conn` is one of its connections

    try:
        dom = conn.createXML(xml, 0)  # transient: gone from libvirt once destroyed
    except libvirt.libvirtError as e:
        overlay.unlink(missing_ok=True)
        raise DomainRefused(f"libvirt refused the {machine.arch} domain: {e}") from e
    setup, start = round(time.monotonic() - start, 1), time.monotonic()
    try:
        booted = vmboot.wait_for_ssh(
            vmboot.Booted(port, key, work / SERIAL, 0.0),
            start,
            timeout,
            lambda: dom.isActive() == 1,
        )
        how = f"libvirt {conn.getURI()} (domain type qemu, {machine.arch}: {machine.board})"
        host = _ssh_host(booted, work, how)
        yield replace(host, setup_seconds=setup, service_url=host.url)
    finally:
        with contextlib.suppress(Exception):
            dom.destroy()
        overlay.unlink(missing_ok=True)


def _ssh_host(booted: vmboot.Booted, work: Path, how: str) -> Host:
    config = work / "ssh_config"
    # One SSH connection for the whole run (testinfra asks for ControlMaster=auto, but without a
    # ControlPath ssh makes none): each command then costs a round trip, not a handshake with
    # an emulated guest (the VM's facts: 43 s -> see README's verify figures).
    options = vmboot.SSH_OPTIONS | {"ControlPath": str(work / "ssh-%C")}
    config.write_text("Host *\n" + "".join(f"  {k} {v}\n" for k, v in options.items()))
    url = (
        f"ssh://root@127.0.0.1:{booted.port}?ssh_identity_file={booted.key}"
        f"&ssh_config={config}&timeout=60"
    )
    return Host(url, booted.seconds_to_ssh, how, {})


@contextlib.contextmanager
def vm(
    disk: Path,
    work: Path,
    memory: int,
    cpus: int,
    backend: str = "auto",
    seed: Path | None = None,
    libvirt_uri: str = SYSTEM_URI,
    hardware: vmboot.Hardware = vmboot.VIRTIO,
    machine: machines.Machine = machines.HOST,
) -> Iterator[Host]:
    """`seed`: a NoCloud seed ISO to boot with (libvirt only), as a libvirt user would attach it.
    `hardware`: the disk controller and NIC the artifact's format declares. `machine`: the
    architecture's (another's boots under TCG, in minutes)."""
    if not disk.exists():
        raise HostError(f"VM disk {disk} not found; run `invoke build-vm` or pass --vm")
    if seed is not None and not seed.is_file():
        raise HostError(f"NoCloud seed {seed} not found")
    if seed is not None and backend == "qemu":
        raise HostError("a NoCloud seed is attached through libvirt only (--backend auto)")
    timeout = 300 if machine == machines.HOST else 900
    conn = libvirt_connection(libvirt_uri) if backend in ("auto", "libvirt") else None
    if conn is None and (backend == "libvirt" or seed is not None):
        raise HostError(f"libvirt ({libvirt_uri}) is not usable here; try --backend qemu")
    why = "libvirt unavailable" if backend == "auto" else "--backend qemu"
    if conn is not None:
        try:
            guest = Guest(disk, work, memory, cpus, seed, hardware, machine)
            with _libvirt_vm(conn, guest, timeout) as host:
                yield host
            return
        except DomainRefused as e:  # raised before the domain exists: nothing yielded yet
            if backend != "auto" or seed is not None:
                raise
            why = str(e)
            progress.say(f"verify: {why}: booting it with plain QEMU")
        finally:
            conn.close()
    with vmboot.boot(
        disk,
        work,
        memory_mb=memory,
        cpus=cpus,
        name="imagebuild-verify",
        hardware=hardware,
        machine=machine,
        timeout=timeout,
    ) as b:
        host = _ssh_host(b, work, f"plain QEMU ({why})")
        yield replace(host, service_url=host.url)
