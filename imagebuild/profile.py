"""Where a task's time goes, step by step, for the benches (`bench/speed.py`): engine calls,
Ansible's start-up and its tasks, reading a stage's changes, writing and hashing layers, the
archives, the image load, and this process's own start-up. Off unless $IMAGEBUILD_PROFILE names a
file: then the totals are written there as JSON when the process exits. Steps may overlap (an
engine call inside the image load); each is a wall-clock total with its count."""

from __future__ import annotations

import atexit
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ENV = "IMAGEBUILD_PROFILE"
_totals: dict[str, list[float]] = {}  # step -> [seconds, count]


def on() -> bool:
    return bool(os.environ.get(ENV))


def add(name: str, seconds: float, count: int = 1) -> None:
    if on():
        total = _totals.setdefault(name, [0.0, 0])
        total[0] += seconds
        total[1] += count


@contextmanager
def step(name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        add(name, time.perf_counter() - start)


def count_engine_calls(client: Any) -> None:
    """Every request the docker SDK makes through `client` adds its round trip to `engine
    calls` (a requests response hook: the time until the response headers)."""
    if on():
        client.api.hooks["response"].append(_engine_call)


def _engine_call(r: Any, *_a: Any, **_k: Any) -> None:
    """One round trip, in the total and under its endpoint (`POST /containers/{}/start`)."""
    seconds = r.elapsed.total_seconds()
    add("engine calls", seconds)
    add(f"engine call: {r.request.method} {endpoint(r.request.path_url)}", seconds)


def endpoint(path_url: str) -> str:
    """An engine API path without its version, query and object names: `/v1.43/containers/
    imagebuild-x-1a2b/json?all=1` -> `/containers/{}/json` (a name may hold slashes)."""
    parts = path_url.split("?", 1)[0].strip("/").split("/")
    if parts and parts[0].startswith("v1."):
        parts = parts[1:]
    out: list[str] = []
    for part in parts:
        word = part if part in _API_WORDS else "{}"
        if not (word == "{}" and out and out[-1] == "{}"):
            out.append(word)
    return "/" + "/".join(out)


_API_WORDS = frozenset(
    {
        "containers",
        "images",
        "exec",
        "volumes",
        "networks",
        "distribution",
        "system",
        "json",
        "create",
        "start",
        "stop",
        "kill",
        "wait",
        "archive",
        "export",
        "changes",
        "load",
        "get",
        "push",
        "tag",
        "prune",
        "version",
        "_ping",
        "info",
        "attach",
        "logs",
        "resize",
        "top",
        "stats",
    }
)


def ansible_events(events: Any, started: float) -> None:
    """Ansible's start-up (from `started`, the epoch time ansible-runner was called, to its
    first task) and its tasks (each task's start to its result), from ansible-runner's job
    events."""
    if not on():
        return
    task_start, first, task = None, None, ""
    for e in events:
        kind, at = e.get("event", ""), e.get("created")
        if not at or kind == "runner_on_start":
            continue
        t = _parse(at)
        if kind == "playbook_on_task_start":
            task_start, task = t, e.get("event_data", {}).get("task", "")
            first = first if first is not None else t
        elif kind.startswith("runner_on_") and task_start is not None:
            add("ansible tasks", t - task_start)
            add(f"ansible task: {task}", t - task_start)
            task_start = None
    if first is not None:
        add("ansible start-up (to its first task)", first - started)


def _parse(stamp: str) -> float:
    from datetime import UTC, datetime

    when = datetime.fromisoformat(stamp)  # ansible-runner writes UTC without a zone
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _process_age() -> float:
    """Seconds since this process started (its start time in /proc, in clock ticks since boot)."""
    from imagebuild.leftovers import start_time

    started = int(start_time(os.getpid()) or 0) / os.sysconf("SC_CLK_TCK")
    return float(Path("/proc/uptime").read_text().split()[0]) - started


def mark_started() -> None:
    """Called once the task's code runs: what came before is interpreter start-up + imports."""
    add("python start-up and imports", _process_age())


def _write() -> None:
    if not on():
        return
    add("whole process", _process_age())
    body = {k: {"seconds": round(v[0], 3), "count": int(v[1])} for k, v in _totals.items()}
    Path(os.environ[ENV]).write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")


atexit.register(_write)
