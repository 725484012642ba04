"""verify's model: one Item per row of the parity table, and the two special expectations.
Apart from items.py so that the modules adding rows (gpu, service, filebytes) import it without
importing the list that gathers them."""

from __future__ import annotations

from dataclasses import dataclass

ABSENT = "absent"
ANY = None  # no fixed expectation: the two artifacts must only agree


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
