"""The one way a cache entry is obtained: from the local cache when it is there and still what
was sealed (`Cache.intact`: the folder exists only once complete, renamed into place), else
pulled from the registry cache, else built into a folder that becomes the entry only if it is a
valid one; then published. The container's stages and the VM's base disk both go this way."""

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
    remote: RegistryCache,
    kind: EntryKind,
    key: str,
    rule: Consistency,
    label: str,
    build: Callable[[Path, dict[str, str]], None],
) -> Origin:
    """Have the entry `kind/key` (valid by `rule`) in the local cache, and say where it came
    from. `build(tmp, known)` makes it in `tmp`, putting in `known` the digests it already
    computed (by file name; the rest are hashed when sealed)."""
    origin: Origin
    if cache.intact(kind.name, key, rule=rule):
        origin = "cached"
        progress.say(f"{label}: cached ({key[:12]})")
    elif remote.fetch(cache, kind, key, rule):
        origin = "pulled"
        progress.say(f"{label}: from {remote.pull_from} ({key[:12]})")
    else:
        known: dict[str, str] = {}
        with cache.building(kind.name, key, known) as tmp:
            build(tmp, known)
            for f in sorted(tmp.rglob("*")):  # what the seal will hold, and the rule reads
                if f.is_file() and (rel := str(f.relative_to(tmp))) not in known:
                    known[rel] = sha256_file(f)  # the layer/disk itself: hashed while written
            # Sealed only if a later build will take it: else it would be made at every build.
            if problem := rule(tmp, known):
                raise ImageBuildError(
                    f"{label}: the entry {kind.name}/{key[:12]} just made is not a valid one: "
                    f"{problem}"
                )
        origin = "built"
    remote.publish(cache, kind, key)
    return origin


def told(pulled: bool, reused: bool, built: str) -> str:
    """Where an entry came from, as a task's result lines say it (`built`: how it was made)."""
    return "from the registry cache" if pulled else "cached" if reused else built
