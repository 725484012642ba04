"""One test per item: the container's value and the VM's, each against what the spec and the
lock expect, and against each other where the item is shared."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import gpu_present

from imagebuild.verify.model import ABSENT, Item


def value(facts: dict[str, Any], item: Item) -> str:
    """The artifact's value for `item`; where its kind could not be read (a script of ours
    failed there, e.g. on a broken Python), why."""
    why = facts.get("unread", {}).get(item.kind)
    if why is not None:
        return f"not read: {why}"
    return str(facts.get(item.kind, {}).get(item.key, ABSENT))


def test_item(item: Item, facts: dict[str, Any], row: dict[str, Any]) -> None:
    c, v = value(facts["container"], item), value(facts["vm"], item)
    row.update(id=item.id, container=c, vm=v, same=c == v, shared=item.shared)
    if item.runtime_gpu:
        present, why = gpu_present()
        if not present:
            pytest.skip(why)
        blind = [
            a
            for a in ("container", "vm")
            if facts[a].get("gpu-device", {}).get("/dev/nvidiactl") != "present"
        ]
        if blind:
            pytest.skip(
                f"the host has a GPU, but verify's {' and '.join(blind)} cannot see it "
                "(container run without --gpus, VM without PCI passthrough)"
            )
    problems = []
    if item.container is not None and c != item.container:
        problems.append(f"container has {c!r}, expected {item.container!r}")
    if item.vm is not None and v != item.vm:
        problems.append(f"vm has {v!r}, expected {item.vm!r}")
    if item.shared and c != v:
        problems.append(f"container {c!r} != vm {v!r}")
    assert not problems, f"{item.id}: " + "; ".join(problems)
