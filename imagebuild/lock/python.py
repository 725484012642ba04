"""Lock the Python requirements: uv resolves pins with hashes, then one wheel per pin is chosen
for the target interpreter (Debian's python3 of the suite, manylinux of the architecture) and
recorded with its URL and sha256, so `fetch` downloads exactly that file and nothing is resolved
again later."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from imagebuild import download
from imagebuild.errors import ImageBuildError, SpecError
from imagebuild.requested import REQ_NAME, SPEC_GROUP, Requested
from imagebuild.spec import Spec

INDEX = "https://pypi.org/simple"
GLIBC_MINOR = {"bookworm": 36, "trixie": 41}  # the glibc of each suite bounds the manylinux tag
MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}  # Debian's architecture -> the wheel tags'
# The legacy manylinux aliases each machine has (PEP 600): 2014 = 2_17, 2010 = 2_12, 1 = 2_5.
LEGACY = {"x86_64": (2014, 2010, 1), "aarch64": (2014,)}


def platform_tag(spec: Spec, arch: str = "amd64") -> str:
    return f"manylinux_2_{GLIBC_MINOR[spec.base.suite]}_{MACHINE[arch]}"


def target_tags(spec: Spec, arch: str = "amd64") -> list[Tag]:
    major, minor = (int(x) for x in spec.python_version.split("."))
    machine = MACHINE[arch]
    platforms = [f"manylinux_2_{m}_{machine}" for m in range(GLIBC_MINOR[spec.base.suite], 4, -1)]
    platforms += [f"manylinux{year}_{machine}" for year in LEGACY[machine]]
    return [
        *cpython_tags((major, minor), platforms=platforms),
        *compatible_tags((major, minor), platforms=platforms),
    ]


def _uv() -> str:
    found = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if not Path(found).exists():
        raise ImageBuildError("`uv` not found: run scripts/bootstrap.sh (it installs the venv)")
    return found


def _mentioned(message: str) -> tuple[str, set[str]]:
    """A resolver message on one line, and the (normalised) names it mentions."""
    msg = " ".join(message.split())
    return msg, {canonicalize_name(m) for m in re.findall(r"[A-Za-z0-9][A-Za-z0-9._-]*", msg)}


def _blame(spec: Spec, message: str) -> SpecError:
    """Point a resolver failure at the requirements line of the package it names."""
    assert spec.python is not None
    req = spec.base_dir / spec.python.requirements
    lines = req.read_text().splitlines()
    msg, mentioned = _mentioned(message)
    for i, line in enumerate(lines, 1):
        m = REQ_NAME.match(line)
        if m and not line.strip().startswith("#") and canonicalize_name(m.group(1)) in mentioned:
            return SpecError(
                f"{req}:{i}", "python.requirements", f"{line.strip()!r} does not resolve: {msg}"
            )
    return SpecError(
        spec.where("python.requirements"),
        "python.requirements",
        f"{req.name} does not resolve: {msg}",
    )


def _blame_stacks(req: Requested, message: str) -> SpecError | None:
    """The stack role whose `python:` line names a package the resolver failed on, if any."""
    msg, mentioned = _mentioned(message)
    for group, lines in req.requirement_sets:
        for line in lines:
            m = REQ_NAME.match(line)
            if group != SPEC_GROUP and m and canonicalize_name(m.group(1)) in mentioned:
                path = f"stacks[{req.spec.stacks.index(group)}]"
                return req.spec.error(
                    path, f"role {group!r} needs {line!r}, which does not resolve: {msg}"
                )
    return None


def compile_pins(
    req: Requested, lines: list[str], keep: dict[str, str] | None = None, arch: str = "amd64"
) -> dict[str, tuple[str, set[str]]]:
    """{name: (version, {sha256...})} from `uv pip compile --generate-hashes`. With `keep`
    ({name: version} of a lock being updated), uv prefers those versions (its output-file
    preferences) and moves only what the requirements force: `lock --update NAME`."""
    spec = req.spec
    with tempfile.TemporaryDirectory() as tmp:
        wanted = Path(tmp, "requirements.in")
        wanted.write_text("".join(f"{ln}\n" for ln in lines))
        out = Path(tmp, "requirements.txt")
        if keep is not None:
            out.write_text("".join(f"{n}=={v}\n" for n, v in sorted(keep.items())))
        cmd = [
            _uv(),
            "pip",
            "compile",
            "--quiet",
            "--generate-hashes",
            "--no-header",
            "--no-annotate",
            "--python-version",
            spec.python_version,
            "--python-platform",
            platform_tag(spec, arch),
            "--only-binary",
            ":all:",
            "--index-url",
            INDEX,
            *(["--output-file", str(out)] if keep is not None else []),
            str(wanted),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        text = out.read_text() if keep is not None and proc.returncode == 0 else proc.stdout
    if proc.returncode != 0:
        message = proc.stderr.strip() or proc.stdout.strip()
        raise _blame_stacks(req, message) or _blame(spec, message)
    pins: dict[str, tuple[str, set[str]]] = {}
    current = ""
    for line in text.splitlines():
        if m := re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line):
            current = str(canonicalize_name(m.group(1)))
            pins[current] = (m.group(2), set())
        for h in re.findall(r"--hash=sha256:([0-9a-f]{64})", line):
            pins[current][1].add(h)
    return pins


def pin_groups(
    req: Requested, keep: dict[str, str] | None = None, arch: str = "amd64"
) -> tuple[dict[str, tuple[str, set[str]]], dict[str, str]]:
    """The pins of everything, and which group installs each: the first group whose cumulative
    resolution needs it (so a stack's layer holds only what the layers below lack)."""
    sets = req.requirement_sets
    lines = [ln for _, group_lines in sets for ln in group_lines]
    pins = compile_pins(req, lines, keep, arch)
    owner: dict[str, str] = {}
    upto: list[str] = []
    for i, (group, group_lines) in enumerate(sets):
        upto += group_lines
        names = pins if i == len(sets) - 1 else compile_pins(req, upto, keep, arch)
        for name in names:
            owner.setdefault(name, group)
    return pins, owner


def _index_files(name: str) -> list[dict]:
    try:
        body = download.read(f"{INDEX}/{name}/", {"Accept": "application/vnd.pypi.simple.v1+json"})
    except download.DownloadError as e:
        raise ImageBuildError(f"python lock: cannot read the index's page of {name}: {e}") from None
    return json.loads(body)["files"]


def choose_wheels(
    spec: Spec, pins: dict[str, tuple[str, set[str]]], arch: str = "amd64"
) -> list[dict]:
    """One wheel per pin: the best tag match for the target, whose sha256 uv also listed."""
    rank = {t: i for i, t in enumerate(target_tags(spec, arch))}

    def pick(name: str) -> dict:
        version, hashes = pins[name]
        best: tuple[int, dict] | None = None
        for f in _index_files(name):
            if not f["filename"].endswith(".whl") or f.get("yanked"):
                continue
            try:
                _, ver, _, tags = parse_wheel_filename(f["filename"])
            except InvalidWheelFilename:  # ancient uploads with non-standard names
                continue
            score = min((rank[t] for t in tags if t in rank), default=None)
            if str(ver) != version or score is None or f["hashes"].get("sha256") not in hashes:
                continue
            if best is None or score < best[0]:
                best = (score, f)
        if best is None:
            raise _blame(
                spec,
                f"{name}=={version}: no wheel for cp{spec.python_version} "
                f"{platform_tag(spec, arch)} (sdists are not built here)",
            )
        f = best[1]
        return {
            "name": name,
            "version": version,
            "filename": f["filename"],
            "url": f["url"],
            "sha256": f["hashes"]["sha256"],
            "size": f.get("size"),
        }

    with ThreadPoolExecutor(8) as pool:
        return sorted(pool.map(pick, pins), key=lambda r: r["name"])


def lock_python(
    req: Requested, keep: dict[str, str] | None = None, arch: str = "amd64"
) -> list[dict]:
    if not req.requirement_sets:
        return []
    pins, owner = pin_groups(req, keep, arch)
    wheels = choose_wheels(req.spec, pins, arch)
    return [{**w, "group": owner.get(w["name"], SPEC_GROUP)} for w in wheels]
