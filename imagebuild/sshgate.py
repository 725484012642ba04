"""Packer's SSH port, opened only once the guest's sshd answers.

QEMU's user networking accepts a connection on a forwarded port at once, before the guest is
up, and then retries its SYN to the guest with TCP's doubling back-off. Packer's first
handshake sits in that back-off and completes at the retry after sshd starts: measured here,
Packer reached SSH 34-46 s after QEMU started where a boot reached by short `ssh` tries took 24 s.
So the guest boots with only a probe port forwarded; short tries on it (each a new connection,
so a new first SYN) see sshd's banner within a second of its start, and only then is Packer's
port forwarded, through QEMU's monitor (`hostfwd_add`). Until then Packer's dial is refused and
it retries every 5 s."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from imagebuild import vmboot
from imagebuild.errors import ImageBuildError

MONITOR = "qemu-monitor.sock"
NETDEV = "ibnet0"  # vmboot.guest_args' user network
SUN_PATH_MAX = 107  # sockaddr_un.sun_path less its NUL


class GateError(ImageBuildError):
    pass


@dataclass(frozen=True)
class Gate:
    work: Path  # the build's scratch folder: the monitor's socket
    probe_port: int  # forwarded from the start: the gate's own tries, and a login after a failure
    port: int  # Packer's (host_port_min = host_port_max), forwarded once sshd answers

    @classmethod
    def new(cls, work: Path) -> Gate:
        probe = vmboot.free_port()
        port = vmboot.free_port()
        while port == probe:
            port = vmboot.free_port()
        return cls(work, probe, port)

    def qemu_args(self, public_key: str) -> list[str]:
        return [*vmboot.guest_args(self.probe_port, public_key), *monitor_args(self.work)]


def monitor_args(work: Path) -> list[str]:
    """QEMU's human monitor on a socket in the build's private scratch folder (mode 0700: the
    monitor can make QEMU run programs, so nobody else may reach it)."""
    path = work / MONITOR
    if len(str(path).encode()) > SUN_PATH_MAX:
        raise GateError(
            f"{path}: longer than a socket path may be ({SUN_PATH_MAX} bytes); "
            "use a shorter --cache-dir"
        )
    return ["-monitor", f"unix:{path},server=on,wait=off"]


def sshd_answers(port: int, timeout: float = 2.0) -> bool:
    """One short try: a new connection that reads the server's first line."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def monitor_command(path: Path, command: str) -> str:
    """Send one HMP command; its reply is what QEMU prints before the next prompt (empty when
    it has nothing to complain about)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        out = _until_prompt(s, b"")  # the greeting
        s.sendall(command.encode() + b"\n")
        out = _until_prompt(s, b"")
    text = out.decode(errors="replace").replace("\r", "")
    lines = text.splitlines()[1:-1]  # drop the echoed command and the prompt
    return "\n".join(ln for ln in lines if ln.strip())


def _until_prompt(s: socket.socket, out: bytes) -> bytes:
    while not out.endswith(b"(qemu) "):
        chunk = s.recv(4096)
        if not chunk:
            raise GateError("QEMU's monitor closed")
        out += chunk
    return out


@contextmanager
def opened_when_up(g: Gate) -> Iterator[None]:
    """While the body runs (Packer), forward Packer's port to the guest's sshd as soon as the
    probe port shows it up. A forward QEMU refuses ends the guest (`quit`), so Packer fails at
    once instead of waiting out its SSH timeout, and the body's error says why."""
    stop, problems = threading.Event(), []
    monitor = g.work / MONITOR

    def gate() -> None:
        while not stop.wait(0.5):
            if not sshd_answers(g.probe_port):
                continue
            try:
                said = monitor_command(monitor, f"hostfwd_add {NETDEV} tcp:127.0.0.1:{g.port}-:22")
            except (OSError, GateError) as e:
                said = str(e) or type(e).__name__
            if said:
                problems.append(f"QEMU did not forward SSH to port {g.port}: {said}")
                with contextlib.suppress(OSError, GateError):  # gone already
                    monitor_command(monitor, "quit")
            return

    thread = threading.Thread(target=gate, name="imagebuild-ssh-gate", daemon=True)
    thread.start()
    try:
        yield
    except Exception as e:
        if problems:
            raise GateError("; ".join(problems)) from e
        raise
    finally:
        stop.set()
        thread.join()
