"""verify's model: one Item per row of the parity table, and the two special expectations.
Apart from items.py so that the modules adding rows (gpu, service, filebytes) import it without
importing the list that gathers them."""

from __future__ import annotations

from dataclasses import dataclass

ABSENT = "absent"
ANY = None  # no fixed expectation: the two artifacts must only agree

# Row keys written by both sides: items.py (what is expected) and facts.py (what is read).
UNLOCKED_DEBS = "installed but not in the lock"
VENV_TOOLING = "venv tooling (pip, setuptools)"
ARGV = "ENTRYPOINT+CMD / wrapper"
WRAPPER_SHA = "wrapper sha256"
STARTED_BY = "what starts it"
RUNTIME_USER = "runtime user"
RUNS_AS_ROOT = "runs as root"
SETUID_ROW = "setuid/setgid files no package owns"


@dataclass(frozen=True)
class Item:
    kind: str  # the facts section it reads (deb, python, import, lib, ...)
    key: str
    container: str | None  # expected value in the container (ANY = only agree with the VM)
    vm: str | None
    shared: bool = True  # must the two values be equal?
    runtime_gpu: bool = False  # needs a GPU at run time: skipped (with the reason) without one

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.key}"
