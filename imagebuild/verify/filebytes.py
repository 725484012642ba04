"""Parity by bytes: names and versions agreeing is not enough, the files behind them must be the
bytes their packages recorded. One run of data/bytes_script.py per artifact, as root (dpkg's
digests, the venv's wheel RECORDs, the app folder's files, what no package owns, and what every
path is: filemeta.py judges that part). The VM's file contents are read from its disk image
on this host instead (diskread.py, diskbytes.py): there the script only lists."""

from __future__ import annotations

import hashlib
import json
import shlex
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import testinfra

from imagebuild import inventory, resolved, roles
from imagebuild.spec import Spec
from imagebuild.verify.filemeta import Listing
from imagebuild.verify.interpreter import ScriptFailed, parse, texts
from imagebuild.verify.items import WRAPPER
from imagebuild.verify.model import ANY, Item

SCRIPT = (Path(inventory.__file__).parent / "data" / "bytes_script.py").read_text()

# (row, the script's key, expected in both (ANY: only agree), must the two agree?)
ROWS = [
    ("deb files changed or missing (dpkg --verify)", "deb", "none", True),
    # Conffiles are the admin's: reported apart, the VM's own roles may edit theirs.
    ("deb conffiles changed (dpkg --verify)", "conffiles", ANY, False),
    ("venv files not as their wheel's RECORD says", "record", "none", True),
    ("venv files no RECORD lists", "venv-extra", ANY, True),
    ("venv sha256 (every file but byte-code caches)", "venv", ANY, True),
    ("programs and /usr/local files no package owns, /etc/ld.so.preload", "unlocked", "none", True),
]
APP_TREE = "app folder sha256 (every file)"
# What the script's output gives: all of it is unread when it gives nothing.
KINDS = ("bytes", "app-file", "files", "file-meta")


def as_root(host: Any) -> Any:
    """The container's facts are read as its runtime user; some need root (dpkg --verify reads
    every package file; the setuid scan looks in folders only root may read). The VM's host is
    root already."""
    backend = host.backend
    if backend.NAME == "docker" and backend.user != "root":
        return testinfra.get_host(f"docker://root@{backend.name}")
    return host


@dataclass(frozen=True)
class Running:
    host: Any  # root on the artifact
    out: str  # where the script's JSON appears, once it is complete (its stderr: out.err)
    python: str  # the interpreter running it


def ours(spec: Spec) -> list[str]:
    """What imagebuild's own roles install outside the packages (checked by other rows): the
    entrypoint wrapper, the GPU guard, and the stack roles' /usr/local files (the CUDA probe)."""
    paths = {WRAPPER, *([resolved.GPU_GUARD] if spec.gpu else [])}
    for name in spec.stacks:
        paths |= {
            v
            for v in roles.defaults(name).values()
            if isinstance(v, str) and v.startswith("/usr/local/")
        }
    return sorted(paths)


def argument(spec: Spec) -> dict[str, Any]:
    """The script's argument (diskbytes.py takes it too)."""
    return {
        "venv": spec.python.venv if spec.python else None,
        "app": spec.app.dest if spec.app else "/nonexistent",
        "skip": ours(spec),
    }


def start(host: Any, spec: Spec, python: str, contents: bool = True) -> Running:
    """Start the script in the background while verify collects the other facts over many
    short round trips. `python`: an interpreter of the artifact that runs (interpreter.probe);
    it needs only the standard library. Not `contents`: the script reads no file's bytes (the
    VM's are read from its disk image on this host: hashing them in the guest took ~20 s of
    its emulated CPUs)."""
    arg = argument(spec) | {"contents": contents}
    out = f"/tmp/imagebuild-verify-bytes-{uuid.uuid4().hex[:8]}.json"
    cmd = f"{shlex.quote(python)} -c {shlex.quote(SCRIPT)} {shlex.quote(json.dumps(arg))}"
    job = f'{cmd} > {out}.part 2> {out}.err; echo "exit $?" >> {out}.err; mv {out}.part {out}'
    root = as_root(host)
    root.check_output(f"nohup sh -c {shlex.quote(job)} </dev/null >/dev/null 2>&1 &")
    return Running(root, out, python)


def unread(why: str) -> dict[str, dict[str, str]]:
    """The facts of an artifact where the script gave nothing: every row it feeds says why."""
    return {"unread": dict.fromkeys(KINDS, why), "bytes": {}, "app-file": {}}


def finish(
    run: Running, contents: dict[str, Any] | str | None = None, timeout: float = 900
) -> tuple[dict[str, dict[str, str]], Listing | None]:
    """The rows, and the listing of what every path is (None where the script failed: its
    rows then say why, by `unread`). `contents`: the content keys read elsewhere (the disk
    image's: diskbytes.contents) for a script started without them; a text where they could
    not be read: the rows they feed say it, the listing stays."""
    deadline = time.monotonic() + timeout
    while (r := run.host.run(f"cat {run.out}")).rc != 0:
        if time.monotonic() > deadline:
            return unread(f"the file digest script gave no result in {timeout:.0f}s"), None
        time.sleep(1)
    err = run.host.run(f"cat {run.out}.err; rm -f {run.out} {run.out}.err").stdout
    stderr, _, code = err.rstrip().rpartition("exit ")
    what = f"the file digest script ({run.python})"
    try:
        raw = parse(what, int(code) if code.isdigit() else -1, r.stdout, stderr)
        listing = Listing.from_json(raw["meta"])
        if isinstance(contents, str):
            unread_rows = {"bytes": contents, "app-file": contents}
            return {"unread": unread_rows, "bytes": {}, "app-file": {}}, listing
        raw |= contents or {}
        rows = texts({row: raw[key] for row, key, _, _ in ROWS if key in raw})
        app = texts(raw["app"])
    except ScriptFailed as e:
        return unread(str(e)), None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return unread(f"{what} printed another shape: {e!r}"), None
    whole = hashlib.sha256("".join(f"{p}\0{d}\n" for p, d in sorted(app.items())).encode())
    rows[APP_TREE] = f"{whole.hexdigest()} ({len(app)} files)"
    return {"bytes": rows, "app-file": app}, listing


def items(spec: Spec, container_app_files: list[str]) -> list[Item]:
    """The rows above, and one per file of the container's app folder (a changed file is named;
    one the VM has in addition changes the folder's digest)."""
    out = [
        Item("bytes", row, want, want, shared=shared)
        for row, key, want, shared in ROWS
        if key not in ("record", "venv-extra", "venv") or spec.python
    ]
    if spec.app:
        out.append(Item("bytes", APP_TREE, ANY, ANY))
        out += [Item("app-file", f, ANY, ANY) for f in container_app_files]
    return out
