"""The spec: the example parses; bad specs fail with exit 2, FILE:LINE and the field, and leave
nothing behind. Most cases are pure validation; the last ones need the real resolvers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imagebuild import spec as specmod
from imagebuild.errors import SpecError
from tests.conftest import EXAMPLE, copy_example, run_invoke, tree

# A valid spec, one field per line, so each case can name the line it breaks.
BASE = """\
name: demo
version: 0.1.0
base: {suite: bookworm, mirror: http://deb.debian.org/debian, components: [main]}
packages: [ca-certificates, libgomp1]
python: {requirements: requirements.in, venv: /opt/venv}
stacks: []
gpu: null
app: {src: app, dest: /opt/app}
user: app
entrypoint: ["/opt/venv/bin/python", "-m", "app"]
cmd: ["--config", "/opt/app/default.yaml"]
env: {OMP_NUM_THREADS: "1"}
vm: {formats: [qcow2, ova], disk_gb: 6, memory_mb: 2048, cpus: 2}
"""


def line_of(key: str) -> int:
    return next(i for i, ln in enumerate(BASE.splitlines(), 1) if ln.startswith(key + ":"))


def swap(key: str, new: str) -> str:
    """Replace the whole line of a top-level key (new='' deletes it)."""
    lines = [new if ln.startswith(key + ":") else ln for ln in BASE.splitlines()]
    return "\n".join(ln for ln in lines if ln) + "\n"


# (id, spec text, field path in the message, line, substring of the message)
BAD = [
    ("missing-name", swap("name", ""), "name", 1, "missing required field"),
    ("name-is-list", swap("name", "name: [a]"), "name", 1, "must be a string"),
    ("name-uppercase", swap("name", "name: Demo"), "name", 1, "lower-case"),
    ("version-is-number", swap("version", "version: 1.0"), "version", 2, "quote it"),
    ("unknown-key", BASE + "pakages: [curl]\n", "pakages", 14, "did you mean 'packages'"),
    (
        "unknown-nested-key",
        swap("base", "base: {sute: bookworm}"),
        "base.sute",
        3,
        "did you mean 'suite'",
    ),
    (
        "bad-debian-name",
        swap("packages", "packages: [ca-certificates, Lib_Foo]"),
        "packages[1]",
        4,
        "is not a Debian package name",
    ),
    ("packages-not-list", swap("packages", "packages: curl"), "packages", 4, "must be a list"),
    (
        "entrypoint-not-list",
        swap("entrypoint", "entrypoint: /opt/venv/bin/python -m app"),
        "entrypoint",
        10,
        "must be a list",
    ),
    (
        "entrypoint-relative",
        swap("entrypoint", 'entrypoint: ["python", "-m", "app"]'),
        "entrypoint[0]",
        10,
        "absolute path",
    ),
    ("entrypoint-empty", swap("entrypoint", "entrypoint: []"), "entrypoint", 10, "not be empty"),
    (
        "yaml-syntax",
        swap("packages", "packages: [ca-certificates, libgomp1"),
        "",
        5,
        "YAML syntax error",
    ),
    ("duplicate-key", BASE + "user: other\n", "user", 14, "duplicate key"),
    ("vm-format", swap("vm", "vm: {formats: [iso]}"), "vm.formats[0]", 13, "not one of"),
    ("vm-cpus-string", swap("vm", 'vm: {cpus: "2"}'), "vm.cpus", 13, "must be an integer"),
    ("vm-disk-small", swap("vm", "vm: {disk_gb: 1}"), "vm.disk_gb", 13, "not between 2 and 2048"),
    ("env-number", swap("env", "env: {OMP_NUM_THREADS: 1}"), "env.OMP_NUM_THREADS", 12, "quote it"),
    ("env-bad-name", swap("env", 'env: {"1BAD": "x"}'), "env", 12, "not a valid environment"),
    ("user-root", swap("user", "user: root"), "user", 9, "non-root"),
    (
        "suite-typo",
        swap("base", "base: {suite: bookwrm}"),
        "base.suite",
        3,
        "did you mean 'bookworm'",
    ),
    (
        "image-tag-no-digest",
        swap("base", "base: {image: 'debian:bookworm'}"),
        "base.image",
        3,
        "not pinned by digest",
    ),
    ("unknown-stack", swap("stacks", "stacks: [tensorflow]"), "stacks[0]", 6, "known stacks:"),
    (
        "requirements-missing",
        swap("python", "python: {requirements: nope.in}"),
        "python.requirements",
        5,
        "not found",
    ),
    ("app-src-missing", swap("app", "app: {src: nowhere}"), "app.src", 8, "not found"),
    (
        "gpu-without-non-free",
        swap("gpu", "gpu: {vendor: nvidia, driver: '535', cuda: '11.8'}"),
        "base.components",
        3,
        "non-free",
    ),
    (
        "arch-host-not-first",
        swap("base", "base: {architectures: [arm64, amd64]}"),
        "base.architectures",
        3,
        "must start with 'amd64'",
    ),
    (
        "arch-twice",
        swap("base", "base: {architectures: [amd64, arm64, arm64]}"),
        "base.architectures",
        3,
        "'arm64' is given twice",
    ),
    (
        "arch-unknown",
        swap("base", "base: {architectures: [amd64, arm46]}"),
        "base.architectures[1]",
        3,
        "did you mean 'arm64'",
    ),
    (
        "arch-with-registry-base",
        swap(
            "base",
            "base: {image: '127.0.0.1:5000/debian@sha256:" + "a" * 64 + "', "
            "architectures: [amd64, arm64]}",
        ),
        "base.image",
        3,
        "a registry base is one platform's image",
    ),
    (
        "snapshot-format",
        swap("base", "base: {snapshot: yesterday}"),
        "base.snapshot",
        3,
        "snapshot timestamp",
    ),
    (
        "mirror-not-url",
        swap("base", "base: {mirror: deb.debian.org}"),
        "base.mirror",
        3,
        "http(s) URL",
    ),
    ("distro-ubuntu", swap("base", "base: {distro: ubuntu}"), "base.distro", 3, "not one of"),
    ("top-level-list", "- name: demo\n", "(top level)", 1, "must be a mapping"),
    ("empty-file", "", "", 1, "spec is empty"),
    (
        "relative-venv",
        swap("python", "python: {venv: opt/venv}"),
        "python.venv",
        5,
        "absolute path",
    ),
    (
        "service-port",
        BASE + "verify: {service: {port: 70000}}\n",
        "verify.service.port",
        14,
        "not between 1 and 65535",
    ),
    (
        "service-path",
        BASE + "verify: {service: {port: 80, path: health}}\n",
        "verify.service.path",
        14,
        "an HTTP path",
    ),
    (
        "service-no-port",
        BASE + "verify: {service: {path: /}}\n",
        "verify.service.port",
        14,
        "missing required field",
    ),
    (
        "service-path-newline",
        BASE + 'verify: {service: {port: 80, path: "/health\\nX: y"}}\n',
        "verify.service.path",
        14,
        "control character",
    ),
    (
        "service-path-space",
        BASE + "verify: {service: {port: 80, path: '/a b'}}\n",
        "verify.service.path",
        14,
        "an HTTP path",
    ),
    (
        "service-wait-huge",
        BASE + "verify: {service: {port: 80, start_s: 99999999999}}\n",
        "verify.service.start_s",
        14,
        "not between 1 and 3600",
    ),
    (
        "service-status-bad",
        BASE + "verify: {service: {port: 80, status: 999}}\n",
        "verify.service.status",
        14,
        "not between 100 and 599",
    ),
    ("project-root-slash", BASE + "project_root: /\n", "project_root", 14, "/ holds"),
    ("project-root-up", BASE + "project_root: " + "../" * 16 + "\n", "project_root", 14, "holds"),
    ("project-root-tmp", BASE + "project_root: /tmp\n", "project_root", 14, "is the system folder"),
    ("name-own-unit", swap("name", "name: ssh-hostkeys"), "name", 1, "imagebuild's own unit"),
    (
        "ami-import-without-qcow2",
        swap("vm", "vm: {formats: [ova], ami: {region: eu-west-1}}"),
        "vm.formats",
        13,
        "makes the AMI from the qcow2: add qcow2 here",
    ),
]


def write_spec(tmp_path: Path, text: str) -> Path:
    spec = copy_example(tmp_path / "proj")
    spec.write_text(text)
    return spec


def test_bundled_example_parses() -> None:
    s = specmod.load(EXAMPLE / "imagebuild.yaml")
    assert (s.name, s.entrypoint[0]) == ("onnx-serve", "/opt/venv/bin/python")
    assert s.where("vm.ami.region").endswith(f":{s.lines['vm.ami.region']}")
    assert s.runtime_env["MKL_NUM_THREADS"] == "1"  # thread default filled in


def test_every_field_is_documented_in_readme() -> None:
    readme = (EXAMPLE.parent.parent / "README.md").read_text()
    for row in specmod.reference(specmod.Spec):
        field = row.split("`")[1]
        assert f"`{field}`" in readme, f"README does not document spec field {field}"


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    text = swap("name", "name: Demo").replace("cpus: 2", "cpus: x")
    with pytest.raises(SpecError) as e:
        specmod.load(write_spec(tmp_path, text))
    assert ":1: name:" in str(e.value) and ":13: vm.cpus:" in str(e.value)


@pytest.mark.parametrize(
    ("text", "field", "line", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_spec_in_process(
    tmp_path: Path, text: str, field: str, line: int, message: str
) -> None:
    spec = write_spec(tmp_path, text)
    with pytest.raises(SpecError) as e:
        specmod.load(spec)
    first = str(e.value).splitlines()[0]
    assert first.startswith(f"{spec}:{line}: "), first
    assert f": {field}: " in first if field else True
    assert message in str(e.value)


@pytest.mark.parametrize("case", BAD[:8] + BAD[20:23], ids=lambda c: c[0])
def test_bad_spec_cli_exit_2_writes_nothing(tmp_path: Path, case: tuple) -> None:
    _, text, field, line, message = case
    spec = write_spec(tmp_path, text)
    cache = tmp_path / "cache"
    before = tree(spec.parent)
    r = run_invoke("lock", "--spec", str(spec), "--cache-dir", str(cache))
    assert r.returncode == 2, r.stderr
    assert re.search(rf"{re.escape(str(spec))}:{line}: ", r.stderr), r.stderr
    assert message in r.stderr
    assert tree(spec.parent) == before and tree(cache) == set()


# Cases only the real resolvers can catch; they share the session's apt index cache.
RESOLVE_BAD = [
    (
        "unknown-debian-package",
        "packages: [ca-certificates, libfoo-imagebuild-nonexistent]",
        None,
        "packages[1]",
        4,
        "not found in bookworm",
    ),
    (
        "virtual-package",
        "packages: [ca-certificates, mail-transport-agent]",
        None,
        "packages[1]",
        4,
        "virtual package provided by",
    ),
    (
        "unknown-vm-package",
        "vm: {vm_packages_typo_free: 1}",
        None,
        "vm.vm_packages_typo_free",
        13,
        "unknown key",
    ),
    (
        "requirement-unknown",
        None,
        "imagebuild-no-such-dist-xyz\n",
        "python.requirements",
        1,
        "does not resolve",
    ),
    (
        "requirement-bad-version",
        None,
        "numpy==0.0.99\n",
        "python.requirements",
        1,
        "does not resolve",
    ),
]


@pytest.mark.network
@pytest.mark.parametrize("case", RESOLVE_BAD, ids=lambda c: c[0])
def test_bad_spec_found_by_resolver(
    tmp_path: Path, case: tuple, cache_dir: Path, locked_example: Path
) -> None:
    _, spec_line, requirements, field, line, message = case
    key = spec_line.split(":")[0] if spec_line else "name"
    spec = write_spec(tmp_path, swap(key, spec_line) if spec_line else BASE)
    blamed = spec
    if requirements:
        blamed = spec.parent / "requirements.in"
        blamed.write_text(requirements)
    before, cache_before = tree(spec.parent), tree(cache_dir)
    r = run_invoke("lock", "--spec", str(spec), "--cache-dir", str(cache_dir))
    assert r.returncode == 2, r.stderr
    assert f"{blamed}:{line}: {field}: " in r.stderr, r.stderr
    assert message in r.stderr
    assert tree(spec.parent) == before
    assert tree(cache_dir) == cache_before
