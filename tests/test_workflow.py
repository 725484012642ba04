"""The CI example (.github/workflows/images.yml) stays runnable as imagebuild changes: every
bundled spec is in its matrix, every `invoke` line names a real task and real options, and
every build reads the registry cache."""

from __future__ import annotations

import re

import yaml

from tests.conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "images.yml"


def _steps() -> list[dict]:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]["build"]["steps"]


def test_the_matrix_covers_every_bundled_spec_and_target() -> None:
    matrix = yaml.safe_load(WORKFLOW.read_text())["jobs"]["build"]["strategy"]["matrix"]
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
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["build"]
    assert "head.repo.full_name == github.repository" in job["if"]
    assert "self-hosted" in job["runs-on"]
