"""The spec: `imagebuild.yaml` parsed once into typed, validated dataclasses.

The dataclasses below are the one settings table: their type hints drive parsing, their
metadata (`doc`, `check`, `item_check`) drives validation and the README's field reference
(`python -m imagebuild.spec --markdown`). Every error names FILE:LINE and the field path.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
import sys
import types
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from imagebuild import roles
from imagebuild.errors import SpecError

Check = Any  # Callable[[value, Context], str | None]; kept loose to allow lambdas in metadata

# Matched with fullmatch: `$` would also match before a trailing newline.
DEBIAN_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
AWS_REGION = r"[a-z]{2}(-[a-z]+)+-\d"
OCI_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
IMAGE_PATH = re.compile(r"(/[A-Za-z0-9._+-]+)+")
# Debian's own python3 is what every image runs, so the suite fixes the target interpreter.
SUITE_PYTHON = {"bookworm": "3.11", "trixie": "3.13"}
VM_FORMATS = ("qcow2", "ova", "vagrant")
GPU_ROLES = ("nvidia_driver", "cuda_runtime")
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


def meta(doc: str, check: Check = None, item_check: Check = None) -> dict[str, Any]:
    return {"doc": doc, "check": check, "item_check": item_check}


def _debian_name(v: str, _: Context) -> str | None:
    return None if DEBIAN_NAME.fullmatch(v) else f"{v!r} is not a Debian package name"


def _abs_path(v: str, _: Context) -> str | None:
    """A clean absolute path in the image: not `/`, no `.`/`..`/empty segments, no spaces or
    shell-special characters (it reaches command lines and unit files)."""
    parts = v.split("/")[1:]
    if not IMAGE_PATH.fullmatch(v) or any(p in (".", "..") for p in parts):
        return f"{v!r} must be a clean absolute path in the image (not /, no '..', no spaces)"
    return None


def _url(v: str, _: Context) -> str | None:
    """Parsed, not pattern-matched: http(s), a host, nothing a shell or apt line would split."""
    u = urllib.parse.urlsplit(v)
    if u.scheme not in ("http", "https") or not u.hostname or re.search(r"[\s'\"`$\\;|&<>]", v):
        return f"{v!r} is not an http(s) URL"
    return None


def _outside_root(spec: Spec, v: str) -> str | None:
    """Files the spec names stay inside its project root (`project_root`, default the spec's
    folder), so a spec cannot ship /root or ../../etc into an image."""
    root = (spec.base_dir / spec.project_root).resolve()
    target = (spec.base_dir / v).resolve()
    if target == root or target.is_relative_to(root):
        return None
    return f"{v!r} is outside the project root {root} (widen `project_root` to allow it)"


def _public_cidr(v: str, _: Context) -> str | None:
    """An IPv4/IPv6 network in CIDR form that is not the whole internet."""
    try:
        net = ipaddress.ip_network(v, strict=True)
    except ValueError:
        return f"{v!r} is not a network in CIDR form (e.g. 203.0.113.7/32)"
    return f"{v!r} opens SSH to everyone" if net.prefixlen == 0 else None


def _between(low: int, high: int) -> Check:
    return lambda v, _: None if low <= v <= high else f"{v} is not between {low} and {high}"


def _one_of(*choices: str) -> Check:
    def check(v: str, _: Context) -> str | None:
        if v in choices:
            return None
        close = difflib.get_close_matches(v, choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{v!r} is not one of {', '.join(choices)}{hint}"

    return check


def _pattern(rx: str, what: str) -> Check:
    return lambda v, _: None if re.fullmatch(rx, v) else f"{v!r} is not {what}"


def _existing(kind: str) -> Check:
    def check(v: str, ctx: Context) -> str | None:
        p = ctx.base_dir / v
        ok = p.is_dir() if kind == "dir" else p.is_file()
        return None if ok else f"{kind} {v!r} not found (relative to {ctx.base_dir})"

    return check


def _image_ref(v: str, _: Context) -> str | None:
    if re.fullmatch(r"[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}", v):
        return None
    return (
        f"{v!r} is not pinned by digest; use NAME@sha256:<64 hex>, e.g. "
        f"`docker pull {v} && docker inspect --format '{{{{index .RepoDigests 0}}}}' {v}`"
    )


def _known_stack(v: str, _: Context) -> str | None:
    known = roles.known_stacks()
    if v in known:
        return None
    close = difflib.get_close_matches(v, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown stack {v!r}{hint}; known stacks: {', '.join(known) or '(none)'}"


def _non_empty(v: list[str], _: Context) -> str | None:
    return None if v else "must not be empty"


def _env_names(v: dict[str, str], _: Context) -> str | None:
    bad = [k for k in v if not ENV_NAME.fullmatch(k)]
    return f"{bad[0]!r} is not a valid environment variable name" if bad else None


@dataclass(frozen=True)
class Base:
    distro: str = field(default="debian", metadata=meta("Only `debian`.", _one_of("debian")))
    suite: str = field(
        default="bookworm",
        metadata=meta("Debian suite; fixes the target Python.", _one_of(*SUITE_PYTHON)),
    )
    mirror: str = field(
        default="http://deb.debian.org/debian",
        metadata=meta(
            "Debian mirror (plain HTTP works inside builds).",
            _url,
        ),
    )
    components: list[str] = field(
        default_factory=lambda: ["main"],
        metadata=meta(
            "Archive components, e.g. `[main, non-free, non-free-firmware]` for NVIDIA.",
            _non_empty,
            _one_of("main", "contrib", "non-free", "non-free-firmware"),
        ),
    )
    snapshot: str | None = field(
        default=None,
        metadata=meta(
            "snapshot.debian.org timestamp (`20250520T000000Z`); replaces `mirror`: the lock "
            "and `fetch` use `<snapshot_url>/<snapshot>`, which keeps every version.",
            _pattern(r"\d{8}T\d{6}Z", "a snapshot timestamp like 20250520T000000Z"),
        ),
    )
    snapshot_url: str = field(
        default="http://snapshot.debian.org/archive/debian",
        metadata=meta(
            "The snapshot service (a mirror of it, or a local one) `snapshot` is read from.",
            _url,
        ),
    )
    image: str | None = field(
        default=None,
        metadata=meta(
            "Registry base image `NAME@sha256:...` instead of a locally built rootfs.", _image_ref
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
            "Top-level Python requirements (pip syntax), relative to the spec.", _existing("file")
        ),
    )
    venv: str = field(default="/opt/venv", metadata=meta("Venv path in both artifacts.", _abs_path))


@dataclass(frozen=True)
class Gpu:
    vendor: str = field(default="nvidia", metadata=meta("Only `nvidia`.", _one_of("nvidia")))
    driver: str = field(
        default="535",
        metadata=meta(
            "Driver branch from Debian non-free.", _pattern(r"\d{3}", "a driver branch like '535'")
        ),
    )
    cuda: str = field(
        default="12.2",
        metadata=meta(
            "CUDA user space (PyPI's nvidia-*-cu12 wheels, role `cuda_runtime`); the container's "
            "`NVIDIA_REQUIRE_CUDA`.",
            _pattern(r"\d+\.\d+", "a CUDA version like '12.2'"),
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
        default="app", metadata=meta("App source folder, relative to the spec.", _existing("dir"))
    )
    dest: str = field(default="/opt/app", metadata=meta("Install path; the WORKDIR.", _abs_path))
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
            _pattern(r"([a-z0-9][a-z0-9._/:-]*)?", "a lower-case image repository"),
        ),
    )
    registry: str | None = field(
        default=None,
        metadata=meta(
            "Registry to push to (`host:port`).", _pattern(r"[A-Za-z0-9.-]+(:\d+)?", "host[:port]")
        ),
    )


@dataclass(frozen=True)
class Ami:
    method: str = field(
        default="import",
        metadata=meta(
            "import: this build's qcow2 disk becomes the AMI (EBS direct APIs + RegisterImage); "
            "stock: Packer's amazon-ebs provisions `source_ami` (its own packages stay).",
            _one_of("import", "stock"),
        ),
    )
    region: str = field(
        default="eu-west-1",
        metadata=meta(
            "AWS region (`build-vm --aws-region` overrides it).",
            _pattern(AWS_REGION, "an AWS region like eu-west-1"),
        ),
    )
    instance_type: str = field(
        default="t3.large",
        metadata=meta(
            "method stock: builder instance type.",
            _pattern(r"[a-z0-9]+\.[a-z0-9]+", "an instance type"),
        ),
    )
    source_ami: str = field(
        default="",
        metadata=meta(
            "method stock: the Debian AMI to start from.",
            _pattern(r"(ami-[0-9a-f]{8,17})?", "an AMI id"),
        ),
    )
    ssh_username: str = field(
        default="admin",
        metadata=meta(
            "method stock: login user of the source AMI.",
            lambda v, _: None if USER_NAME.fullmatch(v) else f"{v!r} is not a user name",
        ),
    )
    encrypt_boot: bool = field(
        default=True, metadata=meta("Encrypt the AMI's snapshot (EBS default key).")
    )
    force_deregister: bool = field(
        default=False,
        metadata=meta(
            "method import: replace an AMI of the same name (names are unique per build)."
        ),
    )
    ssh_cidrs: list[str] = field(
        default_factory=list,
        metadata=meta(
            "method stock: who may reach the builder's SSH port; empty = the caller's public "
            "IP/32 (asked from checkip.amazonaws.com at build time, as Packer's option does).",
            None,
            _public_cidr,
        ),
    )


@dataclass(frozen=True)
class Vm:
    formats: list[str] = field(
        default_factory=lambda: list(VM_FORMATS),
        metadata=meta("Outputs besides the qcow2 base.", None, _one_of(*VM_FORMATS)),
    )
    disk_gb: int = field(default=6, metadata=meta("Virtual disk size.", _between(2, 2048)))
    memory_mb: int = field(default=2048, metadata=meta("Guest memory.", _between(256, 1048576)))
    cpus: int = field(default=2, metadata=meta("Guest vCPUs.", _between(1, 256)))
    packages: list[str] = field(
        default_factory=lambda: list(DEFAULT_VM_PACKAGES),
        metadata=meta(
            "VM-only OS packages (kernel, init, SSH, ...), locked in their own section.",
            None,
            _debian_name,
        ),
    )
    ami: Ami | None = field(default=None, metadata=meta("amazon-ebs settings (`--target ami`)."))


def _regex(v: str, _: Context) -> str | None:
    try:
        re.compile(v)
    except re.error as e:
        return f"{v!r} is not a regular expression ({e})"
    return None


@dataclass(frozen=True)
class Service:
    port: int = field(metadata=meta("TCP port the app listens on, inside the artifact.",
                                    _between(1, 65535)))  # fmt: skip
    path: str = field(
        default="/",
        metadata=meta(
            "HTTP path requested with GET, inside each artifact.",
            _pattern(r"/[A-Za-z0-9._~!$&'()*+,;=:@/?%-]*", "an HTTP path starting with /"),
        ),
    )
    status: int = field(default=200, metadata=meta("Expected HTTP status.", _between(100, 599)))
    start_s: int = field(
        default=180,
        metadata=meta(
            "Seconds the service may take to open its port (TCG VMs start slowly); no answer "
            "by then is a failure.",
            _between(1, 3600),
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
            _regex,
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


@dataclass(frozen=True)
class Spec:
    name: str = field(
        metadata=meta(
            "Artifact name.",
            _pattern(r"[a-z0-9][a-z0-9-]{0,62}", "a lower-case name (a-z, 0-9, -)"),
        )
    )
    version: str = field(
        metadata=meta(
            "Artifact version; the image tag.",
            lambda v, _: (
                None
                if OCI_TAG.fullmatch(v) and v[0].isalnum()
                else (f"{v!r} is not a valid image tag (letters, digits, '.', '_', '-'; up to 128)")
            ),
        )
    )
    entrypoint: list[str] = field(
        metadata=meta("Exec-form command; the container ENTRYPOINT and the VM service.", _non_empty)
    )
    base: Base = field(default_factory=Base, metadata=meta("Where OS packages come from."))
    packages: list[str] = field(
        default_factory=list,
        metadata=meta("Top-level OS packages for both artifacts.", None, _debian_name),
    )
    python: Python | None = field(
        default_factory=Python, metadata=meta("Python venv from locked wheels; `null` for none.")
    )
    stacks: list[str] = field(
        default_factory=list,
        metadata=meta("Model-stack roles under `ansible/roles/`.", None, _known_stack),
    )
    gpu: Gpu | None = field(default=None, metadata=meta("GPU profile; `null` for CPU only."))
    app: App | None = field(default=None, metadata=meta("Application files; `null` for none."))
    user: str = field(
        default="app",
        metadata=meta(
            "Runtime user (created, non-root).",
            lambda v, _: (
                None
                if USER_NAME.fullmatch(v) and v != "root"
                else f"{v!r} is not a valid non-root user name"
            ),
        ),
    )
    cmd: list[str] = field(default_factory=list, metadata=meta("Default arguments (CMD)."))
    env: dict[str, str] = field(
        default_factory=dict,
        metadata=meta("Environment for both artifacts; thread variables default to 1.", _env_names),
    )
    container: Container = field(default_factory=Container, metadata=meta("Container settings."))
    vm: Vm = field(default_factory=Vm, metadata=meta("VM settings."))
    verify: Verify = field(
        default_factory=Verify, metadata=meta("What `invoke verify` runs besides its own checks.")
    )
    project_root: str = field(
        default=".",
        metadata=meta(
            "Folder (relative to the spec) that `app.src` and `python.requirements` must stay "
            "inside; `..` lets examples share files.",
            _existing("dir"),
        ),
    )
    # Not user fields: where the spec came from and the line of every field path.
    path: Path = field(default=Path("imagebuild.yaml"), compare=False, metadata={"internal": True})
    lines: dict[str, int] = field(
        default_factory=dict, compare=False, repr=False, metadata={"internal": True}
    )

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def python_version(self) -> str:
        return SUITE_PYTHON[self.base.suite]

    @property
    def repository(self) -> str:
        return self.container.repository or f"local/{self.name}"

    @property
    def runtime_env(self) -> dict[str, str]:
        """`env` with the thread defaults filled in: the same in both artifacts."""
        return {**{k: "1" for k in THREAD_VARS}, **self.env}

    def where(self, path: str) -> str:
        """`FILE:LINE` of a field path, falling back to its closest located parent."""
        p = path
        while p and p not in self.lines:
            p = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", p) if re.search(r"[.\[]", p) else ""
        return f"{self.path}:{self.lines.get(p, 1)}"

    def error(self, path: str, message: str) -> SpecError:
        return SpecError(self.where(path), path, message)


# --- parsing -------------------------------------------------------------------------------------


@dataclass
class Context:
    path: Path
    base_dir: Path
    lines: dict[str, int] = field(default_factory=dict)
    errors: list[SpecError] = field(default_factory=list)

    def fail(self, node: yaml.Node, path: str, message: str) -> None:
        self.errors.append(SpecError(f"{self.path}:{node.start_mark.line + 1}", path, message))


_TAGS = {str: ("str", "a string"), int: ("int", "an integer"), bool: ("bool", "a boolean")}
_INVALID = object()  # marks a value that already produced an error


def _join(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"{node.tag.rsplit(':', 1)[-1]} {node.value!r}"


def _convert(tp: Any, node: yaml.Node, path: str, ctx: Context) -> Any:
    ctx.lines.setdefault(path, node.start_mark.line + 1)
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return None
        return _convert(next(a for a in args if a is not type(None)), node, path, ctx)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, node, path, ctx)
    if origin is list:
        if not isinstance(node, yaml.SequenceNode):
            ctx.fail(node, path, f"must be a list, got {_describe(node)}")
            return _INVALID
        return [_convert(args[0], item, _join(path, i), ctx) for i, item in enumerate(node.value)]
    if origin is dict:
        if not isinstance(node, yaml.MappingNode):
            ctx.fail(node, path, f"must be a mapping, got {_describe(node)}")
            return _INVALID
        out = {}
        for k, v in node.value:
            if CONTROL.search(str(k.value)):
                ctx.fail(k, _join(path, repr(k.value)), "key contains a control character")
            out[k.value] = _convert(args[1], v, _join(path, k.value), ctx)
        return out
    tag, want = _TAGS[tp]
    if not isinstance(node, yaml.ScalarNode) or not node.tag.endswith(":" + tag):
        hint = " (quote it)" if tp is str and isinstance(node, yaml.ScalarNode) else ""
        ctx.fail(node, path, f"must be {want}, got {_describe(node)}{hint}")
        return _INVALID
    if tp is str and CONTROL.search(node.value):
        # A newline would add a line to the VM's unit or the wrapper; nothing legitimate needs one.
        ctx.fail(node, path, f"{node.value!r} contains a control character (newline, tab, ...)")
        return _INVALID
    return int(node.value, 0) if tp is int else node.value


def _run_check(check: Check, value: Any, node: yaml.Node, path: str, ctx: Context) -> None:
    if check is not None and value is not _INVALID and value is not None:
        message = check(value, ctx)
        if message:
            ctx.fail(node, path, message)


def _build(cls: type, node: yaml.Node, path: str, ctx: Context) -> Any:
    if not isinstance(node, yaml.MappingNode):
        ctx.fail(node, path or "(top level)", f"must be a mapping, got {_describe(node)}")
        return _INVALID
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    given: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for k, v in node.value:
        key = str(k.value)
        if key in given:
            ctx.fail(k, _join(path, key), "duplicate key")
        elif key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(fields)}"
            ctx.fail(k, _join(path, key), f"unknown key{hint}")
        given[key] = (k, v)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        fpath = _join(path, name)
        if name not in given:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                ctx.fail(node, fpath, "missing required field")
            continue
        _, vnode = given[name]
        value = _convert(hints[name], vnode, fpath, ctx)
        _run_check(f.metadata.get("check"), value, vnode, fpath, ctx)
        if f.metadata.get("item_check") and isinstance(value, list):
            for i, (item, inode) in enumerate(zip(value, vnode.value, strict=True)):
                _run_check(f.metadata["item_check"], item, inode, _join(fpath, i), ctx)
        values[name] = value
    if any(v is _INVALID for v in values.values()) or ctx.errors:
        return _INVALID
    return cls(**values)


def _cross_checks(spec: Spec, ctx: Context) -> None:
    """Rules that span fields; reported at the line of the field they blame."""

    def fail(path: str, message: str) -> None:
        ctx.errors.append(spec.error(path, message))

    for fld, value in (
        ("app.src", spec.app.src if spec.app else None),
        ("python.requirements", spec.python.requirements if spec.python else None),
    ):
        if value is not None and (problem := _outside_root(spec, value)):
            fail(fld, problem)  # fmt: skip
    if spec.entrypoint and not spec.entrypoint[0].startswith("/"):
        fail(
            "entrypoint[0]",
            f"{spec.entrypoint[0]!r} must be an absolute path (exec form, no shell)",
        )
    if spec.gpu and "non-free" not in spec.base.components:
        fail("base.components", "gpu: needs the 'non-free' component for the NVIDIA driver")
    if spec.vm.ami and spec.vm.ami.method == "stock" and not spec.vm.ami.source_ami:
        fail("vm.ami.source_ami", "missing: vm.ami.method stock starts from a stock AMI")
    for i, s in enumerate(spec.stacks):
        info = roles.role(s).variant(bool(spec.gpu))
        if spec.stacks.index(s) != i:
            fail(f"stacks[{i}]", f"{s!r} is listed twice")
        elif info.needs_gpu and not spec.gpu:
            fail(f"stacks[{i}]", f"{s!r} needs a `gpu:` profile (it installs the NVIDIA stack)")
        elif info.python and spec.python is None:
            fail(f"stacks[{i}]", f"{s!r} installs Python packages but `python:` is null")
    if spec.gpu:
        # The guard and verify's GPU checks read what these two roles install.
        missing = [r for r in GPU_ROLES if r not in spec.stacks]
        if missing:
            fail("gpu", f"a GPU profile needs the stacks {', '.join(missing)} (add to `stacks:`)")
        tables = roles.role("cuda_runtime").cuda_wheels
        if spec.gpu.cuda not in tables:
            fail("gpu.cuda", f"{spec.gpu.cuda!r}: role cuda_runtime has the CUDA user space of "
                             f"{', '.join(tables)} (meta/imagebuild.yml, cuda_wheels)")  # fmt: skip
        for i, s in enumerate(spec.stacks):
            unknown = set(roles.role(s).variant(True).cuda) - set(tables.get(spec.gpu.cuda, {}))
            if unknown and spec.gpu.cuda in tables:
                fail(f"stacks[{i}]", f"{s!r} needs CUDA components cuda_runtime does not have: "
                                     f"{', '.join(sorted(unknown))}")  # fmt: skip


def load(path: str | Path) -> Spec:
    """Parse and validate a spec file; raise SpecError (exit 2) listing every problem found."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(str(path), "", "spec file not found (pass --spec PATH)") from None
    except OSError as e:
        raise SpecError(str(path), "", f"cannot read spec: {e.strerror}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        raise SpecError(f"{path}:{line}", "", f"YAML syntax error: {e.problem}") from None
    if root is None:
        raise SpecError(f"{path}:1", "", "spec is empty")
    ctx = Context(path=path, base_dir=path.parent)
    spec = _build(Spec, root, "", ctx)
    if spec is not _INVALID:
        spec = dataclasses.replace(spec, path=path, lines=ctx.lines)
        _cross_checks(spec, ctx)
    if ctx.errors:
        raise SpecError.many(sorted(ctx.errors, key=lambda e: int(e.where.rsplit(":", 1)[1])))
    return spec


# --- documentation from the same table ------------------------------------------------------------


def _type_name(tp: Any) -> str:
    args = [a for a in get_args(tp) if a is not type(None)]
    if get_origin(tp) in (Union, types.UnionType):
        return f"{_type_name(args[0])} or null"
    if args:
        return f"{tp.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return "mapping" if dataclasses.is_dataclass(tp) else tp.__name__


def reference(cls: type = Spec, prefix: str = "") -> list[str]:
    """Markdown rows `| field | type | default | meaning |` for the README."""
    rows = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        tp = hints[f.name]
        inner = next((a for a in get_args(tp) if dataclasses.is_dataclass(a)), tp)
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            made = f.default_factory()
            default = "see below" if dataclasses.is_dataclass(made) else repr(made)
        else:
            default = "required"
        rows.append(
            f"| `{prefix}{f.name}` | {_type_name(tp)} | `{default}` | {f.metadata['doc']} |"
        )
        if isinstance(inner, type) and dataclasses.is_dataclass(inner):
            rows += reference(inner, f"{prefix}{f.name}.")
    return rows


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        print("| field | type | default | meaning |\n|---|---|---|---|")
        print("\n".join(reference()))
