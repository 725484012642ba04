"""Benchmark: imagebuild's build-container beside a hand-written equivalent Dockerfile built by
plain `docker build` (BuildKit) — same base image (imagebuild's base layer, loaded), same pins,
same local repo and wheelhouse (bind mounts), same app — as ratios.

    .venv/bin/python bench/dockerfile.py [--cache-dir DIR]

Measures, for each: cold build (empty caches), app file changed, nothing changed, image size.
The Dockerfile is written to the scratch folder; tests/test_bench.py keeps it hadolint-clean.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import bench, table, timed  # noqa: E402

from imagebuild import keys as keying  # noqa: E402
from imagebuild import resolved  # noqa: E402
from imagebuild.builders import image as img  # noqa: E402
from imagebuild.builders import stages  # noqa: E402
from imagebuild.cache import Cache  # noqa: E402
from imagebuild.fetch import local_sources, requirement_files  # noqa: E402
from imagebuild.project import Project  # noqa: E402
from imagebuild.spec import Spec, load  # noqa: E402

BASE_REPO = "imagebuild-bench/base"
UID = 10001  # numeric USER (hadolint DL3066)


def render(spec: Spec, pins: list[str], base: str, requirements: list[str]) -> str:
    """The Dockerfile a careful user would write for the same spec (hadolint-clean): every
    requirements file of the wheelhouse (the spec's and its stacks') in one pip run."""
    venv = spec.python.venv if spec.python else "/opt/venv"
    assert spec.app is not None
    env = "\n".join(f'ENV {k}="{v}"' for k, v in resolved.runtime_env(spec).items())
    q = ", ".join
    return f"""FROM {base}
SHELL ["/bin/sh", "-e", "-c"]
RUN --mount=type=bind,source=repo,target=/var/lib/imagebuild/repo \\
    echo "deb [trusted=yes] file:/var/lib/imagebuild/repo {spec.base.suite} main" \\
      > /etc/apt/sources.list.d/local.list \\
    && apt-get update -qq \\
    && apt-get install -y -qq --no-install-recommends {" ".join(pins)} \\
    && rm -rf /var/lib/apt/lists/* /etc/apt/sources.list.d/local.list
RUN useradd --system --uid {UID} --create-home --shell /usr/sbin/nologin {spec.user} \\
    && python3 -m venv {venv}
RUN --mount=type=bind,source=wheels,target=/wheels \\
    {venv}/bin/pip install --no-cache-dir --no-index --no-deps --require-hashes \\
      --find-links /wheels {" ".join(f"-r /wheels/{f}" for f in requirements)}
COPY {spec.app.src} {spec.app.dest}
WORKDIR {spec.app.dest}
RUN [{q(f'"{a}"' for a in spec.app.build)}]
{env}
USER {UID}
ENTRYPOINT [{q(f'"{a}"' for a in spec.entrypoint)}]
CMD [{q(f'"{a}"' for a in spec.cmd)}]
"""


def prepare(spec_path: str, cache_dir: Path, ctx: Path) -> tuple[str, str]:
    """Load imagebuild's base layer as an image, make the build context; return the base
    image's tag and the tag to build."""
    project = Project(load(spec_path))
    spec, lock = project.spec, project.lock
    cache = Cache(cache_dir)
    fetched = local_sources(lock, cache)
    r = resolved.resolve(project.req, lock)
    key = keying.compute(r).stages["base"]
    hit = stages.cached(cache, key, [])  # the base: no layer below
    assert hit is not None, "run build-container first: its base layer is the common base"
    layer = hit[0]
    cfg = img.ImageConfig(
        entrypoint=[],
        cmd=["/bin/sh"],
        env={"PATH": resolved.PATH},
        workdir="/",
        user="",
        labels={},
        history=["base"],
        created=lock.source_date_epoch,
    )
    archive = ctx.parent / "base.tar"
    base = f"{BASE_REPO}:{key[:12]}"
    img.docker_archive(archive, cfg.render([layer]), [layer], base)
    subprocess.run(["docker", "load", "-q", "-i", str(archive)], check=True, capture_output=True)
    archive.unlink()
    shutil.copytree(fetched.repo_shared, ctx / "repo", copy_function=os.link)
    shutil.copytree(fetched.wheelhouse, ctx / "wheels", copy_function=os.link)
    assert spec.app is not None
    shutil.copytree(spec.base_dir / spec.app.src, ctx / spec.app.src)
    files = list(requirement_files(lock).values())
    (ctx / "Dockerfile").write_text(render(spec, r.os_pins, base, files))
    return base, "imagebuild-bench/dockerfile:latest"


def docker_build(ctx: Path, tag: str) -> tuple[float, str]:
    """Seconds and the image ID of one `docker build` (BuildKit, Debian's CLI)."""
    start = time.monotonic()
    r = subprocess.run(
        ["/usr/bin/docker", "build", "-q", "--network", "host", "-t", tag, str(ctx)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
    )
    return time.monotonic() - start, r.stdout.strip()


def size(tag: str) -> int:
    out = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Size}}", tag],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout)


def main() -> None:
    with bench(__doc__, "ib-bench-df-") as (_, work, spec, common):
        cache = Path(common[common.index("--cache-dir") + 1])
        ib_cold, r = timed("build-container", *common)
        app_file = Path(spec).parent / "app" / "app" / "__init__.py"
        with app_file.open("a") as f:
            f.write("# bench touch\n")
        ib_app, _ = timed("build-container", *common)
        ib_noop, r = timed("build-container", *common)
        ib_tag = next(ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("image "))
        ctx = work / "ctx"
        ctx.mkdir()
        base, tag = prepare(spec, cache, ctx)
        subprocess.run(["docker", "builder", "prune", "-af"], capture_output=True)
        df_cold, id_cold = docker_build(ctx, tag)
        with (ctx / "app" / "app" / "__init__.py").open("a") as f:
            f.write("# bench touch 2\n")
        df_app, id_app = docker_build(ctx, tag)
        df_noop, id_noop = docker_build(ctx, tag)
        # The baseline must really rebuild on the change (and only then), or the ratio lies.
        assert id_app != id_cold and id_noop == id_app, (id_cold, id_app, id_noop)
        rows = [
            ("cold build", ib_cold, df_cold),
            ("app file changed", ib_app, df_app),
            ("nothing changed", ib_noop, df_noop),
        ]
        table(
            [
                (f"{name}: imagebuild / Dockerfile", f"{a:.1f} s / {b:.1f} s", f"{a / b:.2f}x")
                for name, a, b in rows
            ]
            + [
                (
                    "image size: imagebuild / Dockerfile",
                    f"{size(ib_tag) / 1e6:.0f} MB / {size(tag) / 1e6:.0f} MB",
                    f"{size(ib_tag) / size(tag):.2f}x",
                )
            ],
            "ratio",
        )
        subprocess.run(["docker", "rmi", "-f", tag, base], capture_output=True)


if __name__ == "__main__":
    main()
