"""The builder pins itself: the venv holds exactly requirements.lock's versions (bootstrap
installs from it, hashes checked), and every pyproject dependency is in the lock."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from imagebuild import builder
from tests.conftest import ROOT

PIN = re.compile(r"(?m)^([A-Za-z0-9._-]+)==(\S+)")


def _pins() -> dict[str, str]:
    text = (ROOT / "requirements.lock").read_text()
    return {canonicalize_name(m[1]): m[2] for m in PIN.finditer(text)}


def test_every_dependency_is_locked_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    pins = _pins()
    for line in wanted:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock (re-compile it)"
        assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])
    # Every pin carries its hashes (pip --require-hashes refuses the file otherwise).
    entries = PIN.split((ROOT / "requirements.lock").read_text())[1:]
    assert all("--hash=sha256:" in body for body in entries[2::3])


def test_the_venv_holds_what_the_lock_says() -> None:
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    drift = {n: (v, installed.get(n)) for n, v in _pins().items() if installed.get(n) != v}
    assert not drift, f"installed != requirements.lock: {drift}"
    assert builder.versions()["ansible-core"] == _pins()["ansible-core"]
