"""The Dockerfile bench/dockerfile.py renders (the hand-written baseline) is hadolint-clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from imagebuild.fetch import requirement_files
from imagebuild.project import Project
from imagebuild.resolved import resolve
from imagebuild.spec import load
from tests.conftest import EXAMPLE, ROOT

sys.path.insert(0, str(ROOT / "bench"))
import dockerfile  # noqa: E402


def test_rendered_dockerfile_is_hadolint_clean(tmp_path: Path) -> None:
    spec = load(EXAMPLE / "imagebuild.yaml")
    p = Project(spec)
    files = list(requirement_files(p.lock).values())
    text = dockerfile.render(spec, resolve(p.req, p.lock).os_pins, "base:0123abcd", files)
    (tmp_path / "Dockerfile").write_text(text)
    hadolint = Path(sys.executable).with_name("hadolint")
    r = subprocess.run(
        [str(hadolint), str(tmp_path / "Dockerfile")], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for pin in resolve(p.req, p.lock).os_pins:
        assert pin in text
    assert "-r /wheels/requirements.txt -r /wheels/requirements-onnxruntime.txt" in text


def test_the_profile_names_engine_calls_by_endpoint_without_names_or_versions() -> None:
    from imagebuild.profile import endpoint

    assert endpoint("/v1.43/containers/imagebuild-x-1a2b/json?all=1") == "/containers/{}/json"
    assert endpoint("/v1.43/containers/create?name=x") == "/containers/create"
    # an image name holds slashes: still one placeholder
    assert endpoint("/v1.43/images/imagebuild-stage/x:ab-os") == "/images/{}"
    assert endpoint("/v1.43/containers/0123abcd/archive?path=/etc") == "/containers/{}/archive"
    assert endpoint("/_ping") == "/_ping"
