"""The spec's sections (base, python, gpu, app, container, vm, verify): part of the one settings
table whose type hints drive parsing and whose metadata drives checks and the README reference.
The top level, `Spec`, is in imagebuild.spec."""

from __future__ import annotations

from dataclasses import dataclass, field

from imagebuild.spec_checks import (
    ENV_NAME,
    REGISTRY_REPO,
    Context,
    abs_path,
    between,
    debian_name,
    existing,
    http_url,
    image_ref,
    meta,
    non_empty,
    one_of,
    pattern,
    valid_regex,
)
from imagebuild.spec_clouds import Ami, Gce

# Debian's architecture names; the host's is the one every artifact is built for.
HOST_ARCH = "amd64"
ARCHITECTURES = (HOST_ARCH, "arm64")


def architectures(v: list[str], _: Context) -> str | None:
    if not v or v[0] != HOST_ARCH:
        return f"must start with {HOST_ARCH!r}, the architecture this host builds"
    twice = [a for i, a in enumerate(v) if a in v[:i]]
    return f"{twice[0]!r} is given twice" if twice else None


# Debian's own python3 is what every image runs, so the suite fixes the target interpreter.
SUITE_PYTHON = {"bookworm": "3.11", "trixie": "3.13"}


# builders/formats/ has one module each (tests/test_formats.py checks the two agree)
VM_FORMATS = ("qcow2", "ova", "vagrant", "virtualbox", "vmware", "vhd", "gce", "raw")
DEFAULT_VM_FORMATS = ("qcow2", "ova", "vagrant")
# cloud-init's datasources (role vm_base): every VM reads NoCloud/ConfigDrive seeds, the OVF
# environment and EC2's metadata (the AMI); a cloud's format adds its own. ds-identify enables
# only what the platform it boots on offers.
COMMON_DATASOURCES = ("NoCloud", "ConfigDrive", "OVF", "Ec2")
FORMAT_DATASOURCES = {"vhd": ("Azure",), "gce": ("GCE",)}


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


DEFAULT_VM_PACKAGES = [
    "linux-image-cloud-amd64",
    "systemd-sysv",
    "udev",
    "openssh-server",
    "sudo",
    "ifupdown",
    "isc-dhcp-client",
    "grub-pc-bin",
    "initramfs-tools",
    "kmod",
    "e2fsprogs",
    # the platform's login (NoCloud, ConfigDrive, OVF, EC2 metadata): one disk for every format
    "cloud-init",
    # libvirt learns the guest's address from it (vagrant-libvirt without a management network,
    # `virsh domifaddr --source agent`); it starts only when the hypervisor offers its channel
    "qemu-guest-agent",
]


@dataclass(frozen=True)
class Base:
    distro: str = field(default="debian", metadata=meta("Only `debian`.", one_of("debian")))
    suite: str = field(
        default="bookworm",
        metadata=meta("Debian suite; fixes the target Python.", one_of(*SUITE_PYTHON)),
    )
    mirror: str = field(
        default="http://deb.debian.org/debian",
        metadata=meta(
            "Debian mirror (plain HTTP works inside builds).",
            http_url,
        ),
    )
    components: list[str] = field(
        default_factory=lambda: ["main"],
        metadata=meta(
            "Archive components, e.g. `[main, non-free, non-free-firmware]` for NVIDIA.",
            non_empty,
            one_of("main", "contrib", "non-free", "non-free-firmware"),
        ),
    )
    architectures: list[str] = field(
        default_factory=lambda: [HOST_ARCH],
        metadata=meta(
            "Debian architectures to lock and build, amd64 first (this host's): `[amd64, arm64]` "
            "adds an arm64 section of every OS closure and wheel to the lock, fetched and "
            "exported with it, and `build-container` builds the arm64 image too (under "
            "qemu-user emulation, into DIST/arm64/); `build-vm --arch arm64` makes its UEFI VM "
            "(qcow2, raw, vhd; booted under TCG) and `verify --arch arm64` checks the two.",
            architectures,
            one_of(*ARCHITECTURES),
        ),
    )
    snapshot: str | None = field(
        default=None,
        metadata=meta(
            "snapshot.debian.org timestamp (`20250520T000000Z`); replaces `mirror`: the lock "
            "and `fetch` use `<snapshot_url>/<snapshot>`, which keeps every version.",
            pattern(r"\d{8}T\d{6}Z", "a snapshot timestamp like 20250520T000000Z"),
        ),
    )
    snapshot_url: str = field(
        default="http://snapshot.debian.org/archive/debian",
        metadata=meta(
            "The snapshot service (a mirror of it, or a local one) `snapshot` is read from.",
            http_url,
        ),
    )
    image: str | None = field(
        default=None,
        metadata=meta(
            "Registry base image `NAME@sha256:...` instead of a locally built rootfs.", image_ref
        ),
    )

    @property
    def effective_mirror(self) -> str:
        if self.snapshot:
            return f"{self.snapshot_url.rstrip('/')}/{self.snapshot}"
        return self.mirror.rstrip("/")


@dataclass(frozen=True)
class Python:
    requirements: str = field(
        default="requirements.in",
        metadata=meta(
            "Top-level Python requirements (pip syntax), relative to the spec.", existing("file")
        ),
    )
    venv: str = field(default="/opt/venv", metadata=meta("Venv path in both artifacts.", abs_path))


@dataclass(frozen=True)
class Gpu:
    vendor: str = field(default="nvidia", metadata=meta("Only `nvidia`.", one_of("nvidia")))
    driver: str = field(
        default="535",
        metadata=meta(
            "Driver branch from Debian non-free.", pattern(r"\d{3}", "a driver branch like '535'")
        ),
    )
    cuda: str = field(
        default="12.2",
        metadata=meta(
            "CUDA user space (PyPI's nvidia-*-cu12 wheels, role `cuda_runtime`); the container's "
            "`NVIDIA_REQUIRE_CUDA`.",
            pattern(r"\d+\.\d+", "a CUDA version like '12.2'"),
        ),
    )
    allow_missing_env: str = field(
        default="IMAGEBUILD_ALLOW_NO_GPU",
        metadata=meta(
            "Env var that, set to 1, lets the entrypoint start without a usable GPU.",
            lambda v, _: None if ENV_NAME.fullmatch(v) else f"{v!r} is not an env var name",
        ),
    )


@dataclass(frozen=True)
class App:
    src: str = field(
        default="app", metadata=meta("App source folder, relative to the spec.", existing("dir"))
    )
    dest: str = field(default="/opt/app", metadata=meta("Install path; the WORKDIR.", abs_path))
    build: list[str] = field(
        default_factory=list,
        metadata=meta(
            "Exec-form command run once in `dest` at build time (e.g. make a model); no network."
        ),
    )


@dataclass(frozen=True)
class Container:
    repository: str = field(
        default="",
        metadata=meta(
            "Image repository (default `local/<name>`); tagged `<version>`.",
            pattern(r"([a-z0-9][a-z0-9._/:-]*)?", "a lower-case image repository"),
        ),
    )
    registry: str | None = field(
        default=None,
        metadata=meta(
            "Registry to push to (`host:port`).", pattern(r"[A-Za-z0-9.-]+(:\d+)?", "host[:port]")
        ),
    )


@dataclass(frozen=True)
class BuildCache:
    registry: str | None = field(
        default=None,
        metadata=meta(
            "Registry repository (`host[:port]/path`) that shares built stages and base disks "
            "between machines; the default of `--cache-from` and `--cache-to`.",
            pattern(REGISTRY_REPO, "a registry repository like 127.0.0.1:5000/imagebuild-cache"),
        ),
    )
    push: bool = field(
        default=True,
        metadata=meta("Also push what this build made or found (off: read-only, e.g. for PRs)."),
    )
    required: bool = field(
        default=False,
        metadata=meta("An unreachable or refusing registry fails the build (else: a warning)."),
    )


@dataclass(frozen=True)
class Vm:
    formats: list[str] = field(
        default_factory=lambda: list(DEFAULT_VM_FORMATS),
        metadata=meta(
            "Outputs besides the qcow2 base: qcow2, ova (VMware hardware), vagrant (libvirt "
            "box), virtualbox and vmware (Vagrant boxes), vhd (Azure, fixed), gce (Compute "
            "Engine's disk.raw tar.gz), raw (sparse).",
            None,
            one_of(*VM_FORMATS),
        ),
    )
    disk_gb: int = field(default=6, metadata=meta("Virtual disk size.", between(2, 2048)))
    memory_mb: int = field(default=2048, metadata=meta("Guest memory.", between(256, 1048576)))
    cpus: int = field(default=2, metadata=meta("Guest vCPUs.", between(1, 256)))
    packages: list[str] = field(
        default_factory=lambda: list(DEFAULT_VM_PACKAGES),
        metadata=meta(
            "VM-only OS packages (kernel, init, SSH, ...), locked in their own section.",
            None,
            debian_name,
        ),
    )
    ami: Ami | None = field(default=None, metadata=meta("amazon-ebs settings (`--target ami`)."))
    gce: Gce | None = field(
        default=None, metadata=meta("Compute Engine settings (`--target gce`).")
    )

    def datasources(self) -> list[str]:
        """cloud-init's datasource_list for a VM shipped in these formats."""
        extra = (d for f in self.formats for d in FORMAT_DATASOURCES.get(f, ()))
        return [*COMMON_DATASOURCES, *extra]


@dataclass(frozen=True)
class Service:
    port: int = field(
        metadata=meta("TCP port the app listens on, inside the artifact.", between(1, 65535))
    )
    path: str = field(
        default="/",
        metadata=meta(
            "HTTP path requested with GET, inside each artifact.",
            pattern(r"/[A-Za-z0-9._~!$&'()*+,;=:@/?%-]*", "an HTTP path starting with /"),
        ),
    )
    status: int = field(default=200, metadata=meta("Expected HTTP status.", between(100, 599)))
    start_s: int = field(
        default=180,
        metadata=meta(
            "Seconds the service may take to open its port (TCG VMs start slowly); no answer "
            "by then is a failure.",
            between(1, 3600),
        ),
    )


@dataclass(frozen=True)
class Verify:
    commands: list[list[str]] = field(
        default_factory=list,
        metadata=meta(
            "Argument lists run through the entrypoint wrapper in both artifacts (runtime user, "
            "runtime env); exit status and stdout must be identical, e.g. `[[--check]]`. Empty: "
            "the `--version` smoke row.",
        ),
    )
    ignore: list[str] = field(
        default_factory=list,
        metadata=meta(
            "Regexes whose matches in that stdout are blanked before comparing (timestamps, "
            "PIDs, host names).",
            None,
            valid_regex,
        ),
    )
    service: Service | None = field(
        default=None,
        metadata=meta(
            "The app as a service: verify starts the container with its own ENTRYPOINT + CMD "
            "(`--network none`) and boots the VM (its unit), requests the path inside each and "
            "compares status and body. `null`: not a service.",
        ),
    )
