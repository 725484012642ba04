"""Facts of one artifact, read through a testinfra host: the same function for `docker://` and
`ssh://`. The bulk (dpkg, venv, imports, linker cache) comes from one run of the inventory
script, because every command costs a round trip (and an emulated CPU on the VM side)."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from imagebuild import inventory, vmboot
from imagebuild.lock.lockfile import Lock
from imagebuild.spec import Spec
from imagebuild.verify import filebytes, gpu
from imagebuild.verify.items import (
    DISK_HYGIENE,
    SETUID_ROW,
    WRAPPER,
    behaviour_commands,
    behaviour_key,
    import_names,
    smoke_command,
)
from imagebuild.verify.model import ABSENT

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
    host: Any, artifact: str, spec: Spec, lock: Lock, config: dict[str, Any], disk: Path | None
) -> Facts:
    """`artifact` is "container" (config = the image config) or "vm" (disk = the qcow2).
    `seconds`: each group's time (the digest script runs behind the others)."""
    laps = Laps()
    hashing = filebytes.start(host, spec)
    # The disk image's hygiene is read on this host (qemu-img + debugfs): beside the VM's checks.
    with ThreadPoolExecutor(1) as reading:
        image = reading.submit(disk_hygiene, disk) if disk is not None else None
        facts, run_as = _collect(host, artifact, spec, lock, config, laps)
        if image is not None:
            facts["hygiene"] |= image.result()
    laps.lap("the rest of the disk image's hygiene")
    facts |= filebytes.finish(hashing)
    laps.lap("bytes: what the digest script still needed")
    if spec.gpu:
        facts |= gpu.facts(host, spec, run_as, WRAPPER, facts["env"])
        laps.lap("gpu")
    return facts | {"seconds": laps.laps}


def _collect(
    host: Any, artifact: str, spec: Spec, lock: Lock, config: dict[str, Any], laps: Laps
) -> tuple[Facts, str]:
    """The facts read over the host's own commands, and the prefix that runs a command as the
    runtime user there."""
    want = json.dumps({"imports": import_names(spec)})
    script = shlex.quote(inventory.SCRIPT)
    raw = json.loads(
        host.check_output(f"{inventory.target_python(spec)} -c {script} {shlex.quote(want)}")
    )
    laps.lap("inventory: packages, imports, libraries")
    deb = {n.split(":")[0]: v for n, v, _ in raw["deb"]}
    python: dict[str, str] = {canonicalize_name(n): v for n, v in raw["python"]}
    locked_debs = {p.name for p in lock.shared} | (
        {p.name for p in lock.vm} if artifact == "vm" else set()
    )
    locked_py = {w.name for w in lock.python}
    wrapper = host.file(WRAPPER)
    facts: Facts = {
        "deb": deb,
        "deb-unlocked": {
            "installed but not in the lock": json.dumps(sorted(set(deb) - locked_debs))
        },
        "python": python,
        "python-unlocked": {
            "venv tooling (pip, setuptools)": " ".join(
                sorted(f"{n}=={v}" for n, v in python.items() if n not in locked_py)
            )
        },
        "import": raw.get("import", {}),
        "lib": raw.get("lib", {}),
        "entrypoint": {"wrapper sha256": wrapper.sha256sum if wrapper.exists else ABSENT},
    }
    if artifact == "container":
        argv = " ".join([*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])])
        user = config.get("User") or "root"
        env = _env_pairs(config.get("Env") or [])
        run_as = ""
        facts["entrypoint"] |= {
            "ENTRYPOINT+CMD / wrapper": argv,
            "what starts it": "image ENTRYPOINT" if config.get("Entrypoint") else "none",
        }
        hygiene = dict.fromkeys(DISK_HYGIENE, "n/a")
    else:
        unit = spec.name
        # `{ path=... ; argv[]=PROG ARGS ; ignore_errors=no ; ... }`: the command line it runs
        exec_start = _unit(host, unit, "ExecStart")
        started = exec_start.partition("argv[]=")[2].partition(" ;")[0] or "none"
        user = _unit(host, unit, "User") or "root"
        env = _env_pairs(systemd_words(_unit(host, unit, "Environment")))
        run_as = f"runuser -u {shlex.quote(user)} -- "
        facts["entrypoint"] |= {
            "ENTRYPOINT+CMD / wrapper": _wrapper_argv(wrapper.content_string)
            if wrapper.exists
            else ABSENT,
            "what starts it": f"systemd ExecStart={started}",
        }
        hygiene = {}  # read from the disk image beside these checks
    laps.lap("entrypoint, user, env")
    smoke = host.run(f"env {smoke_command(spec, run_as)}")
    facts["smoke"] = {
        smoke_command(spec): smoke.stdout.strip() if smoke.rc == 0 else smoke.stderr.strip()[-200:],
        f"{smoke_command(spec)}: exit status": str(smoke.rc),
    }
    facts["behaviour"] = {}
    for cmd in behaviour_commands(spec):
        r = host.run(f"env {smoke_command(spec, run_as, cmd)}")
        key = behaviour_key(cmd)
        facts["behaviour"][f"{key}: exit status"] = str(r.rc)
        facts["behaviour"][f"{key}: stdout"] = comparable(r.stdout, spec.verify.ignore)
    laps.lap("smoke and behaviour commands")
    facts["user"] = {"runtime user": user}
    facts["env"] = env
    facts["hygiene"] = {
        "runs as root": "yes" if user in ("root", "0") else "no",
        SETUID_ROW: _setuid_outside_packages(host),
        **hygiene,
    }
    laps.lap("setuid scan")
    return facts, run_as


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
files=$(find / -xdev -type f \( -perm -4000 -o -perm -2000 \) 2>/dev/null)
[ -n "$files" ] || exit 0
# dpkg knows merged-/usr files by the path their package ships (/bin/su, not /usr/bin/su).
miss=$(dpkg -S $files 2>&1 >/dev/null | sed -n 's/^dpkg-query: no path found matching pattern //p')
for f in $miss; do
  alt=${f#/usr}
  [ "$alt" != "$f" ] && dpkg -S "$alt" >/dev/null 2>&1 || echo "$f"
done
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
    """setuid/setgid files no installed package owns (dpkg -S), e.g. a copied-in binary."""
    out = host.run(f"sh -c {shlex.quote(SETUID_SCRIPT)}").stdout.split()
    return " ".join(sorted(out)) or "none"


def disk_hygiene(disk: Path) -> dict[str, str]:
    """Read the image itself (never booted; the booted copy makes its own machine-id)."""
    with tempfile.TemporaryDirectory(prefix="imagebuild-hygiene-") as tmp:
        part = vmboot.partition_image(disk, Path(tmp))

        def ls(path: str) -> list[str]:
            r = subprocess.run(["debugfs", "-R", f"ls -p {path}", str(part)],
                               capture_output=True, text=True)  # fmt: skip
            return [ln.split("/")[5] for ln in r.stdout.splitlines() if ln.count("/") >= 6]

        keys = [f for f in ls("/root/.ssh") if f.startswith("authorized_keys")]
        homes = ["/root", *[f"/home/{h}" for h in ls("/home") if h not in (".", "..")]]
        history = [f"{h}/{f}" for h in homes for f in ls(h) if f.endswith("_history")]
        seed = [f for f in ls("/var/lib/systemd") if f == "random-seed"]
        leases = [f for f in ls("/var/lib/dhcp") if f.endswith(".leases") or "dhclient" in f]
        journal = [f for f in ls("/var/log/journal") if f not in (".", "..")]
        host_keys = [f for f in ls("/etc/ssh") if f.startswith("ssh_host_")]
        # what cloud-init keeps of a boot: a clone with it would skip its own first boot
        cloud = [f for f in ls("/var/lib/cloud") if f in ("instance", "instances", "data", "sem")]
        shadow = vmboot.debugfs_cat(part, "/etc/shadow").decode()
        root_pw = next(
            (ln.split(":")[1] for ln in shadow.splitlines() if ln.startswith("root:")), ""
        )
        return {
            "/etc/machine-id content (disk image)": vmboot.debugfs_cat(part, "/etc/machine-id")
            .decode()
            .strip(),
            "authorized SSH keys (disk image)": " ".join(keys) or "none",
            "SSH host keys (disk image)": " ".join(host_keys) or "none",
            "root password (disk image)": "locked"
            if root_pw[:1] in ("*", "!")
            else ("EMPTY" if not root_pw else "SET"),
            "shell history (disk image)": " ".join(history) or "none",
            "systemd random seed (disk image)": " ".join(seed) or "none",
            "DHCP leases (disk image)": " ".join(leases) or "none",
            "journal files (disk image)": " ".join(journal) or "none",
            "cloud-init instance state (disk image)": " ".join(cloud) or "none",
        }
