"""The content-addressed cache: blobs by sha256, and the apt repos / wheelhouses made from them.

Layout under the cache root (default ~/.cache/imagebuild, or $IMAGEBUILD_CACHE, or --cache-dir):
  blobs/sha256/<hex>          every .deb and wheel, named by its content
  repos/<key>/                a flat apt repository (pool/*.deb hard links + Packages)
  wheelhouses/<key>/          wheels under their real names + requirements.txt with hashes
  apt/<key>/                  the private apt state used to resolve locks (mirror index cache)
  verified.json               blob -> inode stat at its last good hash (see Cache.verified)
Folders are made under a temporary name and renamed when complete, so a crash never leaves a
half-made repo that a later build would trust.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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


def digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class Cache:
    root: Path

    def blob(self, sha256: str) -> Path:
        return self.root / "blobs" / "sha256" / sha256

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        p = self.blob(sha256)
        return p.is_file() and (size is None or p.stat().st_size == size)

    @contextmanager
    def verified(self) -> Iterator[dict[str, list[int]]]:
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

    @contextmanager
    def exclusive(self, task: str) -> Iterator[None]:
        """One writer at a time on this cache (flock on `<root>/.lock`; the kernel releases it
        when its holder dies, even by kill -9). A second build waits, saying who holds it, then
        finds the first one's entries: two builds of one spec end with the same image."""
        self.root.mkdir(parents=True, exist_ok=True)
        path, owner = self.root / ".lock", self.root / ".lock.owner"
        with path.open("a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    who = owner.read_text().strip()
                except OSError:
                    who = "another process"
                progress.say(f"{task}: waiting for {who}, which is using the cache {self.root}")
                fcntl.flock(f, fcntl.LOCK_EX)
            owner.write_text(f"imagebuild {task} (pid {os.getpid()})\n")
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextmanager
    def building(self, kind: str, key: str) -> Iterator[Path]:
        """Yield a temp folder that becomes `kind/key` only if the body succeeds."""
        final = self.dir(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=final.parent))
        try:
            yield tmp
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
