"""One progress line per stage, with elapsed seconds, on stderr (stdout stays machine-readable)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


def say(message: str) -> None:
    print(f"[imagebuild] {message}", file=sys.stderr, flush=True)


@contextmanager
def stage(name: str, detail: str = "") -> Iterator[dict[str, str]]:
    """Print `stage...` on entry, `stage: done in N.Ns (note)` on exit; the body may set a note."""
    info: dict[str, str] = {"note": ""}
    say(f"{name}: {detail}..." if detail else f"{name}...")
    start = time.monotonic()
    try:
        yield info
    except BaseException:
        say(f"{name}: FAILED after {time.monotonic() - start:.1f}s")
        raise
    note = f" ({info['note']})" if info["note"] else ""
    say(f"{name}: done in {time.monotonic() - start:.1f}s{note}")
