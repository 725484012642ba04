"""`invoke build-container`: a layered, cached, bit-reproducible Docker image.

Layers, stable to volatile: base (mmdebstrap of the locked Essential set + apt + python3, from
the local repo) -> os -> python -> stacks -> app. Each non-base layer is one tag of
ansible/site.yml run in a container (community.docker.docker_api connection), exported and
diffed against the layers below (imagebuild.builders.layers). Each stage is cached under the hash
of its inputs chained with the stage below, so an app change rebuilds only the app layer and a
build with nothing changed touches no container at all. The config is written by hand with
fixed timestamps, so the image ID is a pure function of lock + spec + roles + app files.

This module: the final config, loading the image, its outputs and record. The stages are in
stages.py (their keys in imagebuild.keys), their changes read by changes.py, the base layer
made by base_layer.py.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import docker
import docker.errors

from imagebuild import (
    app_tree,
    builder,
    checksums,
    distnames,
    emulation,
    profile,
    progress,
    provenance,
)
from imagebuild import inventory as inv
from imagebuild.builders import app_layer
from imagebuild.builders import image as img
from imagebuild.builders.context import Build, load_image, new_build
from imagebuild.builders.layers import Layer, load_manifest
from imagebuild.builders.oci_archive import OciArchive
from imagebuild.builders.stages import StageResult, build_layers, manifest_path
from imagebuild.cache import atomic_file, digest
from imagebuild.inputs import Inputs
from imagebuild.inventory import Subject
from imagebuild.keys import STAGES
from imagebuild.lock.lockfile import rfc3339
from imagebuild.obtain import told
from imagebuild.resolved import Resolved
from imagebuild.spec import Spec
from imagebuild.spec_sections import HOST_ARCH


@dataclass(frozen=True)
class ContainerResult:
    tag: str
    image_id: str
    stages: list[StageResult]
    oci_archive: Path
    manifest_digest: str
    packages_file: Path
    sbom_file: Path
    noop: bool

    def render(self) -> str:
        """What `build-container` prints: a line per layer, the image, its outputs."""
        lines = [
            f"layer {st.name:<7} sha256:{st.diff_id[:12]}  {st.size / 1e6:8.1f} MB  "
            + told(st.pulled, st.reused, f"built in {st.seconds}s, changed={st.changed}")
            for st in self.stages
        ]
        lines.append(
            f"image {self.tag} sha256:{self.image_id}"
            + ("  (nothing changed)" if self.noop else "")
        )
        lines += [
            f"oci archive {self.oci_archive} ({self.manifest_digest})",
            f"packages {self.packages_file}",
            f"sbom {self.sbom_file}",
        ]
        return "\n".join(lines)


def _revision(spec: Spec) -> str:
    proc = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=spec.base_dir, capture_output=True, text=True
    )
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def final_config(r: Resolved, layers: list[Layer]) -> img.ImageConfig:
    spec, lock = r.spec, r.lock
    labels = {
        "org.opencontainers.image.title": spec.name,
        "org.opencontainers.image.version": spec.version,
        "org.opencontainers.image.revision": _revision(spec),
        "org.opencontainers.image.created": rfc3339(lock.source_date_epoch),
        "org.opencontainers.image.base.digest": f"sha256:{layers[0].diff_id}",
        distnames.LOCK_LABEL: lock.digest,
        "io.imagebuild.spec": spec.path.name,
    }
    return img.ImageConfig(
        entrypoint=r.exec_argv,
        cmd=spec.cmd,
        env=r.runtime_env | r.toolkit_env,
        workdir=spec.app.dest if spec.app else "/",
        user=spec.user,
        labels=labels,
        created=lock.source_date_epoch,
        history=[
            f"imagebuild stage {n}: ansible-playbook site.yml --tags {n}"
            if n != "base"
            else "imagebuild stage base: mmdebstrap (locked Essential set)"
            for n in STAGES
        ],
        architecture=lock.arch,
    )


def inventory(
    client: docker.DockerClient, image_ref: str, spec: Spec, arch: str = HOST_ARCH
) -> dict[str, Any]:
    """What is really installed in the image (imagebuild.inventory's script, run as root)."""
    with profile.step("inventory container (package manifest)"):
        out = client.containers.run(
            image_ref,
            [inv.target_python(spec), "-c", inv.SCRIPT],
            entrypoint=[],
            user="root",
            network_mode="none",
            remove=True,
            labels={"io.imagebuild.inventory": "1"},
            **emulation.container_options(arch),
        )
    return json.loads(out)


INVENTORIES = "inventories"


def installed(b: Build, tag: str, cfg: img.ImageConfig, layers: list[Layer]) -> dict[str, Any]:
    """`inventory`, or what it found in an image with the same layers below the app stage and
    the same config, when this app layer only adds the app's files (app_layer: it changes no
    package, so neither would another app): an app-only change starts no inventory container."""
    cache, spec, below_key = b.inputs.cache, b.inputs.spec, b.inputs.keys.stages[STAGES[-2]]
    # PYTHONPATH may put any of the app's files on the path the inventory reads.
    only_app = "PYTHONPATH" not in cfg.env and isinstance(
        app_layer.app_files(layers[-1], load_manifest(manifest_path(cache, below_key)), spec),
        app_layer.AppFiles,
    )
    seen = json.dumps([cfg.env, cfg.workdir, inv.target_python(spec)], sort_keys=True)
    key = digest(below_key, seen, inv.SCRIPT)
    if only_app and cache.intact(INVENTORIES, key):
        with profile.step("inventory (package manifest) reused"):
            return dict(json.loads((cache.dir(INVENTORIES, key) / "inventory.json").read_text()))
    found = inventory(b.client, tag, spec, b.inputs.lock.arch)
    if only_app:
        with cache.building(INVENTORIES, key) as tmp:
            (tmp / "inventory.json").write_text(json.dumps(found))
    return found


def oci_annotations(spec: Spec) -> dict[str, str]:
    """The OCI archive's index annotations."""
    return {
        "org.opencontainers.image.title": spec.name,
        "org.opencontainers.image.version": spec.version,
    }


def _outputs(dist: Path, spec: Spec) -> dict[str, Path]:
    return {
        "oci": distnames.path(dist, spec, distnames.OCI),
        "packages": distnames.path(dist, spec, distnames.CONTAINER_PACKAGES),
        "sbom": distnames.path(dist, spec, distnames.CONTAINER_SBOM),
        "provenance": distnames.path(dist, spec, distnames.CONTAINER_PROVENANCE),
        "record": distnames.path(dist, spec, distnames.CONTAINER_RECORD),
    }


def build(inputs: Inputs, dist: Path) -> ContainerResult:
    """The image of `inputs.lock.arch` (a `Lock.for_arch` view for another architecture)."""
    spec, lock = inputs.spec, inputs.lock
    tag = distnames.image_tag(spec, lock.arch)
    out = _outputs(dist, spec)
    with new_build(inputs) as b, OciArchive(out["oci"]) as archive:
        client = b.client
        layers, results = build_layers(b, "build-container", partial(below_app, archive))
        cfg = final_config(inputs.resolved, layers)
        config = cfg.render(layers)
        image_id = hashlib.sha256(config).hexdigest()
        record = out["record"]
        previous = json.loads(record.read_text()) if record.exists() else {}
        known: dict[str, str] = {}  # sha256 of outputs already hashed, for SHA256SUMS
        noop = (
            previous.get("image_id") == image_id
            and all(p.exists() for p in out.values())
            and _has_image(client, tag, image_id)
            and provenance.signed_as_asked(
                out["provenance"], inputs, "container", {out["oci"].name: out["oci"]}
            )
        )
        if noop:
            progress.say(f"build-container: nothing changed; {tag} is sha256:{image_id[:12]}")
            manifest_digest = previous["manifest_digest"]
        else:
            with progress.stage("build-container: load", tag):
                load_image(b, config, layers, tag)
            with progress.stage("build-container: outputs", str(dist)):
                # The inventory container runs while the archive is written (disk-bound).
                with ThreadPoolExecutor(1) as pool:
                    found = pool.submit(installed, b, tag, cfg, layers)
                    with profile.step("OCI archive written"):
                        manifest_digest, known[out["oci"].name] = archive.finish(
                            config, layers, spec.version, oci_annotations(spec)
                        )
                digest = manifest_digest.removeprefix("sha256:")
                subject = Subject("container", digest, image_id)
                inv.write(found.result(), spec, lock, subject, out["packages"], out["sbom"])
                subjects = [
                    provenance.subject(out["oci"].name, known[out["oci"].name]),
                    provenance.subject(tag, digest),
                ]
                base = provenance.subject("base layer", layers[0].diff_id.removeprefix("sha256:"))
                provenance.write(out["provenance"], inputs, "container", subjects, base)
        result = ContainerResult(
            tag, image_id, results, out["oci"], manifest_digest, out["packages"], out["sbom"], noop
        )
        if not noop:  # written last: its presence means every output above is complete
            with atomic_file(record) as t:
                shipped = {"app_files": app_tree.manifest(spec), "builder": builder.versions()}
                t.write_text(json.dumps(asdict(result) | shipped, default=str, indent=1))
        if noop:
            checksums.listed(dist, list(out.values()))
        else:
            checksums.record(dist, list(out.values()), known)
    return result


def below_app(archive: OciArchive, name: str, below: list[Layer]) -> None:
    """The app stage is being built: the archive's blobs of the layers below it are written
    meanwhile (on an app-only change, all but a small layer of the image)."""
    if name == STAGES[-1]:
        archive.begin(below)


def _has_image(client: docker.DockerClient, tag: str, image_id: str) -> bool:
    try:
        return client.images.get(tag).id == f"sha256:{image_id}"
    except docker.errors.ImageNotFound:
        return False
