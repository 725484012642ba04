"""The build cache shared through an OCI registry (`--cache-from` / `--cache-to`, spec `cache:`),
as BuildKit's `type=registry` cache and KIWI's stash share theirs.

Every sealed cache entry (a container stage: layer.tar + layer.json + manifest.json; a VM base
disk: disk.qcow2 + disk.json) is one OCI artifact in the cache repository, tagged
`<kind>-<key>`: its files are the artifact's layers, each named by its title annotation, so the
artifact's digests are the entry's seal. A build missing an entry locally looks it up there and
pulls it instead of building it. Its entries are untrusted input: the artifact's manifest is
checked against a schema and its file names against the kind's before anything is downloaded,
each blob is read no further than the size the manifest announces, every file is checked against
its digest and the entry against its kind's rule (imagebuild.cache_entries) before it is sealed
into the local cache; anything wrong is said in one line and the entry is built here. After a
stage is built or found, it is pushed unless the registry has its tag; a tag holding other files
than the local entry is said, and left as it is. A registry that cannot be reached or refuses is
said once and the build goes on locally, unless `--cache-required`.

Client: oras-py (the ORAS project's Python client: OCI manifests, blob upload and download,
credentials from `docker login`'s config), not hand-written registry HTTP. Plain HTTP only for a
registry on the loopback interface, as Docker treats one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

if TYPE_CHECKING:
    from oras.provider import Registry

from imagebuild import progress
from imagebuild.cache import Cache
from imagebuild.cache_entries import COUNT, Consistency, EntryKind, Refused, schema_problem, string
from imagebuild.errors import ImageBuildError, OptionError
from imagebuild.spec import option_problem
from imagebuild.spec_checks import REGISTRY_REPO
from imagebuild.spec_sections import BuildCache

ARTIFACT_TYPE = "application/vnd.imagebuild.cache.v1"
TITLE = "org.opencontainers.image.title"  # the OCI annotation naming a layer's file (oras-py's too)
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
TIMEOUT = (10, 120)  # seconds to connect, and between two reads of a body
CHUNK = 1 << 20
# oras-py logs each registry error itself; imagebuild says what it means for the build, once.
logging.getLogger("oras.logger").setLevel(logging.CRITICAL)

# What imagebuild reads of an artifact's manifest (OCI image manifest, as oras-py pushes it):
# each layer's digest, its size (the most bytes read of it) and its file name.
OCI_MANIFEST = {
    "type": "object",
    "required": ["layers"],
    "properties": {
        "layers": {
            "type": "array",
            "maxItems": 16,
            "items": {
                "type": "object",
                "required": ["digest", "size", "annotations"],
                "properties": {
                    "digest": string("sha256:[0-9a-f]{64}", "sha256: and 64 lowercase hex digits"),
                    "size": COUNT,
                    "annotations": {
                        "type": "object",
                        "required": [TITLE],
                        "properties": {TITLE: {"type": "string"}},
                    },
                },
            },
        }
    },
}


class CacheUnavailable(ImageBuildError):
    """--cache-required and the registry could not serve or take an entry."""


def ref_problem(ref: str) -> str | None:
    if re.fullmatch(REGISTRY_REPO, ref):  # HOST[:PORT]/REPOSITORY, no tag: tags are keys
        return None
    return f"{ref!r} is not a registry repository like 127.0.0.1:5000/imagebuild-cache"


@functools.cache
def _registry_class() -> type[Registry]:
    """oras-py's client without its retry loop (five tries, ~2 min of sleeps per request) and
    with timeouts (requests has none by default): a registry that is down or hangs must cost a
    build seconds, not minutes; it is then skipped. Made on first use: a build without a
    registry cache does not import oras (the no-op build's start-up)."""
    import oras.provider

    class _Registry(oras.provider.Registry):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.session.request = functools.partial(self.session.request, timeout=TIMEOUT)

        def do_request(self, *args: Any, **kwargs: Any) -> Any:
            return oras.provider.Registry.do_request.__wrapped__(self, *args, **kwargs)

    return _Registry


def registry_client(ref: str) -> Registry:
    """A client for the registry of `ref` (HOST[:PORT]/...); plain HTTP on loopback only."""
    host = ref.split("/", 1)[0]
    return _registry_class()(hostname=host, insecure=host.split(":")[0] in LOOPBACK)


PUSH_MODES = ("auto", "never")  # --cache-push


@dataclass
class RegistryCache:
    pull_from: str | None  # HOST[:PORT]/REPO read before building an entry
    push_to: str | None  # HOST[:PORT]/REPO written after an entry is built or found
    required: bool = False
    _down: set[str] = field(default_factory=set)  # repositories found unusable in this build
    pulled: list[str] = field(default_factory=list)  # `kind/key` pulled, for the summary
    pushed: list[str] = field(default_factory=list)

    @classmethod
    def chosen(
        cls,
        section: BuildCache,
        pull: str | None,
        push: str | None,
        required: bool,
        push_mode: str,
    ) -> RegistryCache:
        """The registry cache a build's options ask for, the spec's `cache:` section as their
        default; `--cache-push never` overrides both (CI gives untrusted jobs read-only
        credentials, and this makes their spec unable to ask for a push). OptionError (exit 2)
        names a wrong option, a repository by the check of spec field cache.registry."""
        OptionError.check(
            push_mode not in PUSH_MODES
            and f"--cache-push: {push_mode!r} is not one of {', '.join(PUSH_MODES)}"
        )
        pull = pull or section.registry
        push = (
            None if push_mode == "never" else push or (section.registry if section.push else None)
        )
        OptionError.check(
            *(
                option_problem(option, "cache.registry", ref)
                for option, ref in (("--cache-from", pull), ("--cache-to", push))
                if ref
            )
        )
        return cls(pull, push, required or section.required)

    def describe(self) -> str:
        parts = [
            f"from {self.pull_from}" if self.pull_from else "",
            f"to {self.push_to}" if self.push_to else "",
        ]
        return "registry cache " + ", ".join(p for p in parts if p)

    def _unavailable(self, ref: str, what: str, e: Exception) -> None:
        message = f"registry cache {ref}: {what}: {_reason(e)}"
        if self.required:
            raise CacheUnavailable(message + " (--cache-required)") from None
        if ref not in self._down:
            progress.say(f"{message}; building locally without it")
        self._down.add(ref)

    def _manifest(self, client: Registry, target: str) -> Any | None:
        """The manifest tagged `target` (any JSON: checked by its reader), or None where the
        registry has no such tag."""
        try:
            return client.get_manifest(target)
        except requests.JSONDecodeError:  # before ValueError and RequestException: it is both
            raise Refused("its manifest is not JSON") from None
        except RecursionError:  # JSON nested past Python's stack
            raise Refused("its manifest is nested too deep to be one") from None
        except ValueError as e:  # oras-py's "not found" (and other 4xx) answers
            if "404" in str(e) or "not found" in str(e).lower() or "MANIFEST_UNKNOWN" in str(e):
                return None
            raise

    def fetch(self, cache: Cache, kind: EntryKind, key: str, consistent: Consistency) -> bool:
        """Pull `kind/key` into the local cache if the registry has it and it passes
        `consistent`; whether the local cache now has it."""
        ref = self.pull_from
        if not ref or ref in self._down:
            return False
        target = f"{ref}:{kind.name}-{key}"
        client = registry_client(ref)
        try:
            manifest = self._manifest(client, target)
            if manifest is None:
                return False
            try:
                files = entry_files(manifest, kind)  # names and sizes, before any download
            except (TypeError, KeyError, AttributeError, RecursionError) as e:
                raise Refused(f"its manifest is not an entry's ({type(e).__name__})") from None
            digests = {name: digest for name, (digest, _) in files.items()}
            with cache.building(kind.name, key, digests) as tmp:
                for name, (digest, size) in files.items():
                    _download(client, target, name, digest, size, tmp / name)
                if problem := consistent(tmp, digests):
                    raise Refused(problem)
        except Refused as e:
            progress.say(f"registry cache: {target} refused: {e}; building it here")
            return False
        except (requests.RequestException, OSError, ValueError) as e:
            self._unavailable(ref, f"pulling {kind.name}-{key[:12]}", e)
            return False
        self.pulled.append(f"{kind.name}/{key}")
        return True

    def publish(self, cache: Cache, kind: EntryKind, key: str) -> None:
        """Push the local entry `kind/key` unless the registry has its tag; a tag that holds
        other files is said (with --cache-required, an error) and left as it is."""
        ref = self.push_to
        if not ref or ref in self._down:
            return
        target = f"{ref}:{kind.name}-{key}"
        sealed = cache.seal(kind.name, key)  # checked by the build that just used the entry
        client = registry_client(ref)
        try:
            there = self._manifest(client, target)
            if there is None:
                self._push(client, ref, kind.name, key, cache.dir(kind.name, key), sorted(sealed))
                return
            problem = _differs(there, kind, sealed)
        except Refused as e:
            problem = f"is no {kind.name} entry ({e})"
        except (requests.RequestException, OSError, ValueError) as e:
            self._unavailable(ref, f"looking up or pushing {kind.name}-{key[:12]}", e)
            return
        if problem:  # else already there: pushing the same key again would change nothing
            message = f"registry cache: {target} {problem}; the registry keeps it, unchanged"
            if self.required:
                raise CacheUnavailable(message + " (--cache-required)")
            progress.say(message)

    def _push(
        self, client: Registry, ref: str, kind: str, key: str, folder: Path, names: list[str]
    ) -> None:
        """Push the files `names` of `folder` as the artifact `kind-key`."""
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "config.json"
            config.write_text(json.dumps({"kind": kind, "key": key}, sort_keys=True))
            with progress.stage(f"registry cache: push {kind}-{key[:12]}", ref):
                client.push(
                    f"{ref}:{kind}-{key}",
                    files=[str(folder / name) for name in names],
                    disable_path_validation=True,
                    manifest_config=f"{config}:{ARTIFACT_TYPE}.config+json",
                    do_chunked=True,
                    quiet=True,
                )
        self.pushed.append(f"{kind}/{key}")


def entry_files(manifest: Any, kind: EntryKind) -> dict[str, tuple[str, int]]:
    """name -> (sha256, size) of an entry's files, from its artifact's manifest: refused unless
    the manifest has the schema's shape, names exactly the kind's files and announces sizes
    within the kind's bounds."""
    if problem := schema_problem(manifest, OCI_MANIFEST):
        raise Refused(f"its manifest: {problem}")
    out: dict[str, tuple[str, int]] = {}
    names = [layer["annotations"][TITLE] for layer in manifest["layers"]]
    if problem := kind.names_problem(names):
        raise Refused(f"its manifest {problem}")
    for name, layer in zip(names, manifest["layers"], strict=True):
        if layer["size"] > kind.caps[name]:
            raise Refused(
                f"its manifest announces {name} of {layer['size']} bytes, more than a "
                f"{kind.name} entry's {kind.caps[name]}"
            )
        out[name] = (layer["digest"].removeprefix("sha256:"), layer["size"])
    return out


def _download(client: Registry, target: str, name: str, digest: str, size: int, dest: Path) -> None:
    """The blob `digest` into `dest`, hashed as it comes; refused (and read no further) past
    the `size` bytes its manifest announced, or when it is shorter or other bytes."""
    h, got = hashlib.sha256(), 0
    with client.get_blob(target, f"sha256:{digest}", stream=True) as r, dest.open("wb") as f:
        r.raise_for_status()
        for chunk in r.iter_content(CHUNK):
            got += len(chunk)
            if got > size:
                raise Refused(f"its {name} is larger than the {size} bytes its manifest announces")
            f.write(chunk)
            h.update(chunk)
    if got != size:
        raise Refused(f"its {name} is {got} bytes, its manifest announces {size}")
    if h.hexdigest() != digest:
        raise Refused(f"its {name} is sha256:{h.hexdigest()[:12]}, its digest says {digest[:12]}")


def _differs(manifest: Any, kind: EntryKind, sealed: dict[str, str]) -> str | None:
    """How the registry's entry differs from the local one (file names and sha256), or None."""
    there = {name: digest for name, (digest, _) in entry_files(manifest, kind).items()}
    if there == sealed:
        return None
    names = sorted(n for n in there.keys() | sealed.keys() if there.get(n) != sealed.get(n))
    return "holds other files than this build's entry: " + ", ".join(
        f"{n} sha256:{(there.get(n) or '-')[:12]} there, {(sealed.get(n) or '-')[:12]} here"
        for n in names
    )


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:300]
