"""An app-only change to a VM built before: the new app layer's files written into that VM's
finished disk with debugfs (no mount, no boot), instead of a new base disk, a Packer boot and its
provisioning. Everything else on that disk is the last Packer pass's, which found the app role
converged on it: the app's files are all the app stage adds, and no VM role reads them (the
unit runs the wrapper by its path).

Kept, after every full build, under the key of the VM but its app's files (keys.vm_but_app):
the shipped qcow2 and what the next overlay needs (`vm.json`: the app layer it holds, the paths
that layer added, the VM's inventory). Taken only for exactly that case; anything else is a full
build, and the build says why: the app layer may add paths and set the metadata of folders
that exist below it, nothing more (no whiteout, hard link, device, changed lower file), under
`app.dest` or the wrapper, with plain names (debugfs reads its commands word by word).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagebuild import progress, provenance, tools
from imagebuild.builders import stages, vm_outputs
from imagebuild.builders.app_layer import PLAIN, TYPES, AppFiles, app_files
from imagebuild.builders.context import Build
from imagebuild.builders.disk import PART_OFFSET
from imagebuild.builders.layers import Layer, load_manifest
from imagebuild.cache import Cache
from imagebuild.errors import ImageBuildError

KIND = "vms"
MODE_BITS = {"dir": 0o040000, "file": 0o100000, "link": 0o120000}


class OverlayError(ImageBuildError):
    pass


@dataclass(frozen=True)
class Prior:
    """A VM built before under the same `vm_but_app` key."""

    disk: Path  # its shipped qcow2, in the cache
    app: AppFiles
    inventory: dict[str, Any]


def find(cache: Cache, key: str) -> Prior | None:
    """The VM kept under `key`, if any and intact."""
    folder = cache.dir(KIND, key)
    if not (folder / "vm.json").is_file() or not cache.intact(KIND, key):
        return None
    try:
        meta = json.loads((folder / "vm.json").read_text())
        app = AppFiles(
            str(meta["app"]["diff_id"]), [(str(p), str(k)) for p, k in meta["app"]["added"]]
        )
        inventory = dict(meta["inventory"])
    except (ValueError, KeyError, TypeError, RecursionError):  # not what keep() writes: made again
        return None
    # Its paths become debugfs commands: the same rule as a layer's, whoever wrote the file.
    if not all(PLAIN.fullmatch(p) and k in MODE_BITS for p, k in app.added):
        return None
    return Prior(folder / "disk.qcow2", app, inventory)


def keep(
    cache: Cache, key: str, qcow2: Path, sha256: str, app: AppFiles, inventory: dict[str, Any]
) -> None:
    """Keep a finished VM for the next app-only change (a hard link: the bytes shipped, whose
    `sha256` SHA256SUMS has just recorded)."""
    known = {"disk.qcow2": sha256}
    with cache.building(KIND, key, known) as tmp:
        try:
            os.link(qcow2, tmp / "disk.qcow2")
        except OSError:  # dist on another filesystem than the cache
            shutil.copyfile(qcow2, tmp / "disk.qcow2")
        body = {"app": {"diff_id": app.diff_id, "added": app.added}, "inventory": inventory}
        (tmp / "vm.json").write_text(json.dumps(body, sort_keys=True))


def _sif(path: str, kind: str, info: tarfile.TarInfo) -> list[str]:
    """debugfs commands setting what the layer says of `path` (every time field: the layer's
    clamped mtime, so the same layer gives the same inode)."""
    fields = {
        "mode": f"0{MODE_BITS[kind] | (info.mode & 0o7777):o}",
        "uid": str(info.uid),
        "gid": str(info.gid),
    }
    fields |= dict.fromkeys(("mtime", "atime", "ctime", "crtime"), f"@{int(info.mtime)}")
    return [f"sif /{path} {field} {value}" for field, value in fields.items()]


def script(prior: AppFiles, new: AppFiles, layer: Path, files: Path) -> list[str]:
    """The debugfs commands that take a disk from `prior`'s app files to `new`'s, the new
    regular files extracted into `files` (debugfs writes from local files)."""
    keep_dirs = {p for p, k in new.added if k == "dir"} & {p for p, k in prior.added if k == "dir"}
    cmds = [
        f"{'rmdir' if kind == 'dir' else 'rm'} /{path}"
        for path, kind in sorted(prior.added, reverse=True)  # children before their folder
        if path not in keep_dirs
    ]
    added = dict(new.added)
    files.mkdir(parents=True, exist_ok=True)
    with tarfile.open(layer) as tar:
        for n, m in enumerate(tar):
            path = m.name.rstrip("/")
            kind = TYPES[m.type]
            if path in added and path not in keep_dirs:
                if kind == "dir":
                    cmds.append(f"mkdir /{path}")
                elif kind == "link":
                    if not PLAIN.fullmatch(m.linkname.lstrip("/")):
                        raise OverlayError(f"{path}: link target {m.linkname!r} is not plain")
                    cmds.append(f"symlink /{path} {m.linkname}")
                else:
                    src = files / str(n)
                    with src.open("wb") as out, tar.extractfile(m) as data:  # type: ignore[union-attr]
                        out.write(data.read())
                    cmds.append(f"write {src} /{path}")
            cmds += _sif(path, kind, m)
    return cmds


def apply(prior: Prior, new: AppFiles, layer: Path, work: Path, sde: int) -> Path:
    """A qcow2 (uncompressed, in `work`) of `prior`'s disk with `new`'s app files in place of
    its own; freed blocks given back (e2fsck's discard), the filesystem checked."""
    raw, fs = work / "overlay.raw", f"{work / 'overlay.raw'}?offset={PART_OFFSET}"
    try:
        return _apply(prior, new, layer, work, sde, raw, fs)
    finally:
        raw.unlink(missing_ok=True)  # a 6 GiB sparse file, also when the overlay failed


def _apply(
    prior: Prior, new: AppFiles, layer: Path, work: Path, sde: int, raw: Path, fs: str
) -> Path:
    tools.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", prior.disk, raw])
    commands = work / "overlay.debugfs"
    commands.write_text("\n".join(script(prior.app, new, layer, work / "overlay-files")) + "\n")
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(sde)}
    r = tools.run(["debugfs", "-w", "-f", commands, fs], env=env)
    errors = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("debugfs ")]
    if errors:
        raise OverlayError("debugfs: " + "; ".join(errors[:5]))
    # -E discard: the blocks of the old app's files become holes (not readable in the image)
    check = tools.run(["e2fsck", "-f", "-y", "-E", "discard", fs], env=env, ok=(0, 1, 2, 4, 8))
    if check.returncode != 0:
        raise OverlayError(
            f"e2fsck {shlex.quote(fs)} exit {check.returncode}: "
            f"{(check.stdout + check.stderr).strip()[-500:]}"
        )
    out = work / "overlay.qcow2"
    tools.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, out])
    return out


def select(b: Build, layers: list[Layer]) -> tuple[AppFiles | str, Prior | None]:
    """This build's app files (or why they cannot be written over a VM), and the VM built
    before that they will be written over (None: a full build; said why when there was one)."""
    cache, keys = b.inputs.cache, b.inputs.keys
    below = load_manifest(stages.manifest_path(cache, keys.stages["stacks"]))
    app = app_files(layers[-1], below, b.inputs.spec)
    prior = find(cache, keys.vm_but_app)
    if prior is not None and isinstance(app, str):
        progress.say(f"build-vm: app overlay not taken ({app}): a full build")
    return app, prior if isinstance(app, AppFiles) else None


def build(
    b: Build,
    prior: Prior,
    app: AppFiles,
    layer: Layer,
    to: vm_outputs.Delivery,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The VM built before with this build's app files written over its own, shipped as Packer's
    disk would be; (parity, the VM's inventory: the prior VM's, unchanged)."""
    start = time.monotonic()
    with progress.stage("build-vm: app overlay", f"{len(app.added)} paths, no boot") as st:
        written = apply(prior, app, layer.path, b.workdir, b.inputs.lock.source_date_epoch)
        st["note"] = f"over the VM with app layer {prior.app.diff_id[:12]}"
    to.seconds["app overlay"] = round(time.monotonic() - start, 1)
    manifest = {"builds": [], "imagebuild": "app overlay over the last Packer build: no Packer run"}
    parity = vm_outputs.ship(
        written,
        json.dumps(manifest).encode() + b"\n",
        prior.inventory,
        # what the VM was made from: the previous VM (same vm_but_app key) and this app layer
        provenance.subject("app layer over the previous VM", layer.diff_id.removeprefix("sha256:")),
        b.inputs,
        to,
    )
    parity["shared_roles_changed"] = "not run: an app overlay (the Packer pass under it found none)"
    return parity, prior.inventory
