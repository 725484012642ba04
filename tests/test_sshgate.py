"""Packer's SSH port is forwarded by QEMU's monitor only once sshd answers (imagebuild.sshgate):
a real QEMU (no disk: the monitor and user networking are all the gate touches) and, on the
probe port, a stand-in for the guest's sshd (its banner is all the gate reads)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from imagebuild import sshgate, vmboot

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


def test_the_port_is_forwarded_only_once_sshd_answers(tmp_path: Path) -> None:
    with sshd_after(1.5) as probe, qemu(tmp_path) as proc:
        gate = sshgate.Gate(tmp_path, probe, vmboot.free_port())
        with sshgate.opened_when_up(gate):
            time.sleep(0.8)
            assert f"127.0.0.1 {gate.port}" not in forwards(tmp_path)
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", gate.port), timeout=2).close()
            deadline = time.monotonic() + 10
            while f"127.0.0.1 {gate.port}" not in forwards(tmp_path):
                assert time.monotonic() < deadline, forwards(tmp_path)
                time.sleep(0.2)
            row = next(ln for ln in forwards(tmp_path).splitlines() if f" {gate.port} " in ln)
            assert "HOST_FORWARD" in row and row.split()[-3] == "22", row
        assert proc.poll() is None


def test_a_forward_qemu_refuses_ends_the_guest_and_the_build_says_why(tmp_path: Path) -> None:
    with sshd_after(0) as probe, qemu(tmp_path) as proc, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # Packer's port, held by someone else
        gate = sshgate.Gate(tmp_path, probe, taken.getsockname()[1])
        with pytest.raises(sshgate.GateError) as e, sshgate.opened_when_up(gate):
            proc.wait(timeout=20)  # QEMU quits: Packer's build fails at once, not in 15 min
            raise RuntimeError("packer build failed")
        assert f"QEMU did not forward SSH to port {gate.port}: Could not set up" in str(e.value)
        assert isinstance(e.value.__cause__, RuntimeError)


def test_a_socket_path_qemu_cannot_bind_is_refused_naming_the_cache(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 100)
    with pytest.raises(sshgate.GateError, match="use a shorter --cache-dir"):
        sshgate.monitor_args(deep)
    assert sshgate.monitor_args(tmp_path)[1].startswith(f"unix:{tmp_path}/")
