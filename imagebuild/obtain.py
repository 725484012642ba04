"""The one way a cache entry is obtained: from the local cache when it is there and still what
was sealed (`Cache.intact`: the folder exists only once complete, renamed into place), else
pulled from the registry cache, else built into a folder that becomes the entry only if it is a
valid one; then published. Every entry goes this way: the container's stages and the VM's base
disk (shared through the registry cache), the apt repos, the wheelhouse and the sources disk
(this machine's only: made from the lock's blobs, never pulled nor published)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from imagebuild import progress
from imagebuild.cache import Cache, sha256_file
from imagebuild.cache_entries import Consistency, EntryKind
from imagebuild.errors import ImageBuildError
from imagebuild.registry_cache import RegistryCache

Origin = Literal["cached", "pulled", "built"]


def obtain(
    cache: Cache,
    kind: EntryKind | str,
    key: str,
    build: Callable[[Path, dict[str, str]], None],
    *,
    label: str | None = None,
    rule: Consistency | None = None,
    expect: dict[str, str] | None = None,
    remote: RegistryCache | None = None,
) -> Origin:
    """Have the entry `kind/key` in the local cache, and say where it came from (`label`: the
    progress line's; None says nothing). `kind`: a registry-shared EntryKind, or the folder
    name of a local-only one. Valid means sealed and, where given, as `rule` requires and with
    the sealed hashes `expect` names (what the lock says). `build(tmp, known)` makes it in
    `tmp`, putting in `known` the digests it already computed (by file name; the rest are
    hashed when sealed)."""
    shared = kind if isinstance(kind, EntryKind) else None
    name = shared.name if shared else str(kind)
    remote = remote if shared and remote else RegistryCache(None, None)
    origin: Origin
    if cache.intact(name, key, expect, rule):
        origin = "cached"
        if label:
            progress.say(f"{label}: cached ({key[:12]})")
    elif shared and rule and remote.fetch(cache, shared, key, rule):  # pulled: checked
        origin = "pulled"
        if label:
            progress.say(f"{label}: from {remote.pull_from} ({key[:12]})")
    else:
        known: dict[str, str] = {}
        with cache.building(name, key, known) as tmp:
            build(tmp, known)
            for f in sorted(tmp.rglob("*")):  # what the seal will hold, and the rule reads
                if f.is_file() and (rel := str(f.relative_to(tmp))) not in known:
                    known[rel] = sha256_file(f)  # the layer/disk itself: hashed while written
            # Sealed only if a later build will take it: else it would be made at every build.
            bad = [
                f"{rel} is not the lock's"
                for rel, sha in (expect or {}).items()
                if known.get(rel) != sha
            ]
            if problem := "; ".join(bad) or (rule(tmp, known) if rule else None):
                raise ImageBuildError(
                    f"{label or name}: the entry {name}/{key[:12]} just made is not a valid "
                    f"one: {problem}"
                )
        origin = "built"
    if shared:
        remote.publish(cache, shared, key)
    return origin


def told(pulled: bool, reused: bool, built: str) -> str:
    """Where an entry came from, as a task's result lines say it (`built`: how it was made)."""
    return "from the registry cache" if pulled else "cached" if reused else built
