"""The CI example (.github/workflows/images.yml calling build.yml) stays runnable as imagebuild
changes: every bundled spec is in its matrix, every `invoke` line names a real task and real
options, every build reads the registry cache, and a pull request can neither write it nor run
a fork's code on the root runner."""

from __future__ import annotations

import re

import yaml

from tests.conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "images.yml"
MATRIX = ROOT / ".github" / "workflows" / "build.yml"


def _steps() -> list[dict]:
    return yaml.safe_load(MATRIX.read_text())["jobs"]["build"]["steps"]


def test_the_matrix_covers_every_bundled_spec_and_target() -> None:
    matrix = yaml.safe_load(MATRIX.read_text())["jobs"]["build"]["strategy"]["matrix"]
    specs = {str(p.relative_to(ROOT)) for p in ROOT.glob("examples/*/imagebuild.yaml")}
    assert set(matrix["spec"]) == specs
    assert set(matrix["target"]) == {"container", "qemu", "ami"}


def test_every_invoke_line_is_a_real_task_with_real_options() -> None:
    import tasks

    lines = [s["run"] for s in _steps() if "invoke " in s.get("run", "")]
    assert len(lines) >= 6
    for line in lines:
        name = re.search(r"invoke (\S+)", line).group(1)
        task = tasks.ns.tasks[name]
        known = {f"--{n}" for arg in task.get_arguments() for n in arg.names if len(n) > 1}
        used = set(re.findall(r"(--[a-z-]+)", line.split("invoke ", 1)[1]))
        assert used <= known, (name, used - known)


def test_every_build_uses_the_registry_cache() -> None:
    builds = [s["run"] for s in _steps() if re.search(r"invoke build-", s.get("run", ""))]
    assert builds and all("steps.cache.outputs.args" in b for b in builds)


def test_a_forks_pull_request_never_runs_on_the_root_runner() -> None:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    assert "head.repo.full_name == github.repository" in jobs["pull-request"]["if"]
    assert jobs["main"]["if"] == "github.event_name == 'push'"
    assert all(j["uses"] == "./.github/workflows/build.yml" for j in jobs.values())
    assert "self-hosted" in yaml.safe_load(MATRIX.read_text())["jobs"]["build"]["runs-on"]


def test_a_pull_request_cannot_write_the_cache_or_publish() -> None:
    """Read-only token (whatever the repository's default), no cloud identity, publish off,
    and `--cache-push never`, so the spec under review cannot turn pushing back on."""
    doc = yaml.safe_load(WORKFLOW.read_text())
    assert doc["permissions"] == {"contents": "read", "packages": "read"}
    pr = doc["jobs"]["pull-request"]
    assert pr["permissions"] == {"contents": "read", "packages": "read"}
    assert pr["with"] == {"publish": False} and "secrets" not in pr
    matrix = yaml.safe_load(MATRIX.read_text())
    assert "inputs.publish" in matrix["env"]["IMAGEBUILD_CACHE"]  # not main's local cache
    checkout = next(s for s in _steps() if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["persist-credentials"] is False  # no token in .git/config
    choose = next(s["run"] for s in _steps() if s.get("id") == "cache")
    unpublished = choose.split("else", 1)[0]
    assert "--cache-push never" in unpublished and "--cache-to" not in unpublished
    for step in _steps():  # every publishing step waits for `publish`
        if re.search(r"invoke (push|build-vm .*--target ami)", step.get("run", "")):
            assert "inputs.publish" in step["if"], step["name"]
