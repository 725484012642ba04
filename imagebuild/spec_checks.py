"""The spec's field checks: one small function per grammar (Debian names, clean image paths,
URLs parsed, not pattern-matched, CIDRs, choices with a did-you-mean), named in the settings
table's metadata, and the parse Context they report into (`FILE:LINE: field.path: message`)."""

from __future__ import annotations

import difflib
import ipaddress
import os
import pwd
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from imagebuild import roles, secret_rules
from imagebuild.errors import SpecError

Check = Any  # Callable[[value, Context], str | None]; kept loose to allow lambdas in metadata


# Matched with fullmatch: `$` would also match before a trailing newline.
DEBIAN_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


AWS_REGION = r"[a-z]{2}(-[a-z]+)+-\d"


# A registry repository without a tag (HOST[:PORT]/PATH), as the registry build cache takes it.
REGISTRY_REPO = r"[A-Za-z0-9.-]+(:\d+)?(/[a-z0-9]+([._-][a-z0-9]+)*)+"

OCI_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


CONTROL = re.compile(r"[\x00-\x1f\x7f]")


IMAGE_PATH = re.compile(r"(/[A-Za-z0-9._+-]+)+")


def meta(doc: str, check: Check = None, item_check: Check = None) -> dict[str, Any]:
    return {"doc": doc, "check": check, "item_check": item_check}


def debian_name(v: str, _: Context) -> str | None:
    return None if DEBIAN_NAME.fullmatch(v) else f"{v!r} is not a Debian package name"


def abs_path(v: str, _: Context) -> str | None:
    """A clean absolute path in the image: not `/`, no `.`/`..`/empty segments, no spaces or
    shell-special characters (it reaches command lines and unit files)."""
    parts = v.split("/")[1:]
    if not IMAGE_PATH.fullmatch(v) or any(p in (".", "..") for p in parts):
        return f"{v!r} must be a clean absolute path in the image (not /, no '..', no spaces)"
    return None


def http_url(v: str, _: Context) -> str | None:
    """Parsed, not pattern-matched: http(s), a host, nothing a shell or apt line would split."""
    u = urllib.parse.urlsplit(v)
    if u.scheme not in ("http", "https") or not u.hostname or re.search(r"[\s'\"`$\\;|&<>]", v):
        return f"{v!r} is not an http(s) URL"
    return None


# What a project root may be neither nor hold: the system's folders (/tmp and /var/tmp are
# shared by every user, so the root may be inside them, never them) and, below, every account's
# home (keys, tokens, shell history).
SYSTEM_DIRS = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib64",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/var",
    "/var/tmp",
)


# Nor may it lie inside these: the system's own files and the engines' data (a project under
# /var, /opt or /srv is fine: CI workspaces live there, e.g. /var/lib/jenkins/workspace).
SYSTEM_INSIDE = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib64",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/libvirt",
)


def project_root(base_dir: Path, field: str) -> Path:
    """The folder the spec's `project_root` names (relative to the spec's own folder)."""
    return (base_dir / field).resolve()


def broad_root(root: Path) -> str | None:
    """The project root bounds what `app.src` and `python.requirements` may name: `/`, a system
    folder or a home as the root would let a spec ship the host's secrets (`app.src: /root`)."""
    homes = [os.path.expanduser("~"), *(u.pw_dir for u in pwd.getpwall())]
    guarded = {Path(h).resolve(): "the home" for h in homes if h.startswith("/") and h != "/"}
    guarded |= {Path(d).resolve(): "the system folder" for d in SYSTEM_DIRS}
    why = (
        "use the project's own folder (it bounds what `app.src` and `python.requirements` may ship)"
    )
    for folder, kind in sorted(guarded.items()):
        if folder == root or folder.is_relative_to(root):
            verb = "is" if folder == root else "holds"
            return f"the project root {root} {verb} {kind} {folder}; {why}"
    for folder in map(Path, SYSTEM_INSIDE):
        if root.is_relative_to(folder):
            return f"the project root {root} is inside the system folder {folder}; {why}"
    for home in sorted({Path(h).resolve() for h in homes if h.startswith("/") and h != "/"}):
        if root.is_relative_to(home):
            hidden = next((p for p in root.relative_to(home).parts if p.startswith(".")), None)
            if hidden:
                where = f"{home / hidden}, a home's hidden folder"
                return f"the project root {root} is inside {where}; {why}"
    return None


def outside_root(root: Path, base_dir: Path, v: str) -> str | None:
    """Files the spec names (`v`, relative to its folder `base_dir`) stay inside its project root
    (`project_root`, default the spec's folder), so a spec cannot ship /root or ../../etc into an
    image."""
    target = (base_dir / v).resolve()
    if not (target == root or target.is_relative_to(root)):
        return f"{v!r} is outside the project root {root} (widen `project_root` to allow it)"
    if hidden := secret_rules.hidden_part(PurePosixPath(target.relative_to(root))):
        return (
            f"{v!r} is {hidden!r} (or inside it) of the project, which never ships "
            "(VCS data, caches, secrets)"
        )
    return None


def own_unit(unit: str) -> str | None:
    """The VM's unit must not be one imagebuild's roles ship as a file or a template
    (`imagebuild-ssh-hostkeys.service`)."""
    if any(roles.ROLES_DIR.glob(f"*/*/{unit}")) or any(roles.ROLES_DIR.glob(f"*/*/{unit}.j2")):
        return f"the VM's unit {unit} would replace imagebuild's own unit of that name"
    return None


def public_cidr(v: str, _: Context) -> str | None:
    """An IPv4/IPv6 network in CIDR form that is not the whole internet."""
    try:
        net = ipaddress.ip_network(v, strict=True)
    except ValueError:
        return f"{v!r} is not a network in CIDR form (e.g. 203.0.113.7/32)"
    return f"{v!r} opens SSH to everyone" if net.prefixlen == 0 else None


def between(low: int, high: int) -> Check:
    return lambda v, _: None if low <= v <= high else f"{v} is not between {low} and {high}"


def one_of(*choices: str) -> Check:
    def check(v: str, _: Context) -> str | None:
        if v in choices:
            return None
        close = difflib.get_close_matches(v, choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{v!r} is not one of {', '.join(choices)}{hint}"

    return check


def pattern(rx: str, what: str) -> Check:
    return lambda v, _: None if re.fullmatch(rx, v) else f"{v!r} is not {what}"


def existing(kind: str) -> Check:
    def check(v: str, ctx: Context) -> str | None:
        p = ctx.base_dir / v
        ok = p.is_dir() if kind == "dir" else p.is_file()
        return None if ok else f"{kind} {v!r} not found (relative to {ctx.base_dir})"

    return check


def image_ref(v: str, _: Context) -> str | None:
    if re.fullmatch(r"[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}", v):
        return None
    return (
        f"{v!r} is not pinned by digest; use NAME@sha256:<64 hex>, e.g. "
        f"`docker pull {v} && docker inspect --format '{{{{index .RepoDigests 0}}}}' {v}`"
    )


def known_stack(v: str, _: Context) -> str | None:
    known = roles.known_stacks()
    if v in known:
        return None
    close = difflib.get_close_matches(v, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown stack {v!r}{hint}; known stacks: {', '.join(known) or '(none)'}"


def non_empty(v: list[str], _: Context) -> str | None:
    return None if v else "must not be empty"


def env_names(v: dict[str, str], _: Context) -> str | None:
    bad = [k for k in v if not ENV_NAME.fullmatch(k)]
    return f"{bad[0]!r} is not a valid environment variable name" if bad else None


def valid_regex(v: str, _: Context) -> str | None:
    try:
        re.compile(v)
    except re.error as e:
        return f"{v!r} is not a regular expression ({e})"
    return None


@dataclass
class Context:
    path: Path
    base_dir: Path
    lines: dict[str, int] = field(default_factory=dict)
    errors: list[SpecError] = field(default_factory=list)

    def fail(self, node: yaml.Node, path: str, message: str) -> None:
        self.errors.append(SpecError(f"{self.path}:{node.start_mark.line + 1}", path, message))
