"""The command line itself: every task listed, documented, and honest about what it does."""

from __future__ import annotations

import re

import pytest

from tests.conftest import run_invoke

TASKS = ["all", "build-container", "build-vm", "fetch", "lock", "plan", "push", "verify"]


def test_list_shows_every_task_with_a_docstring() -> None:
    r = run_invoke("--list")
    assert r.returncode == 0, r.stderr
    for name in TASKS:
        line = next((ln for ln in r.stdout.splitlines() if ln.strip().startswith(name + " ")), "")
        assert len(line.split(None, 1)) == 2, f"{name} has no one-line docstring in --list"


@pytest.mark.parametrize("name", TASKS)
def test_every_option_has_help(name: str) -> None:
    r = run_invoke(name, "--help")
    assert r.returncode == 0, r.stderr
    options = r.stdout.split("Options:", 1)[1]
    assert "--spec" in options
    # invoke prints an option with no help text as a bare flag; every one must explain itself.
    for line in options.splitlines():
        if line.strip().startswith("--"):
            assert re.search(r"--\S+\s{2,}\S", line), f"{name}: option without help: {line!r}"


@pytest.mark.parametrize(
    ("uri", "ok"),
    [
        ("qemu:///system", True),
        ("qemu:///session", True),
        ("qemu+ssh://builder/system", False),
        ("xen:///system", False),
        ("qemu://otherhost/system", False),
    ],
)
def test_verify_takes_a_local_libvirt_uri_only(uri: str, ok: bool) -> None:
    """verify reaches the guest on this host's 127.0.0.1: a remote libvirt is refused (exit 2)
    before anything starts, a local one is accepted."""
    from imagebuild.verify.hosts import local_uri_problem

    assert (local_uri_problem(uri) is None) == ok
    if not ok:
        r = run_invoke("verify", "--libvirt-uri", uri, "--spec", "/nonexistent.yaml")
        assert r.returncode == 2 and "--libvirt-uri" in r.stderr and "127.0.0.1" in r.stderr


def test_cache_push_never_overrides_the_spec() -> None:
    """A spec that asks to push (cache.push, the default) pushes nothing with --cache-push never,
    and still reads the cache; a value other than auto/never is exit 2."""
    import dataclasses

    from imagebuild.errors import OptionError
    from imagebuild.registry_cache import RegistryCache
    from imagebuild.spec import load
    from tests.conftest import EXAMPLE

    spec = load(EXAMPLE / "imagebuild.yaml")
    spec = dataclasses.replace(
        spec, cache=dataclasses.replace(spec.cache, registry="127.0.0.1:5000/cache", push=True)
    )
    auto = RegistryCache.chosen(spec.cache, None, None, False, "auto")
    assert (auto.pull_from, auto.push_to) == ("127.0.0.1:5000/cache", "127.0.0.1:5000/cache")
    never = RegistryCache.chosen(spec.cache, None, "127.0.0.1:5000/other", False, "never")
    assert (never.pull_from, never.push_to) == ("127.0.0.1:5000/cache", None)
    with pytest.raises(OptionError) as e:
        RegistryCache.chosen(spec.cache, None, None, False, "sometimes")
    assert e.value.exit_code == 2 and "--cache-push: 'sometimes'" in str(e.value)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["push", "--registry", "a b:5000"],
            "error: --registry: 'a b:5000' is not host[:port] (spec field container.registry)",
        ),
        (
            ["build-container", "--cache-from", "127.0.0.1:5000/Cache;x"],
            "error: --cache-from: '127.0.0.1:5000/Cache;x' is not a registry repository like "
            "127.0.0.1:5000/imagebuild-cache (spec field cache.registry)",
        ),
        (
            ["build-container", "--arch", "arm64"],
            "error: --arch 'arm64': not one of base.architectures ['amd64']",
        ),
        (
            ["build-vm", "--arch", "arm64"],
            "error: --arch 'arm64': not one of base.architectures ['amd64']",
        ),
        (
            ["verify", "--arch", "arm64"],
            "error: --arch 'arm64': not one of base.architectures ['amd64']",
        ),
        (
            ["rebuild", "--check", "--arch", "arm64"],
            "error: --arch 'arm64': not one of base.architectures ['amd64']",
        ),
        (
            ["verify", "--vm-seed", "seed.iso", "--backend", "qemu"],
            "error: --vm-seed: attached through libvirt only (--backend auto or libvirt), not "
            "with --backend qemu",
        ),
        (
            ["build-vm", "--target", "ami", "--aws-region", "$(id)"],
            "error: --aws-region: '$(id)' is not an AWS region like eu-west-1 "
            "(spec field vm.ami.region)",
        ),
    ],
)
def test_an_option_that_overrides_a_spec_field_gets_that_fields_check(
    tmp_path, args: list[str], says: str
) -> None:
    """One settings table for the spec file and the command line: an override is checked by
    its field's own check, exit 2 naming the option and the field, nothing written."""
    from tests.conftest import EXAMPLE

    dist = tmp_path / "dist"
    r = run_invoke(*args, "--spec", str(EXAMPLE / "imagebuild.yaml"), "--dist", str(dist))
    assert r.returncode == 2 and says in r.stderr, r.stderr
    assert not dist.exists()


@pytest.mark.parametrize("task", ["build-container", "build-vm"])
def test_a_key_that_cannot_sign_stops_the_build_before_anything(task: str, tmp_path) -> None:
    from tests.conftest import EXAMPLE

    dist, key = tmp_path / "dist", tmp_path / "key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    spec = ["--spec", str(EXAMPLE / "imagebuild.yaml"), "--dist", str(dist)]
    r = run_invoke(task, *spec, "--sign-key", str(key))
    assert r.returncode == 2 and f"error: --sign-key: {key}: not a PEM private key" in r.stderr
    r = run_invoke(task, *spec, env={"IMAGEBUILD_SIGN_KEY": str(tmp_path)})
    assert (
        r.returncode == 2 and f"error: $IMAGEBUILD_SIGN_KEY: {tmp_path}: not a regular" in r.stderr
    )
    assert not dist.exists() and "Traceback" not in r.stderr


def test_checking_an_attestation_reads_no_spec_unless_arch_is_given() -> None:
    """A consumer with only the attestation, the public key and DIST needs no spec; `--arch`
    (which DIST/ARCH/ to read) is checked against the spec's architectures."""
    args = ["verify", "--attestation", "/nonexistent.jsonl", "--public-key", "/nonexistent.pem"]
    r = run_invoke(*args, "--spec", "/nonexistent.yaml")
    assert r.returncode == 2 and "--public-key: /nonexistent.pem" in r.stderr, r.stderr
    r = run_invoke(*args, "--spec", "/nonexistent.yaml", "--arch", "arm64")
    assert r.returncode == 2 and "/nonexistent.yaml: spec file not found" in r.stderr, r.stderr
