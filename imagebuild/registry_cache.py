"""The build cache shared through an OCI registry (`--cache-from` / `--cache-to`, spec `cache:`),
as BuildKit's `type=registry` cache and KIWI's stash share theirs.

Every sealed cache entry (a container stage: layer.tar + layer.json + manifest.json; a VM base
disk: disk.qcow2 + disk.json) is one OCI artifact in the cache repository, tagged
`<kind>-<key>`: its files are the artifact's layers, each named by its title annotation, so the
artifact's digests are the entry's seal. A build missing an entry locally looks it up there and
pulls it instead of building it; every file is checked against its digest (and the entry against
its own consistency rule) before it is sealed into the local cache, exactly as local entries are.
After a stage is built or found, it is pushed unless the registry has it (a second push of a key
is a no-op). A registry that cannot be reached or refuses is said once and the build goes on
locally, unless `--cache-required`.

Client: oras-py (the ORAS project's Python client: OCI manifests, blob upload and download,
credentials from `docker login`'s config), not hand-written registry HTTP. Plain HTTP only for a
registry on the loopback interface, as Docker treats one.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import oras.defaults
import oras.provider
import requests

from imagebuild import progress
from imagebuild.cache import Cache, sha256_file
from imagebuild.errors import ImageBuildError
from imagebuild.spec_checks import REGISTRY_REPO

ARTIFACT_TYPE = "application/vnd.imagebuild.cache.v1"
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # an entry's files: flat, plain names
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
TIMEOUT = (10, 120)  # seconds to connect, and between two reads of a body
# oras-py logs each registry error itself; imagebuild says what it means for the build, once.
logging.getLogger("oras.logger").setLevel(logging.CRITICAL)

# What makes a pulled entry usable beyond its digests, by kind: (folder, file -> sha256) -> a
# problem or None.
Consistency = Callable[[Path, dict[str, str]], "str | None"]


def sealed_by(meta: str, field: str, data: str, others: tuple[str, ...] = ()) -> Consistency:
    """The rule of an entry whose `meta` JSON names the digest of its `data` file in `field`
    (a stage's layer.json its layer.tar's diff_id, a disk's disk.json its qcow2's sha256): it
    holds exactly those files (and `others`) and the name is right."""
    names = sorted({meta, data, *others})

    def problem(folder: Path, digests: dict[str, str]) -> str | None:
        if sorted(digests) != names:
            return f"holds {sorted(digests)}, not {names}"
        try:
            value = json.loads((folder / meta).read_text()).get(field)
        except (ValueError, AttributeError):
            return f"its {meta} is not a JSON object"
        if value != digests[data]:
            return f"its {meta} names another {field} than its {data}'s digest"
        return None

    return problem


class CacheUnavailable(ImageBuildError):
    """--cache-required and the registry could not serve or take an entry."""


def ref_problem(ref: str) -> str | None:
    if re.fullmatch(REGISTRY_REPO, ref):  # HOST[:PORT]/REPOSITORY, no tag: tags are keys
        return None
    return f"{ref!r} is not a registry repository like 127.0.0.1:5000/imagebuild-cache"


class _Registry(oras.provider.Registry):
    """oras-py's client without its retry loop (five tries, ~2 min of sleeps per request) and
    with timeouts (requests has none by default): a registry that is down or hangs must cost a
    build seconds, not minutes; it is then skipped."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.session.request = functools.partial(self.session.request, timeout=TIMEOUT)

    def do_request(self, *args: Any, **kwargs: Any) -> Any:
        return oras.provider.Registry.do_request.__wrapped__(self, *args, **kwargs)


@dataclass
class RegistryCache:
    pull_from: str | None  # HOST[:PORT]/REPO read before building an entry
    push_to: str | None  # HOST[:PORT]/REPO written after an entry is built or found
    required: bool = False
    _down: set[str] = field(default_factory=set)  # repositories found unusable in this build
    pulled: list[str] = field(default_factory=list)  # `kind/key` pulled, for the summary
    pushed: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = [f"from {self.pull_from}" if self.pull_from else "",
                 f"to {self.push_to}" if self.push_to else ""]  # fmt: skip
        return "registry cache " + ", ".join(p for p in parts if p)

    def _client(self, ref: str) -> _Registry:
        host = ref.split("/", 1)[0]
        return _Registry(hostname=host, insecure=host.split(":")[0] in LOOPBACK)

    def _unavailable(self, ref: str, what: str, e: Exception) -> None:
        message = f"registry cache {ref}: {what}: {_reason(e)}"
        if self.required:
            raise CacheUnavailable(message + " (--cache-required)") from None
        if ref not in self._down:
            progress.say(f"{message}; building locally without it")
        self._down.add(ref)

    def fetch(self, cache: Cache, kind: str, key: str, consistent: Consistency) -> bool:
        """Pull `kind/key` into the local cache if the registry has it; whether it now does."""
        ref = self.pull_from
        if not ref or ref in self._down:
            return False
        target = f"{ref}:{kind}-{key}"
        client = self._client(ref)
        try:
            manifest = client.get_manifest(target)
        except ValueError as e:  # oras-py's "not found" (and other 4xx) answers
            if "404" in str(e) or "not found" in str(e).lower() or "MANIFEST_UNKNOWN" in str(e):
                return False
            self._unavailable(ref, f"reading {kind}-{key[:12]}", e)
            return False
        except (requests.RequestException, OSError) as e:
            self._unavailable(ref, f"reading {kind}-{key[:12]}", e)
            return False
        try:
            files = entry_files(manifest)
            with cache.building(kind, key, files) as tmp:
                for name, digest in files.items():
                    client.download_blob(target, f"sha256:{digest}", str(tmp / name))
                    if (got := sha256_file(tmp / name)) != digest:
                        raise Refused(f"{name} is sha256:{got[:12]}, its digest says {digest[:12]}")
                if problem := consistent(tmp, files):
                    raise Refused(problem)
        except Refused as e:
            progress.say(f"registry cache {ref}: {kind}-{key[:12]} refused ({e}); building it here")
            return False
        except (requests.RequestException, OSError, ValueError) as e:
            self._unavailable(ref, f"pulling {kind}-{key[:12]}", e)
            return False
        self.pulled.append(f"{kind}/{key}")
        return True

    def publish(self, cache: Cache, kind: str, key: str) -> None:
        """Push the local entry `kind/key` unless the registry already has it."""
        ref = self.push_to
        if not ref or ref in self._down:
            return
        target, folder = f"{ref}:{kind}-{key}", cache.dir(kind, key)
        client = self._client(ref)
        try:
            client.get_manifest(target)
            return  # already there: pushing the same key again would change nothing
        except ValueError:
            pass
        except (requests.RequestException, OSError) as e:
            self._unavailable(ref, f"looking up {kind}-{key[:12]}", e)
            return
        files = sorted(p for p in folder.iterdir() if p.is_file() and FILE_NAME.fullmatch(p.name))
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "config.json"
            config.write_text(json.dumps({"kind": kind, "key": key}, sort_keys=True))
            try:
                with progress.stage(f"registry cache: push {kind}-{key[:12]}", ref):
                    client.push(
                        target, files=[str(p) for p in files], disable_path_validation=True,
                        manifest_config=f"{config}:{ARTIFACT_TYPE}.config+json",
                        do_chunked=True, quiet=True,
                    )  # fmt: skip
            except (requests.RequestException, OSError, ValueError) as e:
                self._unavailable(ref, f"pushing {kind}-{key[:12]}", e)
                return
        self.pushed.append(f"{kind}/{key}")


class Refused(Exception):
    pass


def entry_files(manifest: dict) -> dict[str, str]:
    """name -> sha256 of an entry's files, from an artifact's manifest; a name that is not a
    plain file name (a path, `..`) or a digest that is not sha256 refuses the artifact."""
    out: dict[str, str] = {}
    for layer in manifest.get("layers", []):
        name = (layer.get("annotations") or {}).get(oras.defaults.annotation_title, "")
        digest = str(layer.get("digest", ""))
        if not FILE_NAME.fullmatch(name) or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise Refused(f"its manifest names {name!r} at {digest!r}")
        out[name] = digest.removeprefix("sha256:")
    return out


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:300]
