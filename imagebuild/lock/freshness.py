"""The freshness check: the spec's lock inputs now against those the lock recorded, each
difference named by its spec field (`packages: added 'curl'`), without touching the network."""

from __future__ import annotations

from typing import Any

from imagebuild.errors import StaleLockError
from imagebuild.lock.lockfile import Lock, inputs_digest, inputs_for, path_for, read
from imagebuild.requested import Requested


def _list_change(key: str, old: list[Any], new: list[Any]) -> list[str]:
    added = [x for x in new if x not in old]
    removed = [x for x in old if x not in new]
    parts = [f"added {', '.join(map(repr, added))}"] if added else []
    parts += [f"removed {', '.join(map(repr, removed))}"] if removed else []
    return (
        [f"{key}: {'; '.join(parts)}"]
        if parts
        else ([f"{key}: order changed"] if old != new else [])
    )


def differences(old: Any, new: Any, key: str = "") -> list[str]:
    """Human-readable differences between two `inputs` trees, naming the spec field."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            sub = f"{key}.{k}" if key else k
            if k not in old:
                out.append(f"{sub}: added")
            elif k not in new:
                out.append(f"{sub}: removed")
            else:
                out += differences(old[k], new[k], sub)
        return out
    if isinstance(old, list) and isinstance(new, list):
        return _list_change(key, old, new)
    return [] if old == new else [f"{key}: {old!r} -> {new!r}"]


def stale_reasons(req: Requested, lock: Lock) -> list[str]:
    now = inputs_for(req)
    reasons = differences(lock.inputs, now)
    if not reasons and lock.header.get("inputs_sha256") != inputs_digest(lock.inputs):
        reasons.append("the lock's inputs section was edited by hand (digest mismatch)")
    return reasons


def load_fresh(req: Requested) -> Lock:
    """The lock for this spec, or StaleLockError naming every difference (fail closed)."""
    lock = read(path_for(req.spec))
    reasons = stale_reasons(req, lock)
    if reasons:
        raise StaleLockError(
            f"{lock.path} is stale; the spec changed since `invoke lock`:\n  "
            + "\n  ".join(reasons)
            + "\nrun `invoke lock` to update it"
        )
    return lock
