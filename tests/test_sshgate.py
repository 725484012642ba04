"""Packer's SSH port is forwarded by QEMU's monitor only once sshd answers (imagebuild.sshgate):
a real QEMU (no disk: the monitor and user networking are all the gate touches) and, on the
probe port, a stand-in for the guest's sshd (its banner is all the gate reads)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
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
def sshd_after(seconds: float) -> Iterator[int]:
    """A port that refuses until `seconds` have passed, then greets as sshd does."""
    port = vmboot.free_port()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def serve() -> None:
        time.sleep(seconds)
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
    with qemu(tmp_path) as proc, sshd_after(1.5) as probe:
        gate = sshgate.Gate.new(tmp_path)
        gate = sshgate.Gate(tmp_path, probe, gate.port)
        assert gate.port in sshgate.PACKER_PORTS
        with sshgate.opened_when_up(gate) as abort:
            time.sleep(0.8)
            assert not forwarded(tmp_path, gate.port)
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", gate.port), timeout=2).close()
            until(lambda: bool(forwarded(tmp_path, gate.port)))
            assert forwarded(tmp_path, gate.port)[4:6] == ["10.0.2.15", "22"]
        assert proc.poll() is None and not abort.is_set()


def test_a_forward_qemu_refuses_stops_packer_and_the_build_says_why(tmp_path: Path) -> None:
    with qemu(tmp_path), sshd_after(0) as probe, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # Packer's port, held by someone else
        gate = sshgate.Gate(tmp_path, probe, taken.getsockname()[1])
        with pytest.raises(sshgate.GateError) as e, sshgate.opened_when_up(gate) as abort:
            assert abort.wait(20)  # what packer.run stops Packer on
            raise RuntimeError("packer build failed (exit 1)")
    said = str(e.value)
    assert f"QEMU did not forward SSH to port {gate.port}: Could not set up" in said
    assert said.endswith("; packer build failed (exit 1)") and isinstance(
        e.value.__cause__, RuntimeError
    )


def test_a_guest_that_never_answers_gets_the_forward_anyway(tmp_path: Path) -> None:
    """Fails open: Packer then waits for SSH as it did before the gate."""
    with qemu(tmp_path):
        gate = sshgate.Gate(tmp_path, vmboot.free_port(), sshgate.Gate.new(tmp_path).port)
        with sshgate.opened_when_up(gate, fail_open_s=1) as abort:
            until(lambda: bool(forwarded(tmp_path, gate.port)))
        assert not abort.is_set()


def test_a_qemu_that_never_starts_stops_packer(tmp_path: Path) -> None:
    gate = sshgate.Gate.new(tmp_path)
    never = pytest.raises(sshgate.GateError, match=r"QEMU did not start within 1 s \(port")
    with never, sshgate.opened_when_up(gate, qemu_start_s=1) as abort:
        assert abort.wait(10)
        raise RuntimeError("packer build failed (exit 1)")


def test_packer_is_stopped_once_abort_is_set(tmp_path: Path) -> None:
    abort = threading.Event()
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True, text=True)
    threading.Thread(target=packer._stop_on, args=(abort, proc), daemon=True).start()
    time.sleep(1)
    assert proc.poll() is None
    abort.set()
    assert proc.wait(timeout=10) == -signal.SIGINT


def test_a_socket_path_qemu_cannot_bind_is_refused_naming_the_cache(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 100)
    with pytest.raises(sshgate.GateError, match="use a shorter --cache-dir"):
        sshgate.monitor_args(deep)
    assert sshgate.monitor_args(tmp_path)[1].startswith(f"unix:{tmp_path}/")
