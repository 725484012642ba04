"""Packer's SSH port is forwarded by QEMU's monitor only once sshd answers (imagebuild.sshgate):
a real QEMU (no disk: the monitor and user networking are all the gate touches) and, on the
probe port, a stand-in for the guest's sshd (its banner is all the gate reads)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from imagebuild import packer, sshgate, vmboot

pytestmark = pytest.mark.skipif(
    not shutil.which("qemu-system-x86_64"), reason="needs qemu-system-x86_64"
)


@contextmanager
def qemu(work: Path) -> Iterator[subprocess.Popen[bytes]]:
    argv = ["qemu-system-x86_64", "-display", "none", "-nodefaults", "-machine", "accel=tcg"]
    argv += ["-netdev", f"user,id={sshgate.NETDEV},restrict=on", *sshgate.monitor_args(work)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not (work / sshgate.MONITOR).exists():
            assert proc.poll() is None and time.monotonic() < deadline, "QEMU did not start"
            time.sleep(0.05)
        yield proc
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def sshd_on(start: threading.Event) -> Iterator[int]:
    """A port that refuses until `start` is set, then greets as sshd does."""
    port = vmboot.free_port()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def serve() -> None:
        start.wait()
        server.bind(("127.0.0.1", port))
        server.listen()
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u7\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield port
    finally:
        start.set()
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)
        server.close()


def forwards(work: Path) -> str:
    return sshgate.monitor_command(work / sshgate.MONITOR, "info usernet")


def forwarded(work: Path, port: int) -> list[str]:
    """`info usernet`'s row of the host forward from 127.0.0.1:PORT, split into its fields."""
    rows = [ln.split() for ln in forwards(work).splitlines() if "HOST_FORWARD" in ln]
    return next((r for r in rows if r[2:4] == ["127.0.0.1", str(port)]), [])


def until(check: Callable[[], bool], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_the_port_is_forwarded_only_once_sshd_answers(tmp_path: Path) -> None:
    up = threading.Event()
    with qemu(tmp_path) as proc, sshd_on(up) as probe:
        gate = sshgate.Gate(tmp_path, probe, sshgate.Gate.new(tmp_path).port)
        assert gate.port in sshgate.PACKER_PORTS
        with sshgate.opened_when_up(gate) as abort:
            time.sleep(1.5)  # the gate has probed, and found nothing
            assert not forwarded(tmp_path, gate.port)
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", gate.port), timeout=2).close()
            up.set()
            until(lambda: bool(forwarded(tmp_path, gate.port)))
            assert forwarded(tmp_path, gate.port)[4:6] == ["10.0.2.15", "22"]
        assert proc.poll() is None and not abort.is_set()


def test_a_forward_qemu_refuses_stops_packer_and_the_build_says_why(tmp_path: Path) -> None:
    up = threading.Event()
    up.set()
    with qemu(tmp_path), sshd_on(up) as probe, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # Packer's port, held by someone else
        gate = sshgate.Gate(tmp_path, probe, taken.getsockname()[1])
        with pytest.raises(sshgate.GateError) as e, sshgate.opened_when_up(gate) as abort:
            assert abort.wait(20)  # what packer.run stops Packer on
            raise RuntimeError("packer build failed (exit 1)")
    said = str(e.value)
    assert f"QEMU did not forward SSH to port {gate.port}: Could not set up" in said
    assert said.endswith("; packer build failed (exit 1)")
    assert isinstance(e.value.__cause__, RuntimeError)


def test_a_guest_that_never_answers_gets_the_forward_anyway(tmp_path: Path) -> None:
    """Fails open: Packer then waits for SSH as it did before the gate."""
    with qemu(tmp_path):
        gate = sshgate.Gate(tmp_path, vmboot.free_port(), sshgate.Gate.new(tmp_path).port)
        with sshgate.opened_when_up(gate, fail_open_s=1) as abort:
            until(lambda: bool(forwarded(tmp_path, gate.port)))
        assert not abort.is_set()


def test_a_qemu_that_never_starts_stops_packer(tmp_path: Path) -> None:
    gate = sshgate.Gate.new(tmp_path)
    never = pytest.raises(sshgate.GateError, match=r"^QEMU did not start within 1 s \(port")
    with never as e, sshgate.opened_when_up(gate, qemu_start_s=1) as abort:
        assert abort.wait(10)
        raise RuntimeError("packer build failed (exit 1)")
    assert str(e.value).endswith("; packer build failed (exit 1)") and abort.is_set()


def test_packer_is_stopped_once_abort_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """packer.run on a stand-in `packer` that would wait a minute: stopped as on Ctrl-C."""
    fake = tmp_path / "bin" / "packer"
    fake.parent.mkdir()
    fake.write_text(
        f"#!{sys.executable}\nimport signal, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_DFL)  # as Go's signal.Notify does\n"
        "print('started', flush=True)\ntime.sleep(60)\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    abort = threading.Event()
    threading.Timer(1, abort.set).start()
    start = time.monotonic()
    with pytest.raises(packer.PackerError, match=r"packer build failed \(exit -2\)"):
        packer.run(["build"], tmp_path, tmp_path, tmp_path / "packer.log", abort)
    assert time.monotonic() - start < 10
    assert "started" in (tmp_path / "packer.log").read_text()


def test_a_socket_path_qemu_cannot_bind_is_refused_naming_the_cache(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 100)
    with pytest.raises(sshgate.GateError, match="use a shorter --cache-dir"):
        sshgate.monitor_args(deep)
    assert sshgate.monitor_args(tmp_path)[1].startswith(f"unix:{tmp_path}/")
