"""Facts of one artifact, read through a testinfra host: the same function for `docker://` and
`ssh://`. The bulk (dpkg, venv, imports, linker cache) comes from one run of the inventory
script, because every command costs a round trip (and an emulated CPU on the VM side)."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import time
from dataclasses import dataclass
from typing import Any

from packaging.utils import canonicalize_name

from imagebuild import inventory
from imagebuild.lock.lockfile import Lock
from imagebuild.requested import Requested
from imagebuild.spec import Spec
from imagebuild.verify import filebytes, gpu, interpreter
from imagebuild.verify.diskread import DiskReadError, DiskReading
from imagebuild.verify.filemeta import Listing
from imagebuild.verify.interpreter import Interpreters, ScriptFailed, text, texts
from imagebuild.verify.items import (
    WRAPPER,
    behaviour_commands,
    behaviour_key,
    smoke_command,
)
from imagebuild.verify.model import (
    ABSENT,
    ARCHITECTURE,
    ARGV,
    DISK_HYGIENE,
    RUNS_AS_ROOT,
    RUNTIME_USER,
    SETUID_ROW,
    STARTED_BY,
    UNLOCKED_DEBS,
    VENV_TOOLING,
    WRAPPER_SHA,
)

Facts = dict[str, dict[str, str]]


def _wrapper_argv(text: str) -> str:
    """`exec ENTRYPOINT "$@"` + `set -- CMD` of the wrapper the app role writes -> one argv."""
    entry: list[str] = []
    cmd: list[str] = []
    for line in text.splitlines():
        if not line.strip().startswith(("exec ", "set -- ")):
            continue  # comments may hold unbalanced quotes
        words = shlex.split(line.strip())
        if words[:1] == ["exec"]:
            entry = [w for w in words[1:] if w != "$@"]
        elif words[:2] == ["set", "--"]:
            cmd = words[2:]
    return " ".join(entry + cmd)


def _unit(host: Any, unit: str, prop: str) -> str:
    return host.check_output(f"systemctl show -p {prop} --value {shlex.quote(unit)}").strip()


def systemd_words(text: str) -> list[str]:
    """Split what `systemctl show` prints for a list of strings: words between spaces; a word
    with special characters is in double quotes, with a backslash before each backslash,
    double quote, dollar and backquote (systemd's shell_maybe_quote). Python's shlex.split
    keeps a backslash before a dollar inside quotes, so it is not used here."""
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == " ":
            i += 1
            continue
        word, quoted = [], text[i] == '"'
        i += quoted
        while i < n and text[i] != ('"' if quoted else " "):
            if quoted and text[i] == "\\" and i + 1 < n:
                i += 1
            word.append(text[i])
            i += 1
        i += quoted
        words.append("".join(word))
    return words


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    return dict(p.split("=", 1) for p in pairs if "=" in p)


def collect(
    host: Any,
    artifact: str,
    req: Requested,
    lock: Lock,
    config: dict[str, Any],
    image: DiskReading | None,
) -> tuple[Facts, Listing | None]:
    """`artifact` is "container" (config = the image config) or "vm" (image = its disk image,
    being read on this host: hygiene and file contents; None: the contents read inside).
    `seconds`: each group's time (the digest script runs behind the others). Also the listing
    of what every file is (filemeta.judge compares the two), None where the script failed.
    What needs the artifact's Python is read with the first of its interpreters that runs;
    where none does, those rows say why (`unread`)."""
    spec = req.spec
    laps = Laps()
    pythons = interpreter.probe(host, interpreter.candidates(spec, lock))
    hashing = (
        filebytes.start(host, spec, pythons.working, contents=image is None)
        if pythons.working
        else None
    )
    laps.lap("interpreter")
    facts, run_as = _collect(host, artifact, req, lock, config, laps, pythons)
    if image is not None:
        facts["hygiene"] |= image.hygiene()
    laps.lap("the rest of the disk image's hygiene")
    contents = _contents(image)
    laps.lap("bytes: the disk image's files")
    if hashing:
        more, listing = filebytes.finish(hashing, contents)
    elif isinstance(contents, str):
        more, listing = filebytes.unread(contents), None
    else:
        more, listing = filebytes.unread(pythons.problem()), None
    merge(facts, more)
    laps.lap("bytes: what the digest script still needed")
    if spec.gpu:
        merge(facts, gpu.facts(host, req, run_as, WRAPPER, facts["env"]))
        laps.lap("gpu")
    return facts | {"seconds": laps.laps}, listing


def _contents(image: DiskReading | None) -> dict[str, Any] | str | None:
    """The disk image's file contents (None: read in the artifact; a text: why unread)."""
    if image is None:
        return None
    try:
        return image.contents()
    except DiskReadError as e:
        return str(e)


def merge(facts: Facts, more: Facts) -> None:
    for kind, rows in more.items():
        facts.setdefault(kind, {}).update(rows)


INVENTORY_KINDS = ("deb", "deb-unlocked", "python", "python-unlocked", "import", "lib")
VENV_KINDS = ("python", "python-unlocked", "import")  # only the spec's interpreter sees them


def _inventory(host: Any, req: Requested, pythons: Interpreters) -> tuple[Facts, dict[str, str]]:
    """The inventory script's sections (deb, python, import, lib), and the kinds it could not
    give, with why: all of them where no interpreter runs or the script fails; the venv's
    where it ran on Debian's interpreter because the spec's does not run."""
    python = pythons.working
    own = python == pythons.target
    empty: Facts = {"deb": {}, "python": {}, "import": {}, "lib": {}}
    if python is None:
        return empty, dict.fromkeys(INVENTORY_KINDS, pythons.problem())
    want = json.dumps({"imports": req.imports if own else []})
    script = shlex.quote(inventory.SCRIPT)
    r = host.run(f"{shlex.quote(python)} -c {script} {shlex.quote(want)}")
    what = f"the inventory script ({python})"
    try:
        raw = interpreter.parse(what, r.rc, r.stdout, r.stderr)
        sections: Facts = {
            "deb": {text(n).split(":")[0]: text(v) for n, v, _ in raw["deb"]},
            "python": {canonicalize_name(text(n)): text(v) for n, v in raw["python"]},
            "import": texts(raw.get("import", {})),
            "lib": texts(raw.get("lib", {})),
        }
    except ScriptFailed as e:
        return empty, dict.fromkeys(INVENTORY_KINDS, str(e))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return empty, dict.fromkeys(INVENTORY_KINDS, f"{what} printed another shape: {e!r}")
    return sections, {} if own else dict.fromkeys(VENV_KINDS, pythons.problem())


def _collect(
    host: Any,
    artifact: str,
    req: Requested,
    lock: Lock,
    config: dict[str, Any],
    laps: Laps,
    pythons: Interpreters,
) -> tuple[Facts, str]:
    """The facts read over the host's own commands, and the prefix that runs a command as the
    runtime user there."""
    spec = req.spec
    raw, unread = _inventory(host, req, pythons)
    laps.lap("inventory: packages, imports, libraries")
    deb, python = raw["deb"], raw["python"]
    # The VM's own section is locked too, for the VM only.
    locked_debs = {p.name for p in [*lock.shared, *(lock.vm if artifact == "vm" else [])]}
    locked_py = {w.name for w in lock.python}
    wrapper = host.file(WRAPPER)
    facts: Facts = {
        "deb": deb,
        "deb-unlocked": {UNLOCKED_DEBS: json.dumps(sorted(set(deb) - locked_debs))},
        "python": python,
        "python-unlocked": {
            VENV_TOOLING: " ".join(
                sorted(f"{n}=={v}" for n, v in python.items() if n not in locked_py)
            )
        },
        "import": raw["import"],
        "lib": raw["lib"],
        "entrypoint": {WRAPPER_SHA: wrapper.sha256sum if wrapper.exists else ABSENT},
        "interpreter": interpreter.rows(pythons),
        "unread": unread,
    }
    start = STARTS[artifact](host, spec, config, wrapper)
    facts["entrypoint"] |= {ARGV: start.argv, STARTED_BY: start.started_by}
    user, env, run_as = start.user, start.env, start.run_as
    laps.lap("entrypoint, user, env")
    if not spec.verify.commands:  # only then are the smoke rows asked for (items.py)
        smoke = host.run(f"env {smoke_command(spec, run_as)}")
        out = smoke.stdout.strip() if smoke.rc == 0 else smoke.stderr.strip()[-200:]
        facts["smoke"] = {
            smoke_command(spec): out,
            f"{smoke_command(spec)}: exit status": str(smoke.rc),
        }
    facts["behaviour"] = {}
    for cmd in behaviour_commands(spec):
        r = host.run(f"env {smoke_command(spec, run_as, cmd)}")
        key = behaviour_key(cmd)
        facts["behaviour"][f"{key}: exit status"] = str(r.rc)
        facts["behaviour"][f"{key}: stdout"] = comparable(r.stdout, spec.verify.ignore)
    laps.lap("smoke and behaviour commands")
    facts["user"] = {RUNTIME_USER: user}
    facts["arch"] = {ARCHITECTURE: host.run(ARCHITECTURE).stdout.strip()}
    facts["env"] = env
    facts["hygiene"] = {
        RUNS_AS_ROOT: "yes" if user in ("root", "0") else "no",
        SETUID_ROW: _setuid_outside_packages(host),
        **start.hygiene,
    }
    laps.lap("setuid scan")
    return facts, run_as


@dataclass(frozen=True)
class Start:
    """How an artifact starts its app, read its own way (one reader per artifact kind)."""

    argv: str  # what runs: the image's ENTRYPOINT+CMD, or the wrapper's command line
    started_by: str
    user: str
    env: dict[str, str]
    run_as: str  # the prefix that runs a command as that user there
    hygiene: dict[str, str]  # the disk-image rows: not applicable to a container


def _container_start(host: Any, spec: Spec, config: dict[str, Any], wrapper: Any) -> Start:
    """From the image config (what `docker run` starts); commands run as its user already."""
    argv = " ".join([*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])])
    return Start(
        argv,
        "image ENTRYPOINT" if config.get("Entrypoint") else "none",
        config.get("User") or "root",
        _env_pairs(config.get("Env") or []),
        "",
        dict.fromkeys(DISK_HYGIENE, "n/a"),
    )


def _vm_start(host: Any, spec: Spec, config: dict[str, Any], wrapper: Any) -> Start:
    """From the app's systemd unit and the wrapper it runs; the disk image's hygiene is read
    beside these checks (diskread)."""
    unit = f"{spec.service_name}.service"
    # `{ path=... ; argv[]=PROG ARGS ; ignore_errors=no ; ... }`: the command line it runs
    started = _unit(host, unit, "ExecStart").partition("argv[]=")[2].partition(" ;")[0] or "none"
    user = _unit(host, unit, "User") or "root"
    return Start(
        _wrapper_argv(wrapper.content_string) if wrapper.exists else ABSENT,
        f"systemd ExecStart={started}",
        user,
        _env_pairs(systemd_words(_unit(host, unit, "Environment"))),
        f"runuser -u {shlex.quote(user)} -- ",
        {},
    )


STARTS = {"container": _container_start, "vm": _vm_start}


class Laps:
    """Wall time per group of checks, as the report's `group_seconds` shows them."""

    def __init__(self) -> None:
        self.laps: dict[str, str] = {}
        self._last = time.monotonic()

    def lap(self, group: str) -> None:
        now = time.monotonic()
        self.laps[group] = f"{now - self._last:.1f}"
        self._last = now


SETUID_SCRIPT = r"""
unowned() {
  dpkg -S "$@" 2>&1 >/dev/null | sed -n 's/^dpkg-query: no path found matching pattern //p'
}
files=$(find / -xdev -type f \( -perm -4000 -o -perm -2000 \) 2>/dev/null)
[ -n "$files" ] || exit 0
miss=$(unowned $files)
[ -n "$miss" ] || exit 0
# dpkg knows merged-/usr files by the path their package ships (/bin/su, not /usr/bin/su): those
# asked again without /usr, in one call (each dpkg -S reads every package's file list: seconds
# under TCG); what is still unowned then is named by its /usr path.
alts=""
for f in $miss; do
  if [ "${f#/usr/}" != "$f" ]; then alts="$alts ${f#/usr}"; else echo "$f"; fi
done
[ -z "$alts" ] || for a in $(unowned $alts); do echo "/usr$a"; done
"""


def comparable(stdout: str, ignore: list[str]) -> str:
    """stdout with the spec's ignore patterns blanked; long output by its length and digest."""
    for rx in ignore:
        stdout = re.sub(rx, "<ignored>", stdout)
    text = stdout.strip()
    if len(text) <= 300:
        return text
    return (
        f"{text[:200]}... ({len(text)} chars, sha256 {hashlib.sha256(text.encode()).hexdigest()})"
    )


def _setuid_outside_packages(host: Any) -> str:
    """setuid/setgid files no installed package owns (dpkg -S), e.g. a copied-in binary; as
    root (the runtime user's `find` missed one in /root)."""
    out = filebytes.as_root(host).run(f"sh -c {shlex.quote(SETUID_SCRIPT)}").stdout.split()
    return " ".join(sorted(out)) or "none"
