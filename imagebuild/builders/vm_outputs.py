"""A finished VM disk made into what dist/ ships, whichever way it was finished (Packer's pass,
or an app overlay): the formats (builders.formats, one module each), Packer's manifest, the VM's
package manifest and SBOM, moved from the staging folder into place; then the parity of the
VM's packages with the container's manifest beside them."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagebuild import inventory as inv
from imagebuild import leftovers, progress, provenance, tools
from imagebuild.builders.formats import FORMATS, ova, qcow2
from imagebuild.cache import sha256_file
from imagebuild.inputs import Inputs
from imagebuild.inventory import Subject
from imagebuild.lock.lockfile import Lock
from imagebuild.spec import Spec


@dataclass
class Delivery:
    """Where a VM build's outputs go and what it learns on the way there: the staging folder
    (moved into dist/ once complete), each output's final path, each step's seconds, and the
    sha256 of the files already hashed (SHA256SUMS takes them instead of hashing again)."""

    staging: Path
    out: dict[str, Path]
    seconds: dict[str, float] = field(default_factory=dict)
    known: dict[str, str] = field(default_factory=dict)


def formats(written: Path, inputs: Inputs, to: Delivery, keep: bool = False) -> None:
    """Every format the spec asks for, made in `to.staging` from the disk `written` (removed
    once read unless `keep`: the cached base disk) and hashed into `to.known`."""
    spec = inputs.spec
    start = time.monotonic()
    with progress.stage("build-vm: formats", ", ".join(spec.vm.formats)):
        made = {fmt: to.staging / to.out[fmt].name for fmt in spec.vm.formats}
        make_formats(written, made, spec, inputs.lock, keep)
        to.known |= {made[f].name: sha256_file(made[f]) for f in spec.vm.formats}
    to.seconds["formats"] = round(time.monotonic() - start, 1)


def stop_formats(to: Delivery) -> None:
    """Kill the tools `formats` runs in another thread (each names the staging folder), so that
    it ends at once when the build does."""
    leftovers.stop_processes([str(to.staging)], leftovers.FORMAT_TOOLS)


def ship(
    written: Path | None,
    packer_manifest: bytes,
    inventory: dict[str, Any],
    made_from: dict[str, Any],
    inputs: Inputs,
    to: Delivery,
) -> dict[str, Any]:
    """The formats from the disk `written` (unless None: `formats` made them already), then
    Packer's manifest, the VM's package manifest, SBOM and provenance; every output moved into
    place (the record aside: the caller writes it last). Returns the parity. `made_from`: what
    the disk was made from, as the provenance names it."""
    spec, lock = inputs.spec, inputs.lock
    staging, out, known = to.staging, to.out, to.known
    if written is not None:
        formats(written, inputs, to)
    start = time.monotonic()
    with progress.stage("build-vm: outputs", "manifests, SBOM, provenance"):
        (staging / out["packer_manifest"].name).write_bytes(packer_manifest)
        # The VM's digest: its qcow2 when made, else the first format asked for.
        disk = out["qcow2" if "qcow2" in out else spec.vm.formats[0]].name
        files = {n: known[n] for n in sorted(known)}
        subject = Subject("vm", known[disk], f"sha256:{known[disk]}", files)
        bom, packages = staging / out["sbom"].name, staging / out["packages"].name
        inv.write(inventory, spec, lock, subject, packages, bom)
        shipped = [provenance.subject(n, d) for n, d in files.items()]
        provenance.write(staging / out["provenance"].name, inputs, "vm", shipped, made_from)
        for name, dest in out.items():
            if name != "record":
                os.replace(staging / dest.name, dest)
    to.seconds["outputs"] = round(time.monotonic() - start, 1)
    packages = out["packages"]
    container = packages.with_name(packages.name.replace(".vm.", ".container."))
    return inv.parity_with_container(packages, container, lock)


def make_formats(
    written: Path, made: dict[str, Path], spec: Spec, lock: Lock, keep: bool = False
) -> None:
    """Compress the finished disk while the formats that read it uncompressed are made: qemu-img
    compresses on one thread, so on two cores the OVA costs no extra wall time (Packer's
    convert + outputs: 32 s -> 19-21 s here). Then the formats that ship the compressed qcow2.
    `written` is removed once read unless `keep`."""
    sde = lock.source_date_epoch
    compressed = next(iter(made.values())).with_name("compressed.qcow2")
    # the OVA first: a VirtualBox box then copies its VMDK (ova.sharing)
    first = sorted((f for f in made if not FORMATS[f].COMPRESSED_INPUT), key=lambda f: f != "ova")
    then = [f for f in made if FORMATS[f].COMPRESSED_INPUT]
    proc = qcow2.start_compress(written, compressed) if then else None
    try:
        with ova.sharing():
            for f in first:
                FORMATS[f].make(written, made[f], spec, sde)
    except BaseException:  # a failed format or Ctrl-C: the compression must not outlive it
        if proc is not None:
            proc.kill()
            proc.wait()
        raise
    if proc is not None:
        tools.wait(proc)
    if not keep:
        written.unlink()
    for f in then:
        FORMATS[f].make(compressed, made[f], spec, sde)
