"""Benchmark: the `pytorch` stack really built (issue #6): lock, download, cold container build,
layer and image size.

    .venv/bin/python bench/pytorch.py [--cache-dir DIR]

A private copy of examples/onnx-serve with `stacks: [pytorch]` instead of onnxruntime. PyPI's
torch for Linux is the CUDA build (several GB of nvidia-* wheels), which is why CI leaves this
out. The first run downloads about 3 GB; the fetch row says how much was really downloaded.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import docker
from common import bench, table, timed


def use_pytorch(spec: Path) -> None:
    spec.write_text(re.sub(r"(?m)^stacks: .*$", "stacks: [pytorch]", spec.read_text()))


def main() -> None:
    start = time.monotonic()
    with bench(__doc__, "ib-bench-torch-", use_pytorch) as (cache_dir, work, spec, common):
        lock_fetch = time.monotonic() - start
        cold, r = timed("build-container", *common)
        noop, _ = timed("build-container", *common)
        layer_rx = r"(?m)^layer (\w+)\s+\S+\s+([\d.]+ MB)"
        layers = {m[1]: m[2] for m in re.finditer(layer_rx, r.stdout)}
        tag = next(ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("image "))
        image = docker.from_env().images.get(tag)
        probe = ["/opt/venv/bin/python", "-c", "import torch; print(torch.__version__)"]
        torch = (
            docker.from_env()
            .containers.run(tag, entrypoint=probe, network_mode="none", remove=True)
            .decode()
            .strip()
        )
        lock = json.loads(Path(spec).with_suffix(".lock").read_text())
        wheels = [w for w in lock["python"] if w["group"] == "pytorch"]
        table(
            [
                ("lock + fetch (incl. download)", f"{lock_fetch:.0f} s", ""),
                (
                    "pytorch wheels (locked, downloaded once)",
                    f"{len(wheels)}, {sum(w['size'] for w in wheels) / 1e9:.2f} GB",
                    "",
                ),
                ("build-container, cold (empty stage cache)", f"{cold:.0f} s", ""),
                ("build-container, nothing changed", f"{noop:.1f} s", "<= 1 s"),
                ("stacks layer (torch + nvidia-* wheels)", layers.get("stacks", "?"), ""),
                ("image size", f"{image.attrs['Size'] / 1e9:.2f} GB", ""),
                ("torch in the image", torch, ""),
            ],
            last="note",
        )


if __name__ == "__main__":
    main()
