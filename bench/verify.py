"""Benchmark: `invoke verify` of this checkout beside an earlier revision's, on the same built
artifacts, alternating runs (so both see the same machine state). Times are verify's own:
container start, VM boot to SSH, the test run, and the whole command.

    .venv/bin/python bench/verify.py --baseline REV [--spec SPEC] [--dist DIST] [--runs N]

The artifacts must exist (`invoke all` or build-container + build-vm into DIST). The baseline
runs from a git worktree of REV with the same venv; where REV's spec model refuses the spec, the
keys added since (NEW_KEYS) are dropped from its copy (it checks less: that is the point of the
comparison), else it gets the spec as it is.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import INVOKE, ROOT, table

NEW_KEYS = {"verify": ["service"]}  # spec keys added since the baselines this was written for


def run_verify(checkout: Path, spec: Path, dist: Path) -> dict[str, float]:
    start = time.monotonic()
    r = subprocess.run(
        [INVOKE, "verify", "--spec", str(spec), "--dist", str(dist)],
        cwd=checkout,
        capture_output=True,
        text=True,
    )
    total = time.monotonic() - start
    if r.returncode != 0:
        raise SystemExit(f"verify in {checkout} failed:\n{r.stderr[-3000:]}")
    seconds = json.loads((dist / "verify" / "report.json").read_text())["seconds"]
    rows = len(json.loads((dist / "verify" / "report.json").read_text())["rows"])
    return {**seconds, "rows": rows, "total": total}


def baseline_spec(spec: Path, dest: Path, checkout: Path) -> Path:
    """A copy of the spec (and its folder: lock, app) that the baseline's spec model loads:
    as it is, or without the keys added since."""
    shutil.copytree(spec.parent, dest, dirs_exist_ok=True)
    out = dest / spec.name
    load = "import sys; from imagebuild import spec; spec.load(sys.argv[1])"
    # run in the checkout: its own imagebuild package comes first on sys.path
    known = subprocess.run(
        [sys.executable, "-c", load, str(out)], cwd=checkout, capture_output=True
    )
    if known.returncode == 0:
        return out
    data = yaml.safe_load(spec.read_text())
    for section, keys in NEW_KEYS.items():
        for k in keys:
            (data.get(section) or {}).pop(k, None)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--spec", default=str(ROOT / "examples/onnx-serve/imagebuild.yaml"))
    ap.add_argument("--dist", default=str(ROOT / "dist"))
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    spec, dist = Path(args.spec).resolve(), Path(args.dist).resolve()
    with tempfile.TemporaryDirectory(prefix="ib-bench-verify-") as tmp:
        old = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(old), args.baseline],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            old_spec = baseline_spec(spec, Path(tmp) / "spec", old)
            runs: dict[str, list[dict[str, float]]] = {"baseline": [], "this": []}
            for _ in range(args.runs):
                runs["baseline"].append(run_verify(old, old_spec, dist))
                runs["this"].append(run_verify(ROOT, spec, dist))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT)
    keys = list(runs["this"][0])
    rows = []
    for k in keys:
        b = statistics.median(r[k] for r in runs["baseline"])
        t = statistics.median(r[k] for r in runs["this"])
        ratio = f"{t / b:.2f}x" if k == "total" and b else ""
        rows.append((f"{k} (median of {args.runs})", f"{b:.1f}", f"{t:.1f} {ratio}".strip()))
    table(rows, last="this checkout (#25 target: total <= 45 s)", value=f"baseline {args.baseline}")


if __name__ == "__main__":
    main()
