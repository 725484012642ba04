"""What built an artifact: imagebuild's own version and those of the tools it drove, recorded
in every build record (the builder pins itself: requirements.lock, installed by bootstrap)."""

from __future__ import annotations

import platform
from importlib import metadata

# The Python packages whose behaviour reaches an artifact's bytes or its checks.
PACKAGES = (
    "imagebuild",
    "ansible-core",
    "ansible",
    "ansible-runner",
    "mitogen",
    "docker",
    "uv",
    "python-hcl2",
    "libvirt-python",
    "pathspec",
    "PyYAML",
    "packaging",
    "cyclonedx-python-lib",
    "securesystemslib",
)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out
