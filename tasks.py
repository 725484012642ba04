"""imagebuild's command line: `invoke --list`, `invoke <task> --help`.

Tasks are thin: parse the spec once, call one stage module, turn its errors into exit codes
(2 spec error, 3 stale lock, 1 anything else, 130 interrupted).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from invoke import Collection, task
from invoke.exceptions import Exit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imagebuild import fetch as fetching  # noqa: E402
from imagebuild import lock as locking  # noqa: E402
from imagebuild import plan as planning  # noqa: E402
from imagebuild import progress  # noqa: E402
from imagebuild.cache import Cache, default_root  # noqa: E402
from imagebuild.errors import ImageBuildError  # noqa: E402
from imagebuild.spec import Spec, load  # noqa: E402

DEFAULT_SPEC = "imagebuild.yaml"
COMMON_HELP = {
    "spec": "Path to the spec (default ./imagebuild.yaml).",
    "cache-dir": "Cache root (default $IMAGEBUILD_CACHE or ~/.cache/imagebuild).",
}


def _cache(cache_dir: str | None) -> Cache:
    return Cache(Path(cache_dir) if cache_dir else default_root())


def cli(**helps: str) -> Callable[[Callable[..., Any]], Any]:
    """A task with the common options documented and errors mapped to exit codes."""

    def wrap(fn: Callable[..., Any]) -> Any:
        @functools.wraps(fn)
        def run(c: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(c, *args, **kwargs)
            except ImageBuildError as e:
                raise Exit(f"error: {e}", code=e.exit_code) from None
            except KeyboardInterrupt:
                raise Exit("interrupted; partial outputs were removed", code=130) from None

        return task(help={**COMMON_HELP, **helps}, auto_shortflags=False)(run)

    return wrap


def _load(spec: str) -> Spec:
    return load(spec)


@cli(check="Do not resolve: exit 3 if the lock no longer matches the spec, naming what changed.")
def lock(c, spec=DEFAULT_SPEC, cache_dir=None, check=False):
    """Resolve OS packages and Python wheels once; write <spec>.lock next to the spec."""
    s = _load(spec)
    if check:
        lk = locking.load_fresh(s)
        print(
            f"{lk.path}: up to date ({len(lk.shared)} shared, {len(lk.vm)} VM-only, "
            f"{len(lk.python)} Python)"
        )
        return
    new = locking.resolve(s, _cache(cache_dir))
    path = locking.path_for(s)
    unchanged = path.is_file() and path.read_text() == locking.lockfile.render(new)
    locking.write(new)
    progress.say(f"lock: {'unchanged' if unchanged else 'wrote'} {path}")


@cli()
def fetch(c, spec=DEFAULT_SPEC, cache_dir=None):
    """Download every locked .deb and wheel (sha256-verified) and make the offline repos."""
    s = _load(spec)
    r = fetching.fetch(locking.load_fresh(s), _cache(cache_dir))
    print(
        f"fetched {r.downloaded} ({r.bytes_downloaded / 1e6:.1f} MB), reused {r.reused}\n"
        f"apt repo (container): {r.repo_shared}\napt repo (vm): {r.repo_vm}\n"
        f"wheelhouse: {r.wheelhouse}"
    )


@cli(dist="Output folder of the builds (default ./dist).")
def plan(c, spec=DEFAULT_SPEC, cache_dir=None, dist="dist"):
    """Dry-run: show what would be built and what is cached; builds nothing."""
    p = planning.make_plan(_load(spec), _cache(cache_dir), Path(dist))
    print(p.render())
    if not p.ok:
        raise Exit(code=3)


def _prepare(spec: str, cache_dir: str | None, label: str) -> tuple[Spec, Any, Cache, Any]:
    """Spec, fresh lock, cache and the verified local sources every build starts from."""
    s = _load(spec)
    lk = locking.load_fresh(s)
    cache = _cache(cache_dir)
    with progress.stage(f"{label}: verify cache"):
        fetched = fetching.local_sources(lk, cache)
    return s, lk, cache, fetched


@cli(dist="Output folder (default ./dist).")
def build_container(c, spec=DEFAULT_SPEC, cache_dir=None, dist="dist"):
    """Build the layered, reproducible Docker image from the spec and its lock."""
    from imagebuild.build import container

    r = container.build(*_prepare(spec, cache_dir, "build-container"), Path(dist))
    for st in r.stages:
        state = "cached" if st.reused else f"built in {st.seconds}s, changed={st.changed}"
        print(f"layer {st.name:<7} sha256:{st.diff_id[:12]}  {st.size / 1e6:8.1f} MB  {state}")
    print(f"image {r.tag} sha256:{r.image_id}" + ("  (nothing changed)" if r.noop else ""))
    print(
        f"oci archive {r.oci_archive} ({r.manifest_digest})\npackages {r.packages_file}\n"
        f"sbom {r.sbom_file}"
    )


@cli(
    dist="Output folder (default ./dist).",
    target="qemu (default: qcow2/OVA/Vagrant box, built here) or ami (amazon-ebs; needs AWS "
    "credentials, validated offline without them).",
    on_error="cleanup (default) or abort: keep the failed VM and its disk, as Packer's "
    "-on-error=abort.",
)
def build_vm(c, spec=DEFAULT_SPEC, cache_dir=None, dist="dist", target="qemu", on_error="cleanup"):
    """Build the VM images with Packer (qemu, TCG unless KVM works) from the spec and its lock,
    provisioned by the container's playbook."""
    from imagebuild.build import vm

    if target not in vm.TARGETS:
        raise Exit(f"error: --target: {target!r} is not one of {', '.join(vm.TARGETS)}", code=2)
    if on_error not in vm.ON_ERROR:
        raise Exit(f"error: --on-error: {on_error!r} is not one of {', '.join(vm.ON_ERROR)}", 2)
    r = vm.build(*_prepare(spec, cache_dir, "build-vm"), Path(dist), target, on_error)
    if r.base_disk:
        state = "cached" if r.base_disk.reused else f"built in {r.base_disk.seconds}s"
        print(f"base disk sha256:{r.base_disk.sha256[:12]} kernel {r.base_disk.kernel} ({state})")
    if r.noop:
        print("vm: nothing changed")
    for name, path in r.outputs.items():
        print(f"{name:<16} {path}")
    for k, v in r.parity.items():
        print(f"parity {k}: {v}")
    if r.seconds:
        print("seconds " + ", ".join(f"{k} {v}" for k, v in r.seconds.items()))


@cli(
    dist="Output folder of the builds (default ./dist); the report goes to DIST/verify/.",
    container="Image to verify (default: REPOSITORY:VERSION from the spec).",
    vm="qcow2 to verify (default: DIST/NAME-VERSION.qcow2).",
    backend="auto (default: libvirt qemu:///system, else plain QEMU), libvirt or qemu.",
)
def verify(c, spec=DEFAULT_SPEC, cache_dir=None, dist="dist", container=None, vm=None,
           backend="auto"):  # fmt: skip
    """Prove the container and the VM are the same where it matters: one testinfra suite over
    docker:// and ssh://, a parity table, report.json + junit.xml; exit 1 naming each difference."""
    from imagebuild.verify import run as verifying

    if backend not in ("auto", "libvirt", "qemu"):
        raise Exit(f"error: --backend: {backend!r} is not one of auto, libvirt, qemu", code=2)
    s = _load(spec)
    locking.load_fresh(s)
    r = verifying.verify(s, Path(dist), container, Path(vm) if vm else None, backend)
    print(r.table, end="")
    counts = {
        o: sum(row.get("outcome") == o for row in r.rows) for o in ("passed", "failed", "skipped")
    }
    print(
        "verify: "
        + ", ".join(f"{n} {o}" for o, n in counts.items())
        + "; "
        + ", ".join(f"{k} {v}s" for k, v in r.seconds.items())
        + f"; report {r.out_dir}/report.json, junit {r.out_dir}/junit.xml"
    )
    if not r.ok:
        bad = [row for row in r.rows if row.get("outcome") == "failed"]
        names = "\n".join(f"  {row['id']}: {row.get('problem', '')}" for row in bad[:30])
        raise Exit(f"error: verify: {len(bad)} item(s) differ or miss expectations:\n{names}", 1)


@cli(
    registry="Registry HOST:PORT (default: container.registry from the spec).",
    dist="Output folder (default ./dist); the pushed reference goes to NAME-VERSION.push.json.",
)
def push(c, spec=DEFAULT_SPEC, cache_dir=None, registry=None, dist="dist"):
    """Push the built image and print its reference by digest (REGISTRY/REPO@sha256:...)."""
    from imagebuild.push import push as pushing

    r = pushing(_load(spec), registry, Path(dist))
    print(f"pushed {r.reference} (image {r.image_id})")


@cli()
def all(c, spec=DEFAULT_SPEC, cache_dir=None):  # noqa: A001 - the task's name on the CLI
    """The main job: lock, fetch, plan, build-container, build-vm, verify."""
    lock(c, spec=spec, cache_dir=cache_dir)
    fetch(c, spec=spec, cache_dir=cache_dir)
    plan(c, spec=spec, cache_dir=cache_dir)
    build_container(c, spec=spec, cache_dir=cache_dir)
    build_vm(c, spec=spec, cache_dir=cache_dir)
    verify(c, spec=spec, cache_dir=cache_dir)


ns = Collection(lock, fetch, plan, build_container, build_vm, verify, push, all)
