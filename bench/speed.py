"""Benchmark, before and after: this checkout beside an earlier revision (a git worktree, the
same venv), each on a private copy of examples/onnx-serve with its committed lock and a private
tag, from empty build caches (downloads reused through hard links), beside the hand-written
Dockerfile of bench/dockerfile.py. Prints one table (before | after | Dockerfile | target) and
the after's per-step profile of the container paths ($IMAGEBUILD_PROFILE, imagebuild.profile).

    .venv/bin/python bench/speed.py --baseline REV [--cache-dir DIR] [--no-vm]

Measured, for each checkout: build-container cold (every stage), cold with the base stage
cached (what the Dockerfile starts from: its FROM is imagebuild's base layer), one app file
changed, nothing changed (median of 3); build-vm cold (container stages cached), build-container
+ build-vm after one changed app file; verify end to end. Issue #25's targets are in the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dockerfile
from common import BENCH_REPOSITORY, DEFAULT_CACHE, INVOKE, ROOT, cold_cache

APP_FILE = Path("app") / "app" / "__init__.py"


class Checkout:
    """One revision's invoke, on its own private example, cache and dist."""

    def __init__(self, name: str, root: Path, work: Path, downloads: str) -> None:
        self.name, self.root, self.work = name, root, work
        shutil.copytree(
            ROOT / "examples",
            work / "examples",
            ignore=shutil.ignore_patterns("__pycache__", "dist"),
        )
        self.spec = work / "examples" / "onnx-serve" / "imagebuild.yaml"
        text = self.spec.read_text().replace("local/onnx-serve", f"{BENCH_REPOSITORY}/onnx-serve")
        self.spec.write_text(text)
        self.downloads = downloads
        self.cache = cold_cache(downloads, work / "cache")
        self.run("fetch", "--spec", str(self.spec), "--cache-dir", str(self.cache))

    def args(self, cache: Path | None = None) -> list[str]:
        return [
            "--spec",
            str(self.spec),
            "--cache-dir",
            str(cache or self.cache),
            "--dist",
            str(self.work / "dist"),
        ]

    def run(self, *args: str, profile: Path | None = None) -> tuple[float, str]:
        """Seconds and stdout of `invoke ARGS` run by this checkout's code."""
        # Bytecode written and reused as on a user's machine (this sandbox sets the variable).
        env = {**os.environ, "PYTHONPATH": str(self.root)}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        if profile:
            env["IMAGEBUILD_PROFILE"] = str(profile)
        start = time.monotonic()
        r = subprocess.run([INVOKE, *args], cwd=self.root, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"{self.name}: invoke {' '.join(args)} failed:\n{r.stderr[-3000:]}")
        return time.monotonic() - start, r.stdout

    def touch_app(self) -> None:
        with (self.spec.parent / APP_FILE).open("a") as f:
            f.write(f"# bench {time.monotonic()}\n")

    def base_cached(self) -> Path:
        """A cold cache holding only the base stage this checkout made (as the Dockerfile's
        FROM holds it)."""
        record = json.loads(next((self.work / "dist").glob("*.container.json")).read_text())
        key = next(s["key"] for s in record["stages"] if s["name"] == "base")
        cache = cold_cache(self.downloads, self.work / "cache-base")
        self.run("fetch", "--spec", str(self.spec), "--cache-dir", str(cache))
        (cache / "stages").mkdir(exist_ok=True)
        shutil.copytree(self.cache / "stages" / key, cache / "stages" / key, copy_function=os.link)
        for f in ("verified.json",):  # the seals' memo: what a cache that made it would hold
            if (self.cache / f).exists():
                shutil.copy(self.cache / f, cache / f)
        return cache


def measure(c: Checkout, vm: bool) -> dict[str, float]:
    # The other checkout's image (same tag, maybe the same lower layers) would spare this one's
    # cold build the load of those layers: each starts from an engine without it.
    tag = f"{BENCH_REPOSITORY}/onnx-serve:" + next(
        ln.split(":", 1)[1].strip()
        for ln in c.spec.read_text().splitlines()
        if ln.startswith("version:")
    )
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
    out: dict[str, float] = {}
    out["container cold"], _ = c.run("build-container", *c.args())
    out["container cold, base cached"], _ = c.run("build-container", *c.args(c.base_cached()))
    c.touch_app()
    profile = c.work / "profile-app.json"
    out["container, one app file changed"], _ = c.run("build-container", *c.args(), profile=profile)
    out["container, nothing changed"] = statistics.median(
        c.run("build-container", *c.args())[0] for _ in range(3)
    )
    if vm:
        out["vm cold (container stages cached)"], _ = c.run("build-vm", *c.args())
        c.touch_app()
        t1, _ = c.run("build-container", *c.args())
        t2, _ = c.run("build-vm", *c.args())
        out["vm, one app file changed (build-container + build-vm)"] = t1 + t2
        out["vm, nothing changed"], _ = c.run("build-vm", *c.args())
        out["verify, end to end"], _ = c.run(
            "verify", "--spec", str(c.spec), "--dist", str(c.work / "dist")
        )
    return out


def dockerfile_times(after: Checkout) -> dict[str, float]:
    """The hand-written Dockerfile on the after's base layer, pins, repo, wheels and app."""
    ctx = after.work / "ctx"
    ctx.mkdir()
    base, tag = dockerfile.prepare(str(after.spec), after.cache, ctx)
    subprocess.run(["docker", "builder", "prune", "-af"], capture_output=True)
    cold, id_cold = dockerfile.docker_build(ctx, tag)
    with (ctx / APP_FILE).open("a") as f:
        f.write("# bench touch\n")
    app, id_app = dockerfile.docker_build(ctx, tag)
    noop = statistics.median(dockerfile.docker_build(ctx, tag)[0] for _ in range(3))
    assert id_app != id_cold, "the Dockerfile did not rebuild on the app change"
    subprocess.run(["docker", "rmi", "-f", tag, base], capture_output=True)
    return {
        "container cold, base cached": cold,
        "container, one app file changed": app,
        "container, nothing changed": noop,
    }


TARGETS = {
    "container cold, base cached": "<= 1.5x Dockerfile",
    "container, one app file changed": "<= 1.5 s and <= 2x Dockerfile",
    "container, nothing changed": "<= 0.3 s",
    "vm cold (container stages cached)": "<= 1.5x container cold",
    "vm, one app file changed (build-container + build-vm)": "<= 60 s",
    "verify, end to end": "<= 45 s",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, help="git revision to compare with")
    ap.add_argument("--cache-dir", default=DEFAULT_CACHE, help="holds the fetched downloads")
    ap.add_argument("--no-vm", action="store_true", help="container paths only")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ib-bench-speed-"))
    old = work / "baseline-checkout"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(old), args.baseline],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    try:
        # The downloads once, by this checkout's fetch (the blobs are the lock's either way).
        Checkout("after", ROOT, work / "prime", args.cache_dir)
        before = Checkout("before", old, work / "before", args.cache_dir)
        after = Checkout("after", ROOT, work / "after", args.cache_dir)
        results = {
            "before": measure(before, not args.no_vm),
            "after": measure(after, not args.no_vm),
        }
        df = dockerfile_times(after)
        print(f"| measure | before ({args.baseline}) | after | Dockerfile | target |")
        print("|---|---|---|---|---|")
        for k, b in results["before"].items():
            a, d = results["after"][k], df.get(k)
            ratio = f" ({a / d:.2f}x)" if d else ""
            print(
                f"| {k} | {b:.2f} s | {a:.2f} s{ratio} | "
                f"{f'{d:.2f} s' if d else ''} | {TARGETS.get(k, '')} |"
            )
        cold = results["after"]["container cold"]
        if "vm cold (container stages cached)" in results["after"]:
            vm = results["after"]["vm cold (container stages cached)"]
            print(f"| vm cold / container cold (after) | | {vm / cold:.2f}x | | <= 1.5x |")
        prof = json.loads((after.work / "profile-app.json").read_text())
        print("\nafter: one app file changed, per step (may overlap)\n\n| step | s | count |")
        print("|---|---|---|")
        for step, v in sorted(prof.items(), key=lambda kv: -kv[1]["seconds"]):
            print(f"| {step} | {v['seconds']:.3f} | {v['count']} |")
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True
        )
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
