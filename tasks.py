"""imagebuild's command line: `invoke --list`, `invoke <task> --help`.

Tasks are thin: parse the spec once, call one stage module, turn its errors into exit codes
(2 spec error, 3 stale lock, 1 anything else, 130 interrupted).
"""

from __future__ import annotations

import functools
import inspect
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invoke import Collection, task
from invoke.exceptions import Exit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imagebuild import (
    distlock,  # noqa: E402
    distnames,  # noqa: E402
    emulation,  # noqa: E402
    leftovers,  # noqa: E402
    machines,  # noqa: E402
    profile,  # noqa: E402
    progress,  # noqa: E402
    signing,  # noqa: E402
)
from imagebuild import fetch as fetching  # noqa: E402
from imagebuild import lock as locking  # noqa: E402
from imagebuild import scan as scanning  # noqa: E402
from imagebuild.cache import Cache, default_root  # noqa: E402
from imagebuild.errors import ImageBuildError, OptionError, SpecError, Terminated  # noqa: E402
from imagebuild.inputs import Inputs, prepare  # noqa: E402
from imagebuild.project import Project  # noqa: E402
from imagebuild.registry_cache import RegistryCache  # noqa: E402
from imagebuild.spec import Spec, option_problem  # noqa: E402
from imagebuild.spec_sections import HOST_ARCH  # noqa: E402

if TYPE_CHECKING:  # securesystemslib is imported only when a key is used
    from securesystemslib.signer import Signer

DEFAULT_SPEC = "imagebuild.yaml"
COMMON_HELP = {
    "spec": "Path to the spec (default ./imagebuild.yaml).",
    "cache-dir": "Cache root (default $IMAGEBUILD_CACHE or ~/.cache/imagebuild).",
}


def _cache(cache_dir: str | None) -> Cache:
    return Cache(Path(cache_dir) if cache_dir else default_root())


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def cli(
    optional: tuple[str, ...] = (),
    shared: Mapping[str, str] | None = None,
    iterable: tuple[str, ...] = (),
    **helps: str,
) -> Callable[[Callable[..., Any]], Any]:
    """A task with the common options documented and errors mapped to exit codes; `optional`
    names flags that may be given with or without a value; `shared`: helps of options several
    tasks have; `iterable`: options that may be repeated."""

    def wrap(fn: Callable[..., Any]) -> Any:
        @functools.wraps(fn)
        def run(c: Any, *args: Any, **kwargs: Any) -> Any:
            signal.signal(signal.SIGTERM, _on_sigterm)
            profile.mark_started()
            try:
                return fn(c, *args, **kwargs)
            except ImageBuildError as e:
                raise Exit(f"error: {e}", code=e.exit_code) from None
            except Terminated:
                raise Exit("terminated (SIGTERM); partial outputs were removed", code=143) from None
            except KeyboardInterrupt:
                raise Exit("interrupted; partial outputs were removed", code=130) from None

        params = inspect.signature(fn).parameters
        common = {k: v for k, v in COMMON_HELP.items() if k.replace("-", "_") in params}
        return task(
            help={**common, **(shared or {}), **helps},
            optional=list(optional),
            iterable=list(iterable),
            auto_shortflags=False,
        )(run)

    return wrap


@cli(
    optional=("update",),
    check="Do not resolve: exit 3 if the lock no longer matches the spec, naming what changed.",
    update="Re-resolve and say what moved. Alone: everything. With NAME[,NAME...] (Debian or "
    "Python names): only those and what they drag in; the rest keep their locked versions.",
    dry_run="With --update (or a plain re-resolve): print what would move, write nothing.",
)
def lock(c, spec=DEFAULT_SPEC, cache_dir=None, check=False, update=None, dry_run=False):
    """Resolve OS packages and Python wheels; write <spec>.lock next to the spec. Only this task
    resolves (and `all` when there is no lock yet): every other task uses the lock as it is."""
    p = Project.named(spec)
    if check:
        lk = p.lock
        counts = [
            f"{a}: {len(s.shared)} shared, {len(s.vm)} VM-only, {len(s.python)} Python"
            for a, s in lk.foreign.items()
        ]
        print(
            f"{lk.path}: up to date ({len(lk.shared)} shared, {len(lk.vm)} VM-only, "
            f"{len(lk.python)} Python{''.join(f'; {c}' for c in counts)})"
        )
        return
    names = None
    if isinstance(update, str) and update:
        names = {n.strip() for n in update.split(",") if n.strip()}
        unknown = locking.unknown_names(p.req, names)
        OptionError.check(
            bool(unknown) and f"--update: {', '.join(unknown)} not in {locking.path_for(p.spec)}"
        )
    *moved, done = locking.relock(p.req, _cache(cache_dir), names, dry_run)
    if moved:
        print("\n".join(moved))
    progress.say(done)


@cli(
    export="Also write every blob the lock needs (verified) into this archive (a tar).",
    import_="First load blobs from an archive made by --export (each sha256 checked against "
    "the lock); then nothing it held is downloaded.",
)
def fetch(c, spec=DEFAULT_SPEC, cache_dir=None, export=None, import_=None):
    """Download every locked .deb and wheel (sha256-verified) and make the offline repos."""
    lk = Project.named(spec).lock
    cache = _cache(cache_dir)
    with cache.exclusive("fetch"):
        leftovers.sweep(cache, "fetch")
        if import_:
            n = fetching.import_archive(lk, cache, Path(import_))
            print(f"imported {n} blobs from {import_}")
        r = fetching.fetch(lk, cache)
    print(
        f"fetched {r.downloaded} ({r.bytes_downloaded / 1e6:.1f} MB), reused {r.reused}\n"
        f"apt repo (container): {r.repo_shared}\napt repo (vm): {r.repo_vm}\n"
        f"wheelhouse: {r.wheelhouse}"
    )
    if export:
        n = fetching.export_archive(lk, cache, Path(export))
        print(f"exported {n} blobs to {export}")


@cli(dist="Output folder of the builds (default ./dist).")
def plan(c, spec=DEFAULT_SPEC, cache_dir=None, dist="dist"):
    """Dry-run: show what would be built and what is cached; builds nothing."""
    from imagebuild import plan as planning

    p = planning.make_plan(Project.named(spec), _cache(cache_dir), Path(dist))
    print(p.render())
    if not p.ok:
        raise Exit(code=3)


SCAN_HELP = {
    "fail-on": "Exit 1 when a finding is at or above this severity: unknown, low, medium, high "
    "or critical (default: report only).",
    "max-db-age": "Refuse a database whose newest record is older than this many days (default "
    "7; 0: accept any age).",
}


BUILD_HELP = {
    "cache-from": "Registry repository (HOST[:PORT]/PATH) to pull stages and base disks from "
    "before building them (default: cache.registry).",
    "cache-to": "Registry repository to push the stages and base disk this build made or found "
    "(default: cache.registry when cache.push).",
    "cache-required": "Fail when the registry cache cannot be reached or refuses (default: "
    "cache.required; else a warning and a local build).",
    "cache-push": "auto (default: --cache-to, else cache.registry when cache.push) or never: "
    "push nothing, whatever the spec says (a pull request's spec is its author's).",
    "sign-key": signing.HELP,
    "scan": "Scan the lock first against this OSV all.zip export (repeat for several; see "
    "`invoke scan`): with --fail-on a finding stops the build before anything runs; the "
    "findings are written beside the artifacts, the statement signed with --sign-key.",
    **SCAN_HELP,
}
BACKENDS = ("auto", "libvirt", "qemu")


def _say_registry(inputs: Inputs) -> None:
    remote = inputs.remote
    if remote.pull_from or remote.push_to:
        print(f"registry cache: pulled {len(remote.pulled)}, pushed {len(remote.pushed)}")


@contextmanager
def _prepare(
    spec: str | Project,
    cache_dir: str | None,
    label: str,
    remote: tuple[str | None, str | None, bool, str],
    dist: str,
    sign_key: str | None = None,
    arches: Sequence[str] = (HOST_ARCH,),
) -> Iterator[list[Inputs]]:
    """What every build starts from, resolved once (spec, fresh lock, what the roles add, every
    key, the cache, the registry cache, the verified local sources), one per architecture of
    `arches`; the dist folder, then the cache, are this build's alone until the body returns (a
    second build, verify or push waits)."""
    signer = signing.load(sign_key)  # a key that cannot sign is refused before anything runs
    p = Project.named(spec)
    s, lk = p.spec, p.lock
    cache = _cache(cache_dir)
    registry = RegistryCache.chosen(s.cache, *remote)
    with distlock.exclusive(Path(dist), label), cache.exclusive(label):
        for arch in arches:  # before anything runs
            emulation.require(arch)
        leftovers.sweep(cache, label)
        views = [lk.for_arch(a) for a in arches]
        with progress.stage(f"{label}: verify cache"):
            fetched = [fetching.local_sources(v, cache) for v in views]
        if unbuilt := [a for a in s.base.architectures if a not in arches]:
            progress.say(f"{label}: {', '.join(unbuilt)}: locked and fetched, not built")
        if registry.pull_from or registry.push_to:
            progress.say(f"{label}: {registry.describe()}")
        pairs = zip(views, fetched, strict=True)
        yield [prepare(p.req, v, cache, f, registry, signer) for v, f in pairs]


ARCH_HELP = "Build only this one of base.architectures (default: each of them)."


def _made_as(p: Project, arch: str, task: str) -> Project:
    """Another architecture's VM, as it is made: its disk-only formats (said when some are
    left out)."""
    from imagebuild.builders.targets import made_as

    kept, skipped = made_as(p.spec, arch)
    if skipped:
        progress.say(
            f"{task}: {arch}: vm.formats {', '.join(skipped)} describe "
            f"{HOST_ARCH} hardware: made as {', '.join(kept.vm.formats)} only"
        )
    return Project(kept)


def _arches(spec: Spec, arch: str | None) -> tuple[str, ...]:
    """The architectures a container build makes: `--arch`, else every one the spec lists."""
    if arch is None:
        return tuple(spec.base.architectures)
    OptionError.check(
        arch not in spec.base.architectures
        and f"--arch {arch!r}: not one of base.architectures {spec.base.architectures}"
    )
    return (arch,)


@cli(
    dist="Output folder (default ./dist; another architecture's outputs: DIST/ARCH/).",
    arch=ARCH_HELP,
    shared=BUILD_HELP,
    iterable=("scan",),
)
def build_container(
    c,
    spec=DEFAULT_SPEC,
    cache_dir=None,
    dist="dist",
    arch=None,
    cache_from=None,
    cache_to=None,
    cache_required=False,
    cache_push="auto",
    sign_key=None,
    scan=None,
    fail_on=None,
    max_db_age=7,
):
    """Build the layered, reproducible Docker image from the spec and its lock (each
    architecture of base.architectures; another than this host's under emulation)."""
    from imagebuild.builders import container

    p = Project.named(spec)
    arches = _arches(p.spec, arch)
    found = _scan_first(p, scan, fail_on, max_db_age, arches)
    remote = (cache_from, cache_to, cache_required, cache_push)
    with _prepare(p, cache_dir, "build-container", remote, dist, sign_key, arches) as every:
        made = [container.build(i, distnames.arch_dir(Path(dist), i.lock.arch)) for i in every]
        if found:  # beside each architecture's image, of its own lock section
            _write_scan(found, p, dist, every[0].signer, (distnames.CONTAINER_PROVENANCE,))
    _say_registry(every[0])
    print("\n".join(r.render() for r in made))


@cli(
    dist="Output folder (default ./dist).",
    target="qemu (default: vm.formats, built here), ami (the same qcow2 as an EBS snapshot + "
    "AMI, vm.ami; needs AWS credentials from the standard chain) or gce (the gce format "
    "uploaded to vm.gce.bucket + the images.insert request written; Google's standard chain).",
    on_error="cleanup (default) or abort: keep the failed VM and its disk, as Packer's "
    "-on-error=abort.",
    aws_region="--target ami: AWS region (default vm.ami.region).",
    arch="The VM's architecture, one of base.architectures (default: this host's; another one "
    "is booted under full-system emulation and written to DIST/ARCH/).",
    shared=BUILD_HELP,
    iterable=("scan",),
)
def build_vm(
    c,
    spec=DEFAULT_SPEC,
    cache_dir=None,
    dist="dist",
    target="qemu",
    on_error="cleanup",
    aws_region=None,
    arch=None,
    cache_from=None,
    cache_to=None,
    cache_required=False,
    cache_push="auto",
    sign_key=None,
    scan=None,
    fail_on=None,
    max_db_age=7,
):
    """Build the VM images with Packer (qemu, TCG unless KVM works) from the spec and its lock,
    provisioned by the container's playbook."""
    from imagebuild.builders.targets import TARGETS, Options, spec_problems

    options = Options(on_error, aws_region)
    OptionError.check(*options.problems(target))
    p = Project.named(spec)
    arches = _arches(p.spec, arch or HOST_ARCH)
    if problems := spec_problems(target, p.spec, arches[0]):
        raise SpecError.many(problems)
    if arches != (HOST_ARCH,):
        machines.of(arches[0])  # refused before anything runs if this host cannot boot it
        p = _made_as(p, arches[0], "build-vm")
    stock = target == "ami" and p.spec.vm.ami is not None and p.spec.vm.ami.method == "stock"
    OptionError.check(
        bool(scan)
        and stock
        and "--scan: a stock AMI (vm.ami.method: stock) is built on AWS, from another image: "
        "nothing built here to write the findings beside; run `invoke scan` instead"
    )
    found = _scan_first(p, scan, fail_on, max_db_age, arches)
    remote = (cache_from, cache_to, cache_required, cache_push)
    with _prepare(p, cache_dir, "build-vm", remote, dist, sign_key, arches) as (inputs,):
        r = TARGETS[target](inputs, distnames.arch_dir(Path(dist), arches[0]), options)
        if found:
            kinds = (distnames.VM_PROVENANCE, distnames.AMI_PROVENANCE)
            _write_scan(found, p, dist, inputs.signer, kinds)
    _say_registry(inputs)
    if text := r.render():
        print(text)


@cli(
    dist="Output folder of the builds (default ./dist); the report goes to DIST/verify/.",
    container="Image to verify (default: REPOSITORY:VERSION from the spec; with --arch A of "
    "another architecture: REPOSITORY:VERSION-A).",
    vm="VM artifact to verify: the qcow2, the Vagrant box, the OVA, the VHD, the GCE tarball or "
    "the raw disk (its disk is booted, and compared with the qcow2 beside it; default: "
    "DIST/NAME-VERSION.qcow2; another architecture's: DIST/A/NAME-VERSION.qcow2).",
    backend="auto (default: libvirt, else plain QEMU), libvirt or qemu.",
    libvirt_uri="libvirt to boot the VM with (default qemu:///system; qemu:///session: a user's "
    "own; it must be on this host: verify reaches the VM on 127.0.0.1).",
    vm_seed="A NoCloud seed ISO (cloud-localds) to boot the VM with, as your platform would "
    "(libvirt only); the login verify itself uses stays systemd's credential.",
    sign_key=signing.HELP.replace("the provenance", "the equivalence attestation"),
    attestation="Boot nothing: check this equivalence attestation (DIST/verify/"
    "equivalence.intoto.jsonl of a verify) offline against the image in the engine and the VM "
    "disk in DIST (or --vm): signature (--public-key), both digests, and that it says PASSED.",
    public_key="With --attestation: the PEM public key (ed25519 or ECDSA P-256) it must be "
    "signed with.",
    arch="The architecture to verify, one of base.architectures (default: this host's): its "
    "image (REPOSITORY:VERSION-ARCH), its VM and report in DIST/ARCH/, both against its own lock "
    "section; another than this host's runs under emulation (its VM under TCG, on its own board).",
)
def verify(
    c,
    spec=DEFAULT_SPEC,
    cache_dir=None,
    dist="dist",
    container=None,
    vm=None,
    backend="auto",
    vm_seed=None,
    libvirt_uri="qemu:///system",
    sign_key=None,
    attestation=None,
    public_key=None,
    arch=None,
):
    """Prove the container and the VM are the same where it matters: one testinfra suite over
    docker:// and ssh://, a parity table, report.json + junit.xml and a (signed) equivalence
    attestation; exit 1 naming each difference. --attestation checks one instead."""
    from imagebuild.verify import run as verifying
    from imagebuild.verify.hosts import local_uri_problem

    if attestation or public_key:  # needs no spec, unless --arch names another DIST folder
        OptionError.check(
            not (attestation and public_key) and "--attestation and --public-key go together"
        )
        if arch is not None:
            (arch,) = _arches(Project.named(spec).spec, arch)
        at = distnames.arch_dir(Path(dist), arch or HOST_ARCH)
        _check_attestation(attestation, public_key, at, Path(vm) if vm else None)
        return
    OptionError.check(
        backend not in BACKENDS and f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}",
        (problem := local_uri_problem(libvirt_uri)) and f"--libvirt-uri: {problem}",
        vm_seed
        and backend == "qemu"
        and "--vm-seed: attached through libvirt only (--backend "
        "auto or libvirt), not with --backend qemu",
    )
    p = Project.named(spec)
    (one,) = _arches(p.spec, arch or HOST_ARCH)
    at = distnames.arch_dir(Path(dist), one)
    signer = signing.load(sign_key)
    p.check()  # a stale lock is refused before anything boots
    with distlock.exclusive(Path(dist), "verify"):
        r = verifying.verify(
            p.for_arch(one),
            at,
            container,
            Path(vm) if vm else None,
            backend,
            Path(vm_seed) if vm_seed else None,
            libvirt_uri,
            _cache(cache_dir).root,
            signer,
        )
    print(r.table, end="")
    print(r.summary())
    if not r.ok:
        raise Exit(f"error: {r.failures()}", 1)


def _check_attestation(statement: str, public_key: str, dist: Path, vm: Path | None) -> None:
    from imagebuild.verify import attestation

    key = signing.load_public("--public-key", public_key)
    r = attestation.check(Path(statement), key, dist, vm)
    print(
        f"attestation {statement}: {r.result}, {r.rows} rows, signed by {r.keyid[:16]}; "
        f"subjects here: {', '.join(r.subjects)}"
    )


@cli(
    iterable=("db",),
    shared=SCAN_HELP,
    db="A vulnerability database: an OSV all.zip export (Debian's, PyPI's, ...); repeat for "
    "several. Read as data, offline.",
    vex="Also write the findings here as a CycloneDX 1.6 VEX document (validated; its "
    "components' bom-refs are the artifacts' SBOMs').",
    dist="Also write, beside the artifacts built there, NAME-VERSION.vex.cdx.json and "
    "NAME-VERSION.scan.intoto.jsonl (the findings as an in-toto vulns statement about them, "
    "signed with --sign-key; push attaches it).",
    sign_key=signing.HELP.replace("the provenance", "the scan's statement (with --dist)"),
    arch="The lock section to scan, one of base.architectures (default: this host's); with "
    "--dist, its findings go beside that architecture's artifacts (DIST/ARCH/).",
)
def scan(
    c,
    spec=DEFAULT_SPEC,
    db=None,
    fail_on=None,
    max_db_age=7,
    vex=None,
    dist=None,
    sign_key=None,
    arch=None,
):
    """The offline CVE gate: every locked .deb (by source package, Debian's version order) and
    wheel (PEP 440) against the --db files; prints each finding (package, installed, fixed in,
    severity, ID); --fail-on gates (after writing what was asked). A pure function of the lock
    and the databases: nothing is downloaded."""
    OptionError.check(
        *scanning.option_problems(db, fail_on, max_db_age),
        sign_key and not dist and "--sign-key: only with --dist (it signs the statement there)",
    )
    signer = signing.load(sign_key) if dist else None
    p = Project.named(spec)
    (one,) = _arches(p.spec, arch or HOST_ARCH)
    lock = p.for_arch(one).lock
    r = scanning.run(lock, [Path(d) for d in db], int(max_db_age))
    print(r.render())
    if vex:
        from imagebuild import sbom
        from imagebuild.cache import atomic_file

        with atomic_file(Path(vex)) as tmp:
            tmp.write_text(sbom.vex(r, lock))
        print(f"vex: {vex}")
    if dist:
        with distlock.exclusive(Path(dist), "scan"):
            _write_scan({one: r}, p, dist, signer)
    scanning.gate(r, fail_on)


def _scan_first(
    p: Project, dbs: list[str], fail_on: str | None, max_db_age: Any, arches: Sequence[str]
) -> dict[str, scanning.Report]:
    """A build's --scan: each built architecture's lock section scanned before anything runs;
    --fail-on stops it there (after every one is printed)."""
    if not dbs:
        OptionError.check(fail_on and "--fail-on: only with --scan")
        return {}
    OptionError.check(*scanning.option_problems(dbs, fail_on, max_db_age, "--scan"))
    found = {}
    for arch in arches:
        found[arch] = scanning.run(p.for_arch(arch).lock, [Path(d) for d in dbs], int(max_db_age))
        print(found[arch].render())
    for r in found.values():
        scanning.gate(r, fail_on)
    return found


def _write_scan(
    reports: Mapping[str, scanning.Report],
    p: Project,
    dist: str,
    signer: Signer | None,
    kinds: tuple[str, ...] | None = None,
) -> None:
    """Each architecture's findings beside its artifacts (DIST, another's DIST/ARCH/;
    `kinds`: of those provenance suffixes; all)."""
    from imagebuild import scan_outputs

    for arch, report in reports.items():
        lock, to = p.for_arch(arch).lock, distnames.arch_dir(Path(dist), arch)
        for path in scan_outputs.write(report, lock, p.spec, to, signer, kinds or scan_outputs.ALL):
            print(f"wrote {path}")


@cli(
    registry="Registry HOST:PORT (default: container.registry from the spec).",
    dist="Output folder (default ./dist); the pushed reference goes to NAME-VERSION.push.json.",
)
def push(c, spec=DEFAULT_SPEC, cache_dir=None, registry=None, dist="dist"):
    """Push the built image and print its reference by digest (REGISTRY/REPO@sha256:...)."""
    from imagebuild.push import push as pushing

    OptionError.check(registry and option_problem("--registry", "container.registry", registry))
    s = Project.named(spec).spec
    with distlock.exclusive(Path(dist), "push"):
        r = pushing(s, registry, Path(dist))
    if r.platforms:  # several architectures: their index, then each one's image
        print(f"pushed {r.reference} (image index: {', '.join(r.platforms)})")
        for arch, ref in r.platforms.items():
            print(f"  {arch}: {ref}")
    else:
        print(f"pushed {r.reference} (image {r.image_id})")
    for tag in r.attached:
        print(f"attached {tag}")


@cli(
    dist="Folder of the builds to check (default ./dist): its SHA256SUMS says what each artifact "
    "must be.",
    check="Compare the rebuilt artifacts with DIST's (rebuild only checks; it never replaces "
    "them). Exit 1 naming each that differs and, for a disk, its differing files.",
    reuse_layers="Take the container's stage layers from this cache (each checked against its "
    "key) and rebuild only the VM's base disk and formats.",
    arch="Which of base.architectures to rebuild (default this host's; another's artifacts are "
    "those in DIST/ARCH/, its VM formats the disk-only ones build-vm made).",
)
def rebuild(
    c,
    spec=DEFAULT_SPEC,
    cache_dir=None,
    dist="dist",
    check=False,
    reuse_layers=False,
    arch=None,
):
    """What an independent rebuilder runs: build the spec again from its lock in a private cache
    (the downloads linked, nothing a build derived) and compare the OCI archive and every VM
    format with DIST/SHA256SUMS. Packer's pass is not rerun: nothing it writes ships."""
    from imagebuild.builders import rebuild as rebuilding
    from imagebuild.builders.targets import spec_problems

    OptionError.check(not check and "--check: required (rebuild compares; the builds build)")
    p = Project.named(spec)
    (one,) = _arches(p.spec, arch or HOST_ARCH)
    if problems := spec_problems("qemu", p.spec, one):  # what build-vm refuses is not rebuilt
        raise SpecError.many(problems)
    if one != HOST_ARCH:
        emulation.require(one)  # before anything runs: its stages run under qemu-user
        p = _made_as(p, one, "rebuild")
    with distlock.exclusive(Path(dist), "rebuild"):
        at = distnames.arch_dir(Path(dist), one)
        found = rebuilding.check(p, _cache(cache_dir), at, reuse_layers, one)
    for f in found:
        print(f.render())
    if differ := [f.name for f in found if not f.same]:
        raise rebuilding.RebuildError(
            f"rebuild --check: {len(differ)} of {len(found)} artifacts differ from {at}: "
            + ", ".join(differ)
        )


@cli()
def all(c, spec=DEFAULT_SPEC, cache_dir=None):  # noqa: A001 - the task's name on the CLI
    """The main job: fetch, plan, build-container, build-vm, verify, from the lock as it is (a
    stale lock is refused; only a missing one is resolved, and then it says it wrote one)."""
    p = Project.named(spec)
    path = locking.path_for(p.spec)
    if path.is_file():
        p.check()  # read and checked here, once: every step below uses this one
        progress.say(f"lock: using {path} as it is (`invoke lock --update` refreshes it)")
    else:
        progress.say(f"lock: no {path} yet: resolving one")
        lock(c, spec=p, cache_dir=cache_dir)
    for step in (fetch, plan, build_container, build_vm, verify):  # spec and lock read once
        step(c, spec=p, cache_dir=cache_dir)


ns = Collection(lock, fetch, plan, build_container, build_vm, verify, rebuild, push, scan, all)
