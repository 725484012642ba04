"""Work beside other work in verify: each artifact's facts, and groups of one artifact's
checks, mostly wait on their own commands (docker exec, ssh to an emulated guest)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


def in_background(work: Callable[[], T], name: str) -> Future[T]:
    """`work` on a daemon thread, its result or exception in the Future. Not an executor's:
    those are joined at exit, and a command still running there would hold up an unwinding
    verify (Ctrl-C, SIGTERM)."""
    done: Future[T] = Future()

    def run() -> None:
        try:
            done.set_result(work())
        except BaseException as e:  # handed to the waiting thread, raised there
            done.set_exception(e)

    threading.Thread(target=run, name=name, daemon=True).start()
    return done


def timed(work: Callable[..., T], *args: Any) -> tuple[T, float]:
    start = time.monotonic()
    return work(*args), time.monotonic() - start
