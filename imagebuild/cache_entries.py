"""What a container stage's or a VM base disk's cache entry must be, read as untrusted input.

An entry comes from the registry cache (another machine, or whoever can push there) or from the
local cache (an older imagebuild, a hand edit). Before a build uses one, pulled or local, it is
checked here: exactly its kind's files, each under its kind's size bound; every JSON file valid
against its schema (jsonschema: a missing field or a wrong type is a named refusal, never a
KeyError or AttributeError later); what its JSON says about its own files equal to what the
files are (a layer's diff_id and size, a disk's sha256); and what it says about its place in the
build (its key, the layers below it) equal to what this build asks for. What no check can tell
without building the entry, that its bytes are what its key's inputs make, stays the word of
whoever wrote it (README: Hostile input and faults).
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from imagebuild.cache import Cache

# Part of every stage key (so of every base disk's too): bump when an entry's files or their
# JSON change, so that entries of another format are never looked up, here or in a registry.
ENTRY_FORMAT = "2"

# What makes an entry usable beyond its files' digests: (folder, file -> sha256) -> a problem.
Consistency = Callable[[Path, dict[str, str]], "str | None"]


class Refused(Exception):
    """An entry that is not what its kind and this build need; the message says why."""


def string(pattern: str, description: str) -> dict[str, Any]:
    """A string that is `pattern` in full (jsonschema matches with re.search, in which `$` also
    matches before a final newline); `description` names it in a refusal."""
    return {"type": "string", "pattern": rf"\A(?:{pattern})\Z", "description": description}


def _record(**fields: Any) -> dict[str, Any]:
    """A JSON object with exactly these fields."""
    return {
        "type": "object",
        "properties": fields,
        "required": sorted(fields),
        "additionalProperties": False,
    }


SHA256 = string("[0-9a-f]{64}", "a sha256 (64 lowercase hex digits)")
COUNT = {"type": "integer", "minimum": 0}
DIFF_IDS = {"type": "array", "items": SHA256, "maxItems": 16}
LAYER_JSON = _record(key=SHA256, below=DIFF_IDS, diff_id=SHA256, size=COUNT, entries=COUNT)
DISK_JSON = _record(
    key=SHA256,
    layers=DIFF_IDS,
    sha256=SHA256,
    kernel=string(r"[0-9][0-9A-Za-z.+~_-]{0,99}", "a kernel release as in /boot/vmlinuz-*"),
    root_uuid=string("[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}", "a lowercase UUID"),
)
# A stage's file list (builders.layers.Manifest), the next stage's `below`: a clean relative
# path (it becomes a whiteout's name in that layer) -> [type, mode, uid, gid, size, mtime, link].
# Checked by hand, not by jsonschema: a list holds every path of the image (30k for the
# example), and jsonschema took 1.2 s for it on every build that made or reused a stage.
# Any name a filesystem can hold (a tab or a CR in an app file's name is legal), but no NUL, no
# empty, `.` or `..` part and not absolute: it becomes a whiteout's name in the next layer.
_PATH = re.compile(r"[^/\x00]+(?:/[^/\x00]+)*")
_DOTS = re.compile(r"(?:\A|/)\.\.?(?:/|\Z)")
_TYPES = frozenset(t.decode() for t in tarfile.SUPPORTED_TYPES)


def file_list_problem(doc: Any) -> str | None:
    """Where and how `doc` is not a stage's file list, or None."""
    if not isinstance(doc, dict):
        return f"{doc!r:.40} is not of type 'object'"
    for path, row in doc.items():
        if not _PATH.fullmatch(path) or _DOTS.search(path):
            return f"{path!r} is not a relative path without NUL, empty, `.` or `..` parts"
        if not (
            isinstance(row, list)
            and len(row) == 7
            and isinstance(row[6], str)
            and all(type(n) is int for n in row[1:6])
            and min(row[2:5]) >= 0
        ):
            return f"$[{path!r}]: {row!r:.80} is not [type, mode, uid, gid, size, mtime, link]"
        if not isinstance(row[0], str) or row[0] not in _TYPES:
            return f"$[{path!r}][0]: {row[0]!r:.20} is not one of {sorted(_TYPES)}"
        if not 0 <= row[1] <= 0o7777:
            bound = "greater than the maximum of 4095" if row[1] > 0 else "less than 0"
            return f"$[{path!r}][1]: {row[1]} is {bound}"
    return None


def schema_problem(doc: Any, schema: dict[str, Any]) -> str | None:
    """The most relevant way `doc` breaks `schema` (where, what), or None."""
    import jsonschema  # here: a build that validates nothing does not pay for its import

    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(doc)
    )
    if error is None:
        return None
    where = "" if error.json_path == "$" else f"{error.json_path}: "
    if isinstance(error.schema, dict) and "description" in error.schema:
        what = f"{error.instance!r} is not {error.schema['description']}"
    else:
        what = error.message
    return where + (what if len(what) <= 200 else what[:200] + "...")


def _short(value: Any) -> str:
    """A sha256 or a list of them as a reader compares them: 12 hex digits each."""
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    if isinstance(value, str) and len(value) == 64:
        return value[:12]
    return repr(value)


@dataclass(frozen=True)
class EntryKind:
    name: str  # its folder in the cache, and its tags' prefix in a registry
    caps: Mapping[str, int]  # exactly these files, each of at most this many bytes
    meta: str  # the JSON file that describes the entry
    # every JSON file -> its schema, or a function naming its problem
    schemas: Mapping[str, dict[str, Any] | Callable[[Any], str | None]]
    # meta's fields that state a fact about the files -> that fact, read from the files
    facts: Mapping[str, Callable[[Path, Mapping[str, str]], object]]

    def capped(self, name: str, most: int) -> EntryKind:
        """This kind with `name` bounded by what this build can need (e.g. the spec's disk)."""
        return replace(self, caps={**self.caps, name: most})

    def names_problem(self, names: list[str]) -> str | None:
        if sorted(names) != sorted(self.caps):
            return f"holds {sorted(names)}, a {self.name} entry holds {sorted(self.caps)}"
        return None

    def read(
        self,
        folder: Path,
        digests: Mapping[str, str],
        expect: Mapping[str, object],
        memo: MutableMapping[str, list[Any]] | None = None,
    ) -> dict[str, Any]:
        """The entry's `meta` JSON once every check passed (raises Refused): its files
        (`digests`: name -> sha256, already checked against the bytes), each file's size, each
        JSON file's schema, the facts, and `expect`: fields this build requires as they are.
        `memo`: the cache's `verified` memo, where a JSON file's sha256 that passed its schema
        is remembered (a 30k-path file list takes a second to validate; its bytes are proven by
        the digest)."""
        if problem := self.names_problem(list(digests)):
            raise Refused(problem)
        for name, most in self.caps.items():
            if (size := (folder / name).stat().st_size) > most:
                raise Refused(f"its {name} is {size} bytes, more than a {self.name} entry's {most}")
        meta: dict[str, Any] = {}
        for name, schema in self.schemas.items():
            mkey = f"schema:{self.name}/{name}:{digests[name]}"
            passed = memo is not None and memo.get(mkey) == [ENTRY_FORMAT]
            if passed and name != self.meta:
                continue  # these bytes passed before (meta is always read: its fields are used)
            try:
                doc = json.loads((folder / name).read_bytes())
            except (ValueError, RecursionError) as e:  # RecursionError: nested past Python's stack
                raise Refused(f"its {name} is not JSON ({type(e).__name__}: {e})") from None
            if not passed:
                problem = schema(doc) if callable(schema) else schema_problem(doc, schema)
                if problem:
                    raise Refused(f"its {name}: {problem}")
                if memo is not None:
                    memo[mkey] = [ENTRY_FORMAT]
            if name == self.meta:
                meta = doc
        for field, fact in self.facts.items():
            if meta[field] != (want := fact(folder, digests)):
                raise Refused(
                    f"its {self.meta} names {field} {_short(meta[field])}, its files "
                    f"say {_short(want)}"
                )
        for field, want in expect.items():
            if meta[field] != want:
                raise Refused(
                    f"its {self.meta} names {field} {_short(meta[field])}, this build's "
                    f"is {_short(want)}"
                )
        return meta

    def rule(
        self,
        cache: Cache,
        expect: Mapping[str, object],
        more: Callable[[dict[str, Any]], str | None] = lambda meta: None,
    ) -> Consistency:
        """`read` as a cache or registry rule, with `more`: what else the build checks in the
        entry's meta (a disk's kernel against the lock)."""

        def problem(folder: Path, digests: dict[str, str]) -> str | None:
            try:
                with cache.verified() as memo:
                    meta = self.read(folder, digests, expect, memo)
            except Refused as e:
                return str(e)
            return more(meta)

        return problem


def _size(name: str) -> Callable[[Path, Mapping[str, str]], object]:
    return lambda folder, digests: (folder / name).stat().st_size


def _digest(name: str) -> Callable[[Path, Mapping[str, str]], object]:
    return lambda folder, digests: digests[name]


KIB, GIB = 1 << 10, 1 << 30
# A stage: its layer (the pytorch stack's is 5.6 GB), its description, and the file list of the
# whole filesystem up to it (~100 bytes a path: 64 MiB is 600k paths).
STAGE = EntryKind(
    "stages",
    {"layer.tar": 64 * GIB, "layer.json": 64 * KIB, "manifest.json": 64 * (1 << 20)},
    "layer.json",
    {"layer.json": LAYER_JSON, "manifest.json": file_list_problem},
    {"diff_id": _digest("layer.tar"), "size": _size("layer.tar")},
)
# A base disk: its qcow2 (bounded by the spec's vm.disk_gb, see builders.disk), its description.
DISK = EntryKind(
    "disks",
    {"disk.qcow2": 2048 * GIB, "disk.json": 64 * KIB},
    "disk.json",
    {"disk.json": DISK_JSON},
    {"sha256": _digest("disk.qcow2")},
)
