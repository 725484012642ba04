"""What never ships from a project: VCS data, caches and the usual secrets, in any letter case
(gitignore syntax, read with pathspec). The app tree drops what they match inside `app.src`; the
spec refuses a file it names (`app.src`, `python.requirements`) that lies in one of them, so a
spec cannot point `app.src` at `.git/` or `.aws/` itself."""

from __future__ import annotations

import functools
from pathlib import PurePosixPath

import pathspec

DEFAULT_IGNORE = [
    ".git/",
    ".hg/",
    ".svn/",
    "__pycache__/",
    "*.pyc",
    ".imagebuildignore",
    ".env",
    ".env.*",
    ".netrc",
    ".npmrc",
    ".pypirc",
    ".pgpass",
    ".git-credentials",
    ".vault-token",
    "credentials.json",
    "*.tfstate",
    "*.tfstate.*",
    "*.tfvars",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".ssh/",
    ".aws/",
    ".azure/",
    ".docker/",
    ".gnupg/",
    ".kube/",
]


def any_case(rule: str) -> str:
    """A gitignore rule that matches its letters in either case (`*.pem` -> `*.[pP][eE][mM]`).
    Only the defaults: a user's own rules keep git's case-sensitive meaning."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in rule)


def lines() -> list[str]:
    return [any_case(rule) for rule in DEFAULT_IGNORE]


@functools.cache
def _defaults() -> pathspec.PathSpec:
    return pathspec.GitIgnoreSpec.from_lines(lines())


def hidden_part(rel: PurePosixPath) -> str | None:
    """The first part of `rel` (a path relative to the project root) the rules never ship: the
    path itself or a folder on the way to it; None if there is none."""
    parts = rel.parts
    for i in range(1, len(parts) + 1):
        here = "/".join(parts[:i])
        if _defaults().match_file(here) or _defaults().match_file(here + "/"):
            return here
    return None
