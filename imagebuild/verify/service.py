"""Parity by behaviour as a service: the app as each artifact starts it (the container's own
ENTRYPOINT + CMD, the VM's systemd unit at boot) answers the spec's `verify.service` request
the same way. The request is made inside the artifact (the container has no network), by the
venv's Python, waiting for the port to open while the service is still starting."""

from __future__ import annotations

import shlex
from typing import Any

import docker.errors

from imagebuild import inventory
from imagebuild.engine import engine
from imagebuild.spec import Spec
from imagebuild.verify import interpreter
from imagebuild.verify.facts import comparable
from imagebuild.verify.model import ANY, Item

PROBE = r"""
import json, sys, time, urllib.error, urllib.request
port, path, wait = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
end = time.monotonic() + wait
while True:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
            status, body = r.status, r.read()
        break
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
        break
    except OSError as e:
        if time.monotonic() > end:
            print(json.dumps({"status": f"no answer after {wait:.0f}s ({e})", "body": ""}))
            sys.exit(0)
        time.sleep(1)
print(json.dumps({"status": str(status), "body": body.decode(errors="replace")}))
"""


def _rows(spec: Spec) -> tuple[str, str, str]:
    svc = spec.verify.service
    assert svc is not None
    request = f"GET 127.0.0.1:{svc.port}{svc.path}"
    return "running as shipped", f"{request}: status", f"{request}: body"


def _container_state(name: str) -> tuple[str, str]:
    """(`running` or `exited N`, the last lines it logged) of the service container."""
    try:
        c = engine().containers.get(name)
    except docker.errors.NotFound:
        return "gone", ""
    state = c.attrs["State"]
    log = c.logs(tail=5).decode(errors="replace").strip()
    return ("running" if state["Running"] else f"exited {state['ExitCode']}"), log


def facts(service_host: Any, artifact: str, spec: Spec) -> dict[str, dict[str, str]]:
    svc = spec.verify.service
    if svc is None:
        return {}
    state_row, status_row, body_row = _rows(spec)
    if artifact == "container":
        state, log = _container_state(service_host.backend.name)
        alive = state == "running"
    else:
        unit = shlex.quote(f"{spec.service_name}.service")
        state = service_host.run(f"systemctl is-active {unit}").stdout.strip() or "unknown"
        alive = state in ("active", "activating")
        log = service_host.run(f"journalctl -u {unit} -n 5 --no-pager -o cat").stdout.strip()
    status, body = f"not probed: {state}", ""
    if alive:
        probe = f"{shlex.quote(PROBE)} {svc.port} {shlex.quote(svc.path)} {svc.start_s}"
        r = service_host.run(f"{inventory.target_python(spec)} -c {probe}")
        try:  # the probe runs on the artifact's Python: a broken one is a finding, not a crash
            answer = interpreter.parse("the service probe", r.rc, r.stdout, r.stderr)
            status, body = interpreter.text(answer["status"]), interpreter.text(answer["body"])
        except (interpreter.ScriptFailed, KeyError, TypeError) as e:
            status = str(e)[:300]
    if not status.isdigit() and log:
        status += f"; its last lines: {log[-300:]}"
    body = comparable(body, spec.verify.ignore)
    return {"service": {state_row: state, status_row: status, body_row: body}}


def items(spec: Spec) -> list[Item]:
    svc = spec.verify.service
    if svc is None:
        return []
    state_row, status_row, body_row = _rows(spec)
    return [
        Item("service", state_row, "running", "active", shared=False),
        Item("service", status_row, str(svc.status), str(svc.status)),
        Item("service", body_row, ANY, ANY),
    ]
