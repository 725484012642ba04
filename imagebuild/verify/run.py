"""`invoke verify`: bring both artifacts up, run the suite (imagebuild/verify/suite) over them,
write dist/verify/{report.json, junit.xml, parity.md}, print the parity table, tear down."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from imagebuild import checksums, distnames, emulation, machines, progress, provenance
from imagebuild.builders.formats import filename
from imagebuild.cache import default_root
from imagebuild.errors import ImageBuildError
from imagebuild.project import Project
from imagebuild.verify import attestation, filebytes, hosts, orphans, vmdisk
from imagebuild.verify.diskread import DiskReading, disk_reading

if TYPE_CHECKING:
    from securesystemslib.signer import Signer

SUITE = Path(__file__).parent / "suite"


class VerifyFailed(ImageBuildError):
    pass


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    rows: list[dict[str, Any]]
    out_dir: Path
    table: str
    seconds: dict[str, float]

    def summary(self) -> str:
        """The line `verify` ends with: the outcomes counted, the timings, where the report is."""
        counts = {
            o: sum(row.get("outcome") == o for row in self.rows)
            for o in ("passed", "failed", "skipped")
        }
        return (
            "verify: "
            + ", ".join(f"{n} {o}" for o, n in counts.items())
            + "; "
            + ", ".join(f"{k} {v}s" for k, v in self.seconds.items())
            + f"; report {self.out_dir}/report.json, junit {self.out_dir}/junit.xml"
        )

    def failures(self) -> str:
        """Each failed row named with its problem (the first 30), for the error `verify` exits
        with."""
        bad = [row for row in self.rows if row.get("outcome") == "failed"]
        names = "\n".join(f"  {row['id']}: {row.get('problem', '')}" for row in bad[:30])
        return f"verify: {len(bad)} item(s) differ or miss expectations:\n{names}"


def _cell(v: Any) -> str:
    s = str(v).replace("|", "\\|").replace("\n", " ")
    return s if len(s) <= 60 else s[:57] + "..."


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| item | container | vm | same? | result |", "|---|---|---|---|---|"]
    for r in rows:
        same = "yes" if r["same"] else ("no" if r["shared"] else "n/a (differs by design)")
        result = r["outcome"] if r["outcome"] != "skipped" else f"skipped: {r.get('problem', '')}"
        lines.append(
            f"| {_cell(r['id'])} | {_cell(r['container'])} | {_cell(r['vm'])} | {same} | {result} |"
        )
    return "\n".join(lines) + "\n"


class Interrupt:
    """pytest catches KeyboardInterrupt (Ctrl-C, and SIGTERM's Terminated), finishes its session
    and returns exit status 2; verify must unwind at once instead (both artifacts torn down,
    exit 130 or 143), so the plugin keeps what was caught for `verify` to raise again. (pytest
    ends a session with collection errors by its own KeyboardInterrupt, Session.Interrupted:
    not a signal.)"""

    def __init__(self) -> None:
        self.caught: KeyboardInterrupt | None = None

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        got = excinfo.value
        if isinstance(got, KeyboardInterrupt) and not isinstance(got, pytest.Session.Interrupted):
            self.caught = got


class Handed:
    """The task's project and the VM disk's reading (started before the boot), handed to the
    suite (imagebuild/verify/suite/conftest.py)."""

    def __init__(self, project: Project, reading: DiskReading | None = None) -> None:
        self.imagebuild_project = project
        self.imagebuild_disk_reading = reading


def _vm_disk(artifact: Path, work: Path, qcow2: Path, disk_gb: int) -> vmdisk.Disk:
    """The qcow2 to boot for --vm (any format imagebuild makes), its headers checked; another
    format's disk must hold the same bytes as the qcow2 of the same build, when it is beside
    it."""
    with progress.stage("verify: VM disk", f"from {artifact.name}"):
        disk = vmdisk.bootable(artifact, work, disk_gb)
    if disk.kind == "qcow2":
        return disk  # its bootable: the checked inode (a link beside the run), not the path again
    if qcow2.is_file():
        with progress.stage("verify: same disk as", qcow2.name):
            vmdisk.same_as(disk, qcow2)
    else:
        progress.say(f"verify: no {qcow2.name} beside {artifact.name}: not compared")
    return disk


def verify(
    project: Project,
    dist: Path,
    container_ref: str | None,
    vm_disk: Path | None,
    backend: str,
    seed: Path | None = None,
    libvirt_uri: str = hosts.SYSTEM_URI,
    cache_root: Path | None = None,
    signer: Signer | None = None,
) -> VerifyResult:
    """`cache_root`: where the locked .debs are (default: the default cache), for the special
    files' modes (filemeta). The suite reads `project` (spec, request, lock) as loaded here:
    another architecture's (Project.for_arch) verifies that architecture's image and VM against
    its lock section. The equivalence attestation is signed by `signer` (unsigned without one)."""
    spec, arch = project.spec, project.lock.arch
    machine = machines.of(arch)  # refused before anything starts if it cannot boot here
    emulation.require(arch)  # nor can another architecture's image run without qemu-user
    ref = container_ref or distnames.image_tag(spec, arch)
    qcow2 = filename("qcow2", spec)
    artifact = (vm_disk or dist / qcow2).resolve()
    out_dir = dist / "verify"
    seconds: dict[str, float] = {}
    orphans.sweep(libvirt_uri)
    with (
        tempfile.TemporaryDirectory(prefix=orphans.WORK_PREFIX) as tmp,
        contextlib.ExitStack() as up,
    ):
        work = Path(tmp)
        orphans.claim(work)
        if (dist / checksums.NAME).is_file() and artifact.parent == dist.resolve():
            with progress.stage("verify: SHA256SUMS", artifact.name):
                if problems := checksums.check(dist, [artifact]):
                    raise VerifyFailed("; ".join(problems) + " (rebuild it, or pass --vm)")
        disk = _vm_disk(artifact, work / "disk", artifact.with_name(qcow2), spec.vm.disk_gb)
        # Read on this host beside the boot: the disk's hygiene and file contents (diskread).
        reading = up.enter_context(
            disk_reading(disk.bootable, filebytes.argument(spec), under=work)
        )
        with progress.stage("verify: container up", f"{ref}, --network none") as st:
            c = up.enter_context(hosts.container(ref, work, spec.verify.service is not None, arch))
            seconds["container start"] = c.seconds
            st["note"] = c.url
        with progress.stage("verify: VM boot to SSH", f"{disk.bootable} ({disk.hardware})") as st:
            v = up.enter_context(
                hosts.vm(
                    disk.bootable,
                    work / "vm",
                    spec.vm.memory_mb,
                    spec.vm.cpus,
                    backend,
                    seed,
                    libvirt_uri,
                    disk.hardware,
                    machine,
                )
            )
            seconds["vm start (libvirt)"] = v.setup_seconds
            seconds["vm boot to ssh"] = v.seconds
            st["note"] = f"{v.how}; domain start {v.setup_seconds}s, boot to SSH {v.seconds}s"
        ctx = work / "out" / "context.json"
        ctx.parent.mkdir()
        ctx.write_text(
            json.dumps(
                {
                    "spec": str(spec.path),
                    "disk": str(disk.bootable),
                    "cache": str(cache_root or default_root()),
                    "hosts": {
                        name: {
                            "url": h.url,
                            "how": h.how,
                            "seconds": h.seconds,
                            "config": h.config,
                            "service_url": h.service_url,
                        }
                        for name, h in (("container", c), ("vm", v))
                    },
                }
            )
        )
        start = time.monotonic()
        with (
            progress.stage("verify: suite", "pytest + testinfra over docker:// and ssh://"),
            contextlib.redirect_stdout(sys.stderr),  # stdout carries the table only
        ):
            interrupt = Interrupt()
            rc = pytest.main(
                [
                    str(SUITE),
                    "-c",
                    str(SUITE / "pytest.ini"),
                    "--rootdir",
                    str(SUITE),
                    "--ib-context",
                    str(ctx),
                    f"--junitxml={ctx.parent / 'junit.xml'}",
                ],
                plugins=[interrupt, Handed(project, reading)],
            )
            if interrupt.caught is not None:
                raise interrupt.caught
        seconds["test run"] = round(time.monotonic() - start, 1)
        report_file = ctx.parent / "report.json"
        if not report_file.exists():
            raise VerifyFailed(f"the verify suite did not run (pytest exit {rc})")
        report = json.loads(report_file.read_text())
        report["seconds"] = seconds
        report_file.write_text(json.dumps(report, indent=1))
        table = markdown(report["rows"])
        (ctx.parent / "parity.md").write_text(table)
        ok = rc == 0 and all(r.get("outcome") in ("passed", "skipped") for r in report["rows"])
        with progress.stage("verify: attestation", "signed" if signer else "unsigned"):
            stmt = attestation.statement(
                project, report["rows"], ok, (ref, c.image_id), artifact, report_file
            )
            provenance.write_statement(ctx.parent / attestation.NAME, stmt, signer)
        ctx.unlink()
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(ctx.parent), out_dir)
    return VerifyResult(ok, report["rows"], out_dir, table, seconds)
