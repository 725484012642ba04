"""What an app stage's layer adds to the layers below it, and whether that is all it does: new
paths under `app.dest` (and the entrypoint wrapper), plain names, no whiteout, no changed lower
file, no Python distribution metadata. Such a layer leaves every role's work below it as it was,
so what was learnt of the image below (its installed packages, a VM's disk) holds with any app:
the VM's app overlay (app_overlay.py) and the container's package inventory (container.py) are
then reused instead of made again."""

from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass

from imagebuild import resolved
from imagebuild.builders.layers import Layer, Manifest
from imagebuild.spec import Spec

PLAIN = re.compile(r"[A-Za-z0-9._+@%=,:-]+(?:/[A-Za-z0-9._+@%=,:-]+)*")  # one debugfs word
WRAPPER = resolved.WRAPPER.lstrip("/")  # written by the app role (its template)
TYPES = {
    tarfile.DIRTYPE: "dir",
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.SYMTYPE: "link",
}
# Python distribution metadata, or what could put some on the path: `python -c` sees its
# working directory (the app's folder), so such a file there could change what the inventory
# finds (a .pth only counts in a site folder: refused all the same).
DISTRIBUTION = (".dist-info", ".egg-info", ".egg-link", ".egg", ".pth", ".whl")


@dataclass(frozen=True)
class AppFiles:
    """What an app layer adds to the layers below it: (path, type) of each path it creates, in
    tar order (parents first)."""

    diff_id: str
    added: list[tuple[str, str]]


def app_files(app: Layer, below: Manifest, spec: Spec) -> AppFiles | str:
    """The app layer's additions, or why it does more than add the app's files."""
    dest = (spec.app.dest if spec.app else "/").strip("/")
    added: list[tuple[str, str]] = []
    with tarfile.open(app.path) as tar:
        for m in tar:
            name = m.name.rstrip("/")
            kind = TYPES.get(m.type)
            if kind is None:
                return f"{name} is a hard link, device or other special entry"
            if os.path.basename(name).startswith(".wh."):
                return f"the app stage removed {name.replace('.wh.', '', 1)}"
            if not PLAIN.fullmatch(name):
                return f"{name!r} is not a plain path name"
            if name in below:
                if kind != "dir" or below[name][0] != tarfile.DIRTYPE.decode():
                    return f"the app stage changed {name}, which a layer below holds"
                continue
            if not (name in (WRAPPER, dest) or name.startswith(dest + "/")):
                return f"the app stage added {name}, outside {spec.app.dest if spec.app else '/'}"
            if any(part.endswith(DISTRIBUTION) for part in name.split("/")):
                return f"the app stage added {name}: Python distribution metadata"
            added.append((name, kind))
    return AppFiles(app.diff_id, added)
