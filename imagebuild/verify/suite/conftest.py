"""The verify suite: both artifacts as testinfra hosts (`docker://` and `ssh://`), their facts
collected by the same code, one parametrised test per item of imagebuild.verify.items.

`invoke verify` writes a context JSON (host URLs, spec, disk) and runs this folder with
`--ib-context FILE`; every row (container value, VM value, outcome) goes to report.json beside it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import testinfra

from imagebuild.cache import Cache
from imagebuild.project import Project
from imagebuild.verify import facts as factsmod
from imagebuild.verify import filebytes, filemeta, interpreter, service
from imagebuild.verify.diskread import DiskReading, disk_reading
from imagebuild.verify.items import items


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--ib-context", required=True, help="context JSON written by invoke verify")


# Each context is collected once, whatever the outcome: a failure or an interrupt (Ctrl-C,
# SIGTERM) is raised again, never collected a second time at the session's end.
_CONTEXTS: dict[str, dict[str, Any] | BaseException] = {}


def _ctx(config: pytest.Config) -> dict[str, Any]:
    path = config.getoption("--ib-context")
    if path not in _CONTEXTS:
        try:
            _CONTEXTS[path] = _collect(path, _project(config, path), config)
        except BaseException as e:
            _CONTEXTS[path] = e
            raise
    got = _CONTEXTS[path]
    if isinstance(got, BaseException):
        raise got
    return got


def _handed(config: pytest.Config, name: str) -> Any:
    """What `invoke verify` handed over as a plugin (this suite runs in its process)."""
    for plugin in config.pluginmanager.get_plugins():
        if (got := getattr(plugin, name, None)) is not None:
            return got
    return None


def _project(config: pytest.Config, path: str) -> Project:
    """The project `invoke verify` loaded; read from the context's spec path only when the
    suite is run on its own."""
    if isinstance(got := _handed(config, "imagebuild_project"), Project):
        return got
    return Project.named(json.loads(Path(path).read_text())["spec"])


def _collect(path: str, project: Project, config: pytest.Config) -> dict[str, Any]:
    ctx = json.loads(Path(path).read_text())
    handed = _handed(config, "imagebuild_disk_reading")
    with contextlib.ExitStack() as stack:
        # started by verify before the boot; begun here when the suite runs on its own
        reading = handed or stack.enter_context(
            disk_reading(Path(ctx["disk"]), filebytes.argument(project.spec))
        )
        return _collect_with(ctx, project, reading)


def _collect_with(
    ctx: dict[str, Any], project: Project, reading: DiskReading | None
) -> dict[str, Any]:
    spec, req, lock = project.spec, project.req, project.lock

    def one(artifact: str) -> tuple[dict[str, Any], Any]:
        h = ctx["hosts"][artifact]
        host = testinfra.get_host(h["url"])
        image = reading if artifact == "vm" else None
        found, listing = factsmod.collect(host, artifact, req, lock, h["config"], image)
        if h["service_url"]:
            laps = factsmod.Laps()
            found |= service.facts(testinfra.get_host(h["service_url"]), artifact, spec)
            laps.lap("service as shipped")
            found["seconds"] |= laps.laps
        return found, listing

    # Both artifacts at once: each side mostly waits on its own commands (docker exec, ssh to an
    # emulated guest), so the container's facts cost no wall time beside the VM's. The VM's stay
    # on this thread (where Ctrl-C and SIGTERM arrive: the disk reading's owner then kills its
    # copy, dump and hashing at once, diskread.py); the container's run
    # on a daemon thread, which nothing waits for on Ctrl-C or SIGTERM (an executor's threads
    # are joined at exit: a poll still running there would hold the exit up).
    done: Future[tuple[dict[str, Any], Any]] = Future()

    def container() -> None:
        try:
            done.set_result(one("container"))
        except BaseException as e:  # handed to the waiting thread, raised there
            done.set_exception(e)

    threading.Thread(target=container, name="verify-container-facts", daemon=True).start()
    collected = {"vm": one("vm"), "container": done.result()}
    facts = {artifact: collected[artifact][0] for artifact in ("container", "vm")}
    listings = {artifact: collected[artifact][1] for artifact in ("container", "vm")}
    judged = filemeta.judge(listings, filemeta.Debs(lock, Cache(Path(ctx["cache"]))))
    for artifact, rows in judged.items():
        factsmod.merge(facts[artifact], rows)
    libs = sorted(facts["container"]["lib"])
    app_files = sorted(facts["container"]["app-file"])
    its = items(req, lock, libs) + filebytes.items(spec, app_files) + service.items(spec)
    its += filemeta.items(facts["container"]) + interpreter.items(spec)
    return {"ctx": ctx, "spec": spec, "facts": facts, "items": its}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "item" in metafunc.fixturenames:
        its = _ctx(metafunc.config)["items"]
        metafunc.parametrize("item", its, ids=[i.id for i in its])


ROWS: dict[str, dict[str, Any]] = {}


@pytest.fixture
def facts(request: pytest.FixtureRequest) -> dict[str, Any]:
    return _ctx(request.config)["facts"]


@pytest.fixture
def row(request: pytest.FixtureRequest) -> dict[str, Any]:
    r: dict[str, Any] = {}
    ROWS[request.node.nodeid] = r
    return r


def gpu_present() -> tuple[bool, str]:
    if Path("/dev/nvidiactl").exists() and shutil.which("nvidia-smi"):
        return True, ""
    return False, "no NVIDIA GPU on this host (/dev/nvidiactl or nvidia-smi missing)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # noqa: ANN201
    outcome = yield
    rep = outcome.get_result()
    r = ROWS.get(item.nodeid)
    if r is not None and (rep.when == "call" or rep.outcome == "skipped"):
        r["outcome"] = rep.outcome
        if rep.outcome == "failed":
            msg = rep.longrepr.reprcrash.message if rep.longrepr else "failed"
            # "AssertionError: ITEM: what differs" (first line) -> "what differs"
            r["problem"] = msg.splitlines()[0].removeprefix("AssertionError: ").split(": ", 1)[-1]
        elif rep.outcome == "skipped" and isinstance(rep.longrepr, tuple):
            r["problem"] = rep.longrepr[2].removeprefix("Skipped: ")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The report, from what was collected; none if collection failed or was interrupted."""
    path = session.config.getoption("--ib-context")
    got = _CONTEXTS.get(path)
    if not isinstance(got, dict) or exitstatus == pytest.ExitCode.INTERRUPTED:
        return
    ctx = got["ctx"]
    out = Path(path).with_name("report.json")
    report = {
        "hosts": {a: {k: h[k] for k in ("url", "how", "seconds")} for a, h in ctx["hosts"].items()},
        "rows": list(ROWS.values()),
        "group_seconds": {a: f.get("seconds", {}) for a, f in got["facts"].items()},
    }
    out.write_text(json.dumps(report, indent=1))
