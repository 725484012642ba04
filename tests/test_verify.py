"""verify for real: the built example passes; sabotaged artifacts fail with the exact items named;
nothing is left running either way. Expected values come from the spec and the lock."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from imagebuild import checksums, provenance, vmboot
from imagebuild import spec as specmod
from imagebuild.builders.formats import FORMATS
from imagebuild.cache import sha256_file
from imagebuild.project import Project
from imagebuild.verify import orphans
from imagebuild.verify.filemeta import SPECIAL, SUMMARY, UNCHECKED
from imagebuild.verify.items import items
from tests.conftest import ROOT, TEMPLATE_RAN, TEMPLATED_ENV, AppChanged, run_invoke, serve_gcs

pytestmark = [pytest.mark.network, pytest.mark.engine, pytest.mark.vm]


DEB_FILE = "/usr/lib/python3.11/textwrap.py"  # libpython3.11-stdlib, in both artifacts
VM_DEB_FILE = "/usr/lib/python3.11/shlex.py"
UNLOCKED = "bytes:programs and /usr/local files no package owns, /etc/ld.so.preload"


def module_path(spec) -> str:
    return f"{spec.python.venv}/lib/python3.11/site-packages/numpy/version.py"


def verify(spec: Path, dist: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_invoke("verify", "--spec", str(spec), "--dist", str(dist), *extra)


def _containers() -> list[str]:
    label = {"label": orphans.CONTAINER_LABEL}
    return [c.name for c in docker.from_env().containers.list(all=True, filters=label)]


def _domains() -> list[str]:
    doms = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--name"], capture_output=True, text=True
    ).stdout
    return [d for d in doms.split() if d.startswith("imagebuild-verify")]


def leftovers() -> list[str]:
    """Anything verify may have started: containers, libvirt domains, QEMU processes."""
    ps = subprocess.run(["pgrep", "-a", "qemu-system"], capture_output=True, text=True).stdout
    return _containers() + _domains() + [ln for ln in ps.splitlines() if "imagebuild-verify" in ln]


def public_pem(private: Path, dest: Path) -> Path:
    key = serialization.load_pem_private_key(private.read_bytes(), None)
    dest.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return dest


def _new_key(path: Path) -> Path:
    key = ed25519.Ed25519PrivateKey.generate()
    fmt = serialization.PrivateFormat.PKCS8
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    )
    return path


def check_attestation(
    spec: Path, dist: Path, statement: Path, public: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return verify(spec, dist, "--attestation", str(statement), "--public-key", str(public), *extra)


def test_verify_passes_on_the_built_example(
    app_changed: AppChanged, sign_key: Path, tmp_path: Path
) -> None:
    """The example as its users change it: one app file changed after a full build, so its VM
    is the app overlay over the last one (test_vm checks how it was made). Every row passes.
    (The full build's own rows are those the sabotage tests below leave passing: each allows
    only the rows its sabotage names to fail.)"""
    spec_file, dist = app_changed.spec, app_changed.dist
    spec = specmod.load(spec_file)
    r = verify(spec_file, dist, "--sign-key", str(sign_key))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # The equivalence attestation: signed, both artifacts, PASSED; checked offline by the task,
    # and refused with another key or when the disk is not the one verified.
    statement = tmp_path / "equivalence.intoto.jsonl"
    shutil.copy(dist / "verify" / "equivalence.intoto.jsonl", statement)
    public = public_pem(sign_key, tmp_path / "pub.pem")
    ok = check_attestation(spec_file, dist, statement, public)
    assert ok.returncode == 0 and ": PASSED, " in ok.stdout, ok.stderr
    qcow2 = f"{spec.name}-{spec.version}.qcow2"
    assert f"{spec.repository}:{spec.version}, {qcow2}" in ok.stdout
    other = public_pem(_new_key(tmp_path / "other.pem"), tmp_path / "other.pub")
    bad = check_attestation(spec_file, dist, statement, other)
    assert bad.returncode == 1 and "not signed by key" in bad.stderr, bad.stderr
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / qcow2).write_bytes(b"another disk")
    bad = check_attestation(spec_file, tmp_path / "d", statement, public)
    assert bad.returncode == 1 and "the statement says" in bad.stderr, bad.stderr
    stmt = provenance.read_statement(statement)
    assert stmt["predicate"]["result"] == "PASSED" and not stmt["predicate"]["failedTests"]
    report = json.loads((dist / "verify" / "report.json").read_text())
    lock = Project(spec).lock
    rows = {row["id"]: row for row in report["rows"]}
    # Every locked package and Python distribution is a row, and every row passed.
    for p in lock.shared + lock.vm:
        assert rows[f"deb:{p.name}"]["outcome"] == "passed"
    for w in lock.python:
        assert rows[f"python:{w.name}"] == {
            **rows[f"python:{w.name}"],
            "vm": w.version,
            "container": w.version,
            "outcome": "passed",
        }
    assert {row["outcome"] for row in report["rows"]} == {"passed"}
    # Behaviour: the spec's `verify.commands` (one real prediction) gave the same in both.
    check = rows["behaviour:[--check]: stdout"]
    assert '"status": "ok"' in check["vm"] and check["container"] == check["vm"]
    assert rows["behaviour:[--check]: exit status"]["vm"] == "0"
    # The service as shipped answered the same in both; the files are their packages' bytes.
    health = rows["service:GET 127.0.0.1:8080/health: body"]
    assert '"status":"ok"' in health["vm"] and health["container"] == health["vm"]
    assert rows[UNLOCKED]["vm"] == rows[UNLOCKED]["container"] == "none"
    assert rows["bytes:deb files changed or missing (dpkg --verify)"]["vm"] == "none"
    assert rows["app-file:model.onnx"]["vm"] == rows["app-file:model.onnx"]["container"]
    assert len(rows) >= len(items(Project(spec).req, lock, []))
    # Templated spec values shipped as written in both (container config, VM unit), ran nothing.
    for key, value in TEMPLATED_ENV.items():
        assert rows[f"env:{key}"] == {**rows[f"env:{key}"], "vm": value, "container": value}
    assert not TEMPLATE_RAN.exists()
    assert (dist / "verify" / "junit.xml").read_text().count("<testcase") == len(report["rows"])
    assert r.stdout.startswith("| item | container | vm | same? | result |")
    assert set(report["seconds"]) == {
        "container start",
        "vm start (libvirt)",
        "vm boot to ssh",
        "test run",
    }
    assert leftovers() == []


def test_sabotage_is_named(vm_built, locked_example: Path, tmp_path: Path, sign_key: Path) -> None:
    """One different package version + one different env var in the container; a changed
    entrypoint unit + one locked Python package removed in the VM: each item named."""
    spec, dist, _ = vm_built
    lock = Project(spec).lock
    victim_deb = "ca-certificates"
    victim_py = lock.python[0].name
    client = docker.from_env()
    c = client.containers.run(
        f"{spec.repository}:{spec.version}",
        ["sleep", "infinity"],
        entrypoint=[],
        user="root",
        network_mode="none",
        detach=True,
    )
    try:
        # A real package of another version, built and installed with Debian's own tools.
        script = (
            "set -e; d=$(mktemp -d); mkdir $d/DEBIAN; printf 'Package: %s\\nVersion: 99.0\\n"
            "Architecture: all\\nMaintainer: test <t@t>\\nDescription: sabotage\\n' "
            f"{victim_deb} > $d/DEBIAN/control; dpkg-deb -b $d /tmp/x.deb >/dev/null; "
            "dpkg -i --force-all /tmp/x.deb >/dev/null 2>&1; rm -rf $d /tmp/x.deb"
        )
        rc, out = c.exec_run(["sh", "-c", script])
        assert rc == 0, out
        # A model whose prediction differs (one weight changed): only behaviour shows it.
        model = (
            "import onnx; from onnx import numpy_helper as h; m = onnx.load('/opt/app/model.onnx');"
            " t = m.graph.initializer[1]; t.CopyFrom(h.from_array(h.to_array(t) + 1, t.name));"
            " onnx.save(m, '/opt/app/model.onnx')"
        )
        rc, out = c.exec_run([f"{spec.python.venv}/bin/python", "-c", model])
        assert rc == 0, out
        # Bytes with every record untouched: a file of a locked .deb and a venv module each get
        # a harmless line; a program and /etc/ld.so.preload no package owns appear.
        bytes_sabotage = (
            f"echo '# x' >> {DEB_FILE}; echo '# x' >> {module_path(spec)}; "
            "cp /bin/true /usr/local/bin/extra; touch /etc/ld.so.preload"
        )
        rc, out = c.exec_run(["sh", "-c", bytes_sabotage])
        assert rc == 0, out
        # The service as shipped on another port: a config beside the default, named by CMD.
        other = "/opt/app/other-port.yaml"
        rc, out = c.exec_run(
            ["sh", "-c", f"sed 's/^port: .*/port: 9090/' {spec.cmd[-1]} > {other}"]
        )
        assert rc == 0, out
        # commit's ENTRYPOINT resets CMD: set both, ENTRYPOINT as it was.
        changes = [
            "ENV OMP_NUM_THREADS=4",
            f"USER {spec.user}",
            f"ENTRYPOINT {json.dumps(spec.entrypoint)}",
            f"CMD {json.dumps(['--config', other])}",
        ]
        c.commit("local/sabotage", "c", changes=changes)
    finally:
        c.remove(force=True)
    bad_vm = tmp_path / "vm"
    # booted on what the OVA and the VMware box declare (paravirtual SCSI, VMXNET3): the
    # image's cloud kernel drives them (the disk it reaches SSH over is on them)
    vmware = FORMATS["ova"].HARDWARE
    with vmboot.boot(
        dist / f"{spec.name}-{spec.version}.qcow2", bad_vm, keep=True, hardware=vmware
    ) as b:
        unit = f"/etc/systemd/system/{spec.service_name}.service"
        wrapper = "/usr/local/bin/imagebuild-entrypoint"
        cmds = [
            "grep -qw ^vmw_pvscsi /proc/modules && grep -qw ^vmxnet3 /proc/modules",
            "! grep -qw ^virtio_blk /proc/modules",
            f"sed -i 's|^ExecStart=.*|ExecStart={wrapper} --debug|' {unit}",
            f"{spec.python.venv}/bin/pip uninstall -y -q {victim_py}",
            f"echo '# x' >> {VM_DEB_FILE}; touch /etc/ld.so.preload",
        ]
        for cmd in cmds:
            r = b.ssh(cmd)
            assert r.returncode == 0, r.stderr
        # Undo what any first boot does, so only the sabotage above differs; in one command
        # with the power-off, since sshd needs its host keys for every new connection. As
        # Packer's shutdown does: --force, so no service writes its state back.
        # The login key too: systemd writes the credential's key only where there is none.
        # journald moves to /run first, as vm_finalize does, or it writes /var/log/journal again.
        b.ssh(
            "journalctl --relinquish-var; "
            "truncate -s 0 /etc/machine-id; rm -f /etc/ssh/ssh_host_*; rm -f /var/lib/dhcp/* "
            "/var/lib/systemd/random-seed /root/.ssh/authorized_keys; "
            "rm -rf /var/log/journal/*; sync; "
            "systemctl poweroff --force"
        )
    # The same spec, waiting 20 s (not 180) for a port that will not open.
    impatient = tmp_path / "spec"
    shutil.copytree(locked_example.parent, impatient)
    text = locked_example.read_text().replace("path: /health}", "path: /health, start_s: 20}")
    (impatient / locked_example.name).write_text(text)
    # verify takes no disk that names another file (diskimage): the overlay, flattened.
    flat = bad_vm / "sabotaged.qcow2"
    subprocess.run(
        [
            "qemu-img",
            "convert",
            "-f",
            "qcow2",
            "-O",
            "qcow2",
            str(bad_vm / "overlay.qcow2"),
            str(flat),
        ],
        check=True,
    )
    r = verify(
        impatient / locked_example.name,
        dist,
        "--container",
        "local/sabotage:c",
        "--vm",
        str(flat),
        "--sign-key",
        str(sign_key),
    )
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    # Its attestation says so, signed: the check names the result, not the subjects
    public = public_pem(sign_key, tmp_path / "pub.pem")
    statement = dist / "verify" / "equivalence.intoto.jsonl"
    says = check_attestation(locked_example, dist, statement, public, "--vm", str(flat))
    assert says.returncode == 1 and "it says 'FAILED', not PASSED" in says.stderr, says.stderr
    assert "the statement says" not in says.stderr
    report = json.loads((dist / "verify" / "report.json").read_text())
    failed = {row["id"]: row for row in report["rows"] if row["outcome"] == "failed"}
    request = "GET 127.0.0.1:8080/health"
    sabotaged = {
        f"deb:{victim_deb}",
        "env:OMP_NUM_THREADS",
        f"python:{victim_py}",
        "entrypoint:what starts it",
        "entrypoint:ENTRYPOINT+CMD / wrapper",
        "behaviour:[--check]: stdout",
        "app-file:model.onnx",
        "bytes:app folder sha256 (every file)",
        "app-file:other-port.yaml",
        "bytes:venv sha256 (every file but byte-code caches)",
    }
    assert sabotaged <= set(failed), sorted(failed)
    # Each changed byte is named, and on the side it was made.
    # Each change is named with its path, on the side it was made: (container, vm) values.
    bad = {
        "bytes:deb files changed or missing (dpkg --verify)": (DEB_FILE, VM_DEB_FILE),
        "bytes:venv files not as their wheel's RECORD says": (module_path(spec), "none"),
        UNLOCKED: ("/etc/ld.so.preload /usr/local/bin/extra", "/etc/ld.so.preload"),
        "service:running as shipped": ("running", "failed"),
        f"service:{request}: status": ("no answer after 20s", "not probed: failed"),
    }
    for item_id, (in_container, in_vm) in bad.items():
        row = failed[item_id]
        assert row["container"].startswith(in_container), row
        assert row["vm"].startswith(in_vm), row
    # The only other findings allowed: imports that needed the removed distribution.
    others = set(failed) - sabotaged - set(bad)
    assert all(i.startswith("import:") for i in others), sorted(others)
    assert leftovers() == []
    client.images.remove("local/sabotage:c", force=True)


def test_modes_links_and_a_broken_python_are_named(
    vm_built, locked_example: Path, cache_dir: Path
) -> None:
    """What `dpkg --verify` cannot see, made in the container only (the VM as built): a setuid
    bit on a package's program, a package file made world-writable, one given to another owner,
    a setuid copy no package owns in root's home, and `python3` swapped for /bin/true, which
    also takes the spec's interpreter away from verify's own scripts: each a row naming the path
    and both values, no crash. With the cache (--cache-dir) the special files are checked
    against the locked .debs too."""
    spec, dist, _ = vm_built
    client = docker.from_env()
    ref = f"{spec.repository}:{spec.version}"
    config = client.images.get(ref).attrs["Config"]
    c = client.containers.run(
        ref, ["sleep", "infinity"], entrypoint=[], user="root", network_mode="none", detach=True
    )
    try:
        sabotage = (
            "set -e; chmod u+s /usr/bin/python3.11; chmod 0666 /usr/lib/python3.11/colorsys.py; "
            "chown nobody:nogroup /usr/lib/python3.11/this.py; ln -sf /bin/true /usr/bin/python3; "
            # no package's, and where the runtime user cannot look (root's home is 0700)
            "cp /bin/true /root/sneaky; chmod 4755 /root/sneaky"
        )
        rc, out = c.exec_run(["sh", "-c", sabotage])
        assert rc == 0, out
        # commit takes this container's user, entrypoint and command: the image's back.
        c.commit(
            "local/sabotage",
            "meta",
            changes=[
                f"USER {config['User']}",
                f"ENTRYPOINT {json.dumps(config['Entrypoint'])}",
                f"CMD {json.dumps(config['Cmd'])}",
            ],
        )
    finally:
        c.remove(force=True)
    try:
        r = verify(
            locked_example,
            dist,
            "--container",
            "local/sabotage:meta",
            "--cache-dir",
            str(cache_dir),
        )
    finally:
        client.images.remove("local/sabotage:meta", force=True)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert "JSONDecodeError" not in r.stderr and "Traceback (most recent" not in r.stderr
    report = json.loads((dist / "verify" / "report.json").read_text())
    rows = {row["id"]: row for row in report["rows"]}
    failed = {i for i, row in rows.items() if row["outcome"] == "failed"}
    python = rows[f"interpreter:{spec.python.venv}/bin/python"]
    assert python["container"] == (
        "does not run Python (resolves to /usr/bin/true): exit 0, printed nothing; read with "
        "/usr/bin/python3.11"
    ), python
    assert python["vm"] == "runs"
    # (container, vm) of each path changed.
    changed = {
        "/usr/bin/python3.11": ("file 4755 root:root", "file 0755 root:root"),
        "/usr/bin/python3": ("link root:root -> /bin/true", "link root:root -> python3.11"),
        "/usr/lib/python3.11/colorsys.py": ("file 0666 root:root", "file 0644 root:root"),
        "/usr/lib/python3.11/this.py": ("file 0644 nobody:nogroup", "file 0644 root:root"),
    }
    for path, (in_container, in_vm) in changed.items():
        row = rows[f"file-meta:{path}"]
        assert (row["container"], row["vm"], row["outcome"]) == (in_container, in_vm, "failed")
    assert {i for i in failed if i.startswith("file-meta:")} == {f"file-meta:{p}" for p in changed}
    assert f"files:{SUMMARY}" in failed
    special = rows[f"files:{SPECIAL}"]
    assert special["vm"] == "none"
    assert special["container"].startswith(
        "/usr/bin/python3.11: file 4755 root:root, but python3.11-minimal "
    ), special
    world = "/usr/lib/python3.11/colorsys.py: file 0666 root:root, but libpython3.11-stdlib "
    assert world in special["container"], special
    assert rows[f"files:{UNCHECKED}"]["container"] == rows[f"files:{UNCHECKED}"]["vm"] == "none"
    # Read with Debian's interpreter: the packages and libraries; the venv's distributions
    # and imports could not be, and say why. The app itself no longer starts (behaviour, service).
    assert rows["deb:ca-certificates"]["outcome"] == "passed"
    assert rows["bytes:deb files changed or missing (dpkg --verify)"]["container"] == "none"
    for w in Project(spec).lock.python:
        assert rows[f"python:{w.name}"]["container"].startswith(
            f"not read: {spec.python.venv}/bin/python does not run Python"
        )
    setuid = rows["hygiene:setuid/setgid files no package owns"]
    assert (setuid["container"], setuid["vm"], setuid["outcome"]) == (
        "/root/sneaky",
        "none",
        "failed",
    )
    allowed = (
        "interpreter:",
        "file-meta:",
        "files:",
        "python:",
        "python-unlocked:",
        "import:",
        "behaviour:",
        "service:",
        "hygiene:setuid",
    )
    assert [i for i in failed if not i.startswith(allowed)] == []
    assert leftovers() == []


def test_sigterm_stops_verify_within_seconds_and_leaves_nothing(
    vm_built, locked_example: Path
) -> None:
    """CI runners send SIGKILL a few seconds after SIGTERM: verify must be gone by then, both
    artifacts torn down. SIGTERM while the suite collects the facts (in-artifact scripts, the
    disk image's copy): exit 143 within 10 s (it took ~45 s: pytest caught the interrupt and
    its session end collected every fact again)."""
    _, dist, _ = vm_built
    tmp = Path(tempfile.gettempdir())
    ours = ("imagebuild-verify-*", "imagebuild-hygiene-*")
    before = {p for pattern in ours for p in tmp.glob(pattern)}
    invoke = str(Path(sys.executable).with_name("invoke"))
    proc = subprocess.Popen(
        [invoke, "verify", "--spec", str(locked_example), "--dist", str(dist)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if "verify: suite: pytest" in line:
                break
        assert proc.poll() is None, "".join(seen)
        time.sleep(15)  # the container's facts are read, the VM's begin
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, "".join(seen) + err[-3000:]
    assert took < 10, f"{took:.1f}s\n" + err[-3000:]
    assert "terminated (SIGTERM)" in err
    assert leftovers() == []
    assert {p for pattern in ours for p in tmp.glob(pattern)} == before


def test_a_killed_verify_leaves_nothing_after_the_next_one(
    vm_built, locked_example: Path, tmp_path: Path
) -> None:
    """kill -9 runs no clean-up: verify's libvirt domain, its containers and its work folder
    stay. The next verify removes them before anything else and names them (here one that then
    stops at a missing disk)."""
    _, dist, _ = vm_built
    tmp = Path(tempfile.gettempdir())
    before = set(tmp.glob("imagebuild-verify-*"))
    invoke = str(Path(sys.executable).with_name("invoke"))
    argv = [invoke, "verify", "--spec", str(locked_example), "--dist", str(dist)]
    proc = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "verify: VM boot to SSH" in line:
                break
        deadline = time.monotonic() + 60
        while not _domains():
            assert time.monotonic() < deadline and proc.poll() is None, "no domain started"
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    domains, containers = _domains(), _containers()
    assert domains and containers and set(tmp.glob("imagebuild-verify-*")) - before
    (tmp_path / "empty").mkdir()
    r = verify(locked_example, tmp_path / "empty")
    assert r.returncode == 1 and "removed what a killed verify left: " in r.stderr, r.stderr
    for name in domains + containers:
        assert name in r.stderr, name
    assert leftovers() == [] and set(tmp.glob("imagebuild-verify-*")) == before


def test_sha256sums_list_every_artifact_and_verify_checks_the_disk(
    vm_built, locked_example: Path, tmp_path: Path
) -> None:
    """dist/SHA256SUMS (coreutils' format) holds every file the container and VM builds wrote;
    verify refuses a disk whose bytes differ from its line, before booting anything."""
    spec, dist, _ = vm_built
    stem = f"{spec.name}-{spec.version}"
    listed = {ln.split("  ", 1)[1] for ln in (dist / "SHA256SUMS").read_text().splitlines()}
    suffixes = (
        ".qcow2",
        ".ova",
        ".libvirt.box",
        ".oci.tar",
        ".vm.json",
        ".container.json",
        ".vm.packages.txt",
        ".container.packages.txt",
    )
    for name in (stem + s for s in suffixes):
        assert name in listed, name
    r = subprocess.run(
        ["sha256sum", "--ignore-missing", "-c", "SHA256SUMS"],
        cwd=dist,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "FAILED" not in r.stdout, r.stdout + r.stderr
    copy = tmp_path / "dist"
    copy.mkdir()
    for name in (f"{stem}.qcow2", "SHA256SUMS"):
        subprocess.run(["cp", "--reflink=auto", str(dist / name), str(copy / name)], check=True)
    with (copy / f"{stem}.qcow2").open("ab") as f:
        f.write(b"\0")
    before = leftovers()
    r = verify(locked_example, copy)
    assert r.returncode == 1 and f"{stem}.qcow2: sha256 differs" in r.stderr, r.stderr[-2000:]
    assert "VM boot to SSH" not in r.stderr and leftovers() == before


@pytest.fixture(scope="module")
def wordcount_built(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A second kind of spec: a plain FastAPI service (no ML stack, another user, port, app
    folder), from its committed lock, built as both artifacts."""
    spec = tmp_path_factory.mktemp("wordcount") / "wordcount-api"
    shutil.copytree(
        ROOT / "examples" / "wordcount-api", spec, ignore=shutil.ignore_patterns("__pycache__")
    )
    dist = tmp_path_factory.mktemp("wordcount-dist")
    common = ["--spec", str(spec / "imagebuild.yaml"), "--cache-dir", str(cache_dir)]
    for task in ("fetch", "build-container", "build-vm"):
        r = run_invoke(task, *common, *(["--dist", str(dist)] if task != "fetch" else []))
        assert r.returncode == 0, (task, r.stderr[-3000:])
    return spec / "imagebuild.yaml", dist


def test_the_cloud_formats_hold_the_verified_disk_with_their_datasources(
    wordcount_built, tmp_path: Path
) -> None:
    """The OVA, the VHD, the GCE tarball, the raw disk and the VMware box made in the same build
    (the VirtualBox box is verified below): each taken as verify
    --vm takes it holds the qcow2's guest-visible bytes (so the verify of the qcow2 or the OVA
    covers it), each listed in SHA256SUMS and the VM's provenance; the guest enables the Azure
    and GCE datasources only because those formats were asked for."""
    from imagebuild.spec import load
    from imagebuild.verify import vmdisk

    spec_path, dist = wordcount_built
    spec = load(spec_path)
    stem = f"{spec.name}-{spec.version}"
    qcow2 = dist / f"{stem}.qcow2"
    subjects = {
        s["name"]: s["digest"]["sha256"]
        for s in provenance.read_statement(dist / f"{stem}.vm.intoto.jsonl")["subject"]
    }
    sums = checksums.read(dist)  # the build's hashes (re-hashing 8 GiB of holes: ~25 s)
    for name in (
        f"{stem}.ova",
        f"{stem}.vhd",
        f"{stem}.gce.tar.gz",
        f"{stem}.raw",
        f"{stem}.vmware.box",
    ):
        disk = vmdisk.bootable(dist / name, tmp_path / name, spec.vm.disk_gb, to_qcow2=False)
        vmdisk.same_as(disk, qcow2)
        assert subjects[name] == sums[name]
    root = vmboot.partition_image(qcow2, tmp_path)
    cfg = vmboot.debugfs_cat(root, "/etc/cloud/cloud.cfg.d/90-imagebuild.cfg").decode()
    assert 'datasource_list: ["NoCloud", "ConfigDrive", "OVF", "Ec2", "Azure", "GCE"]' in cfg


def test_target_gce_uploads_the_built_tarball_and_writes_the_image_request(
    wordcount_built, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`build-vm --target gce` on the built example against a local Cloud Storage API: nothing
    is rebuilt, the gce format's bytes are the object's, the images.insert request names that
    object, record and request are in SHA256SUMS; a second run finds the object there; once the
    object holds other bytes, the run fails naming it and leaves no record or request."""
    from google.cloud import storage

    from imagebuild.spec import load

    spec_path, dist = wordcount_built
    spec = load(spec_path)
    assert spec.vm.gce is not None
    stem = f"{spec.name}-{spec.version}"
    args = ["--spec", str(spec_path), "--cache-dir", str(cache_dir), "--dist", str(dist)]
    written = {f"{stem}.gce.json", f"{stem}.gce-image.json"}
    with serve_gcs(spec.vm.gce.bucket) as env:
        for how in ("uploaded", "already there"):
            r = run_invoke("build-vm", *args, "--target", "gce", env=env)
            assert r.returncode == 0, r.stderr[-3000:]
            assert "build-vm: nothing changed" in r.stderr and f"{how}, generation" in r.stderr
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        bucket = storage.Client(project=spec.vm.gce.project).bucket(spec.vm.gce.bucket)
        bucket.blob(f"{stem}.gce.tar.gz").download_to_filename(str(tmp_path / "from-gcs"))
        sums = checksums.read(dist)
        assert sha256_file(tmp_path / "from-gcs") == sums[f"{stem}.gce.tar.gz"]
        record = json.loads((dist / f"{stem}.gce.json").read_text())
        assert record["tarball_sha256"] == sums[f"{stem}.gce.tar.gz"]
        assert not record["request_sent"] and written <= set(sums)
        request = json.loads((dist / f"{stem}.gce-image.json").read_text())
        assert request["body"]["rawDisk"]["source"] == (
            f"https://storage.googleapis.com/{spec.vm.gce.bucket}/{stem}.gce.tar.gz"
        )
        assert request["body"]["family"] == spec.vm.gce.family
        bucket.blob(f"{stem}.gce.tar.gz").upload_from_string(b"another build's bytes")
        r = run_invoke("build-vm", *args, "--target", "gce", env=env)
    assert r.returncode == 1 and "exists and is not this build's" in r.stderr, r.stderr[-3000:]
    assert not [n for n in written if (dist / n).exists()]
    assert not written & set(checksums.read(dist))


def test_a_plain_fastapi_service_verifies_green(wordcount_built) -> None:
    """Verified through its VirtualBox box (what a `vagrant up` with VirtualBox gets): the
    system VMDK is taken out, shown to hold the qcow2's bytes, and booted on the hardware the
    box's OVF declares (PIIX4 IDE, a virtio NIC). The OVA's and the VMware box's hardware is
    booted by test_sabotage_is_named."""
    spec, dist = wordcount_built
    r = verify(spec, dist, "--vm", str(next(dist.glob("*.virtualbox.box"))))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "verify: same disk as: done" in r.stderr and "(disk on ide, NIC virtio)" in r.stderr
    rows = {
        row["id"]: row for row in json.loads((dist / "verify" / "report.json").read_text())["rows"]
    }
    health = rows["service:GET 127.0.0.1:8000/health: body"]
    assert '"max_words":10000' in health["vm"] and health["vm"] == health["container"]
    counted = rows["behaviour:[--check]: stdout"]
    assert '"words": 12' in counted["vm"] and counted["vm"] == counted["container"]
    assert rows["user:runtime user"]["vm"] == "svc"
    assert rows[UNLOCKED]["vm"] == "none"
    assert leftovers() == []
