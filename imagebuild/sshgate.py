"""Packer's SSH port, opened only once the guest's sshd answers.

QEMU's user networking accepts a connection on a forwarded port at once, before the guest is
up, and then retries its SYN to the guest with TCP's doubling back-off. Packer's first
handshake sits in that back-off and completes at the retry after sshd starts: measured here,
Packer reached SSH 33.8 s after QEMU started (46 s with the formats made beside it) where a boot
reached by short `ssh` tries took 24 s. So the guest boots with only a probe port forwarded;
short tries on it (each a new connection, so a new first SYN) see sshd's banner soon after it
starts, and only then is Packer's port forwarded, through QEMU's monitor (`hostfwd_add`). Until
then Packer's dial is refused and it retries every 5 s."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from imagebuild import vmboot
from imagebuild.errors import ImageBuildError

MONITOR = "qemu-monitor.sock"
NETDEV = "ibnet0"  # vmboot.guest_args' user network
SUN_PATH_MAX = 107  # sockaddr_un.sun_path less its NUL
PACKER_PORTS = range(2222, 4444)


class GateError(ImageBuildError):
    pass


@dataclass(frozen=True)
class Gate:
    work: Path  # the build's scratch folder: the monitor's socket
    probe_port: int  # forwarded from the start: the gate's own tries, and a login after a failure
    port: int  # Packer's (host_port_min = host_port_max), forwarded once sshd answers

    @classmethod
    def new(cls, work: Path) -> Gate:
        """The probe port is QEMU's from its start; Packer's stays unbound until sshd answers,
        so it comes from Packer's own default range (2222-4444), which no outgoing connection
        takes as its local port (the kernel's ephemeral ones start at 32768)."""
        first = random.randrange(PACKER_PORTS.start, PACKER_PORTS.stop)
        for port in (*range(first, PACKER_PORTS.stop), *range(PACKER_PORTS.start, first)):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return cls(work, vmboot.free_port(), port)
        raise GateError(
            f"no free port on 127.0.0.1 in {PACKER_PORTS.start}-{PACKER_PORTS.stop - 1}"
        )

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


def sshd_answers(port: int, timeout: float = 5.0) -> bool:
    """One short try: a new connection that reads the server's first line (5 s: as long as
    `vmboot`'s own tries wait, enough for sshd to start a session on a busy TCG guest)."""
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
def opened_when_up(
    g: Gate, qemu_start_s: float = 300, fail_open_s: float = 240
) -> Iterator[threading.Event]:
    """While the body runs (Packer), forward Packer's port to the guest's sshd as soon as the
    probe port shows it up. The yielded event is set when the build cannot go on (QEMU never
    started, e.g. Packer waiting for its port; the forward refused; the monitor silent): the
    body stops Packer on it (`packer.build(abort=...)`), and its error then says why, instead of
    Packer waiting out its 15-minute SSH timeout. Fails open: with no banner `fail_open_s` after
    QEMU started (a slow guest), the port is forwarded anyway and Packer waits as it always did."""
    stop, abort, problems = threading.Event(), threading.Event(), []
    monitor = g.work / MONITOR

    def give_up(problem: str) -> None:
        problems.append(problem)
        abort.set()

    def forwarded() -> bool:
        rows = [ln.split() for ln in monitor_command(monitor, "info usernet").splitlines()]
        return any("HOST_FORWARD" in r[0] and r[2:4] == ["127.0.0.1", str(g.port)] for r in rows)

    def forward() -> None:
        command, error = f"hostfwd_add {NETDEV} tcp:127.0.0.1:{g.port}-:22", ""
        for _ in range(3):  # a monitor busy for 10 s is asked again, not taken for a refusal
            try:
                said = monitor_command(monitor, command)
            except (OSError, GateError) as e:
                error = str(e) or type(e).__name__
                try:  # the command may have reached QEMU before the reply timed out
                    if forwarded():
                        return
                except (OSError, GateError):
                    pass
                time.sleep(1)
                continue
            if said:
                give_up(f"QEMU did not forward SSH to port {g.port}: {said}")
            return
        give_up(f"QEMU's monitor did not answer ({monitor}): {error}")

    def gate() -> None:
        waited = time.monotonic()
        while not monitor.exists():  # nothing to probe before our QEMU runs
            if stop.wait(0.5):
                return
            if time.monotonic() - waited > qemu_start_s:
                return give_up(f"QEMU did not start within {qemu_start_s:.0f} s (port {g.port})")
        started = time.monotonic()
        while not stop.wait(0.5):
            if sshd_answers(g.probe_port) or time.monotonic() - started > fail_open_s:
                return forward()

    def guarded() -> None:
        try:
            gate()
        except BaseException as e:  # never a silent end: Packer would wait out its timeout
            give_up(f"the SSH gate failed: {e!r}")

    thread = threading.Thread(target=guarded, name="imagebuild-ssh-gate", daemon=True)
    thread.start()
    try:
        yield abort
    except Exception as e:
        stop.set()
        thread.join()  # a reason given at the moment Packer failed is still read
        if problems:
            raise GateError("; ".join([*problems, str(e)])) from e
        raise
    finally:
        stop.set()
        thread.join()
