"""The inputs of one build, resolved once by the task layer and passed down typed: the spec's
meaning with its lock and roles applied, every cache key, the cache, the registry cache shared
with other machines, the verified local sources (apt repos, wheelhouse) and the key that signs
the provenance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from imagebuild import keys as keying
from imagebuild.cache import Cache
from imagebuild.fetch import FetchResult
from imagebuild.lock.lockfile import Lock
from imagebuild.registry_cache import RegistryCache
from imagebuild.requested import Requested
from imagebuild.resolved import Resolved, resolve
from imagebuild.spec import Spec

if TYPE_CHECKING:
    from securesystemslib.signer import Signer


@dataclass(frozen=True)
class Inputs:
    resolved: Resolved
    keys: keying.Keys
    cache: Cache
    fetched: FetchResult
    remote: RegistryCache = field(default_factory=lambda: RegistryCache(None, None))
    signer: Signer | None = None  # the provenance's key (imagebuild.signing); None: unsigned

    @property
    def spec(self) -> Spec:
        return self.resolved.spec

    @property
    def lock(self) -> Lock:
        return self.resolved.lock


def prepare(
    req: Requested,
    lock: Lock,
    cache: Cache,
    fetched: FetchResult,
    remote: RegistryCache | None = None,
    signer: Signer | None = None,
) -> Inputs:
    r = resolve(req, lock)
    remote = remote or RegistryCache(None, None)
    return Inputs(r, keying.compute(r), cache, fetched, remote, signer)
