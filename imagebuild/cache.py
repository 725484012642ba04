"""The content-addressed cache: blobs by sha256, and the apt repos / wheelhouses made from them.

Layout under the cache root (default ~/.cache/imagebuild, or $IMAGEBUILD_CACHE, or --cache-dir):
  blobs/sha256/<hex>          every .deb and wheel, named by its content
  repos/<key>/                a flat apt repository (pool/*.deb hard links + Packages)
  wheelhouses/<key>/          wheels under their real names + requirements.txt with hashes
  apt/<key>/                  the private apt state used to resolve locks (mirror index cache)
  stages/<key>/, disks/<key>/ a container stage's layer; a base disk or sources disk
  verified.json               blob or entry file -> inode stat at its last good hash
Folders are made under a temporary name and renamed when complete, so a crash never leaves a
half-made repo that a later build would trust. Each such entry is sealed (`.seal.json`: the
sha256 of every file, written last) and checked against its seal whenever it is reused, so
a changed, added or removed file is found before it reaches an artifact (`Cache.intact`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagebuild import progress

# Read once at import, while single-threaded (os.umask can only be read by setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextmanager
def atomic_file(dest: Path) -> Iterator[Path]:
    """Write to a temp file beside `dest`, renamed only on success: nothing half-written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes 0600; an output is made like any other file (0644 under umask 022).
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def default_root() -> Path:
    env = os.environ.get("IMAGEBUILD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "imagebuild"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def stat_key(path: Path) -> list[int]:
    """What Cache.verified remembers of a file at its last good hash."""
    st = path.stat()
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


@contextmanager
def exclusive(path: Path, task: str, what: str) -> Iterator[None]:
    """One holder at a time of `what` (flock on the file `path`; the kernel releases it when
    its holder dies, even by kill -9). A second one waits, saying who holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = path.with_name(path.name + ".owner")
    # O_NOFOLLOW: a link planted where the lock goes must not make root write elsewhere.
    with os.fdopen(
        os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644), "a"
    ) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                who = owner.read_text().strip() or "another process"
            except OSError:
                who = "another process"
            progress.say(f"{task}: waiting for {who}, which is using {what}")
            fcntl.flock(f, fcntl.LOCK_EX)
        # Written beside and renamed over: a waiter reading it meanwhile sees the old holder or
        # the new one, never an empty file (seen once in CI: "waiting for , which is ...").
        mine = owner.with_name(f"{owner.name}.{os.getpid()}")
        fd = os.open(mine, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as o:
            o.write(f"imagebuild {task} (pid {os.getpid()})\n")
        os.replace(mine, owner)  # replaces a link planted there, never follows it
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


SEAL = ".seal.json"


@dataclass(frozen=True)
class Cache:
    root: Path

    def blob(self, sha256: str) -> Path:
        return self.root / "blobs" / "sha256" / sha256

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        p = self.blob(sha256)
        return p.is_file() and (size is None or p.stat().st_size == size)

    @contextmanager
    def verified(self) -> Iterator[dict[str, list[Any]]]:
        """What the last hashes proved: blob -> [inode, size, mtime_ns, ctime_ns] at the time.
        A blob whose stat still matches is not hashed again (as git trusts its index): any
        write, truncation or chmod moves ctime, which user space cannot set back. Saved on
        exit; a lost update only costs one more hash."""
        path = self.root / "verified.json"
        try:
            memo = json.loads(path.read_text())
        except (OSError, ValueError):
            memo = {}
        before = dict(memo)
        yield memo
        if memo != before:
            with atomic_file(path) as tmp:
                tmp.write_text(json.dumps(memo, sort_keys=True))

    def dir(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def has(self, kind: str, key: str) -> bool:
        """Whether the entry is there, for `plan` (no seal checked, nothing removed): a folder
        exists only once complete, renamed into place."""
        return self.dir(kind, key).is_dir()

    def exclusive(self, task: str) -> AbstractContextManager[None]:
        """One writer at a time on this cache: a second build waits, saying who holds it, then
        finds the first one's entries: two builds of one spec end with the same image."""
        return exclusive(self.root / ".lock", task, f"the cache {self.root}")

    @contextmanager
    def building(self, kind: str, key: str, known: dict[str, str] | None = None) -> Iterator[Path]:
        """Yield a temp folder that becomes `kind/key` only if the body succeeds, sealed with
        the sha256 of every file in it (`known`: hashes the body already computed, by path
        relative to the folder, e.g. a layer's diff_id; the rest are hashed now)."""
        final = self.dir(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=final.parent))
        try:
            yield tmp
            self._seal(tmp, final, known or {})
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _seal(self, tmp: Path, final: Path, known: dict[str, str]) -> None:
        files = sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != SEAL)
        seal = {}
        with self.verified() as memo:
            for path in files:
                rel = str(path.relative_to(tmp))
                seal[rel] = known.get(rel) or sha256_file(path)
                # renaming the folder keeps every file's inode and times: remembered as good
                memo[self._memo_key(final / rel)] = [*stat_key(path), seal[rel]]
        (tmp / SEAL).write_text(json.dumps(seal, indent=0, sort_keys=True))

    def _memo_key(self, path: Path) -> str:
        return "entry:" + str(path.relative_to(self.root))

    def seal(self, kind: str, key: str) -> dict[str, str]:
        """The sealed sha256 of every file of the entry `kind/key`, by path in its folder."""
        seal = json.loads((self.dir(kind, key) / SEAL).read_text())
        if not isinstance(seal, dict):
            raise ValueError(f"{SEAL} is not a JSON object")
        return seal

    def seal_problem(
        self,
        kind: str,
        key: str,
        expect: dict[str, str] | None = None,
        rule: Callable[[Path, dict[str, str]], str | None] | None = None,
    ) -> str | None:
        """Why the entry `kind/key` cannot be trusted, or None: no seal, a file added, removed
        or with other bytes than sealed, (`expect`, for entries the lock determines) a sealed
        hash other than the lock's, or (`rule`: what the entry's kind requires of its sealed
        files, imagebuild.cache_entries) a broken rule. Only files whose stat changed are
        hashed again."""
        folder = self.dir(kind, key)
        try:
            seal = self.seal(kind, key)
        except (OSError, ValueError):
            return "has no seal (made by an older imagebuild, or cut short)"
        for rel, sha in (expect or {}).items():
            if seal.get(rel) != sha:
                return f"seals {rel} as {seal.get(rel)}, the lock says {sha}"
        present = {
            str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != SEAL
        }
        if present != seal.keys():
            extra, gone = sorted(present - seal.keys()), sorted(seal.keys() - present)
            return f"has files added {extra[:3]} or removed {gone[:3]} since it was sealed"
        with self.verified() as memo:
            for rel, sha in seal.items():
                path, mkey = folder / rel, self._memo_key(folder / rel)
                if memo.get(mkey) == [*stat_key(path), sha]:
                    continue
                memo.pop(mkey, None)
                if sha256_file(path) != sha:
                    return f"has {rel} changed since it was sealed (sha256 differs)"
                memo[mkey] = [*stat_key(path), sha]
        if rule and (found := rule(folder, seal)):
            return f"is not a valid entry ({found})"
        return None

    def intact(
        self,
        kind: str,
        key: str,
        expect: dict[str, str] | None = None,
        rule: Callable[[Path, dict[str, str]], str | None] | None = None,
    ) -> bool:
        """Whether a finished entry can be reused (`seal_problem`); a tampered or invalid one
        is said, removed, and then made again by its caller like a missing one."""
        if not self.has(kind, key):
            return False
        problem = self.seal_problem(kind, key, expect, rule)
        if problem is None:
            return True
        progress.say(f"cache entry {kind}/{key[:12]} {problem}: removing it, it is made again")
        shutil.rmtree(self.dir(kind, key))
        return False
