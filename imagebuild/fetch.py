"""`invoke fetch`: every locked .deb and wheel into the content-addressed cache, verified, then
a local apt repository per lock section and a wheelhouse, from which all builds install offline
(so the container and the VM receive the very same bytes)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from imagebuild import progress
from imagebuild.cache import Cache, sha256_file
from imagebuild.errors import ImageBuildError
from imagebuild.lock.lockfile import DebPackage, Lock, Wheel

COMPLETE = ".complete"


class FetchError(ImageBuildError):
    pass


@dataclass(frozen=True)
class FetchResult:
    downloaded: int
    reused: int
    bytes_downloaded: int
    repo_shared: Path
    repo_vm: Path
    wheelhouse: Path


def _url(lock: Lock, item: DebPackage | Wheel) -> str:
    return item.url if isinstance(item, Wheel) else f"{lock.mirror}/{item.filename}"


def _label(item: DebPackage | Wheel) -> str:
    return f"{item.name}={item.version} ({item.filename.rsplit('/', 1)[-1]})"


def _download(cache: Cache, lock: Lock, item: DebPackage | Wheel) -> int:
    """Download one item into its blob, refusing bytes whose sha256 is not the locked one."""
    dest = cache.blob(item.sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".dl-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(_url(lock, item), timeout=120) as r:
            while chunk := r.read(1 << 20):
                out.write(chunk)
        got = sha256_file(Path(tmp))
        if got != item.sha256:
            raise FetchError(
                f"{lock.path}: {_label(item)}: downloaded sha256 {got} does not match "
                f"the locked {item.sha256}; refusing it (lock edited or mirror changed)"
            )
        size = Path(tmp).stat().st_size
        os.replace(tmp, dest)
        return size
    except OSError as e:
        raise FetchError(f"{_label(item)}: download from {_url(lock, item)} failed: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def verify_blob(cache: Cache, item: DebPackage | Wheel) -> bool:
    """True when the cached blob exists and still hashes to its name; a corrupt one is removed."""
    path = cache.blob(item.sha256)
    if not path.is_file():
        return False
    if sha256_file(path) == item.sha256:
        return True
    progress.say(f"cache entry for {_label(item)} is corrupt (sha256 mismatch); removing it")
    path.unlink()
    return False


def _link_all(cache: Cache, items: list, dest: Path, name: callable) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for item in items:
        os.link(cache.blob(item.sha256), dest / name(item))


def _apt_repo(cache: Cache, lock: Lock, section: str) -> Path:
    """A flat apt repo (`deb [trusted=yes] file:DIR ./`) holding exactly one lock section."""
    key = lock.section_digest(section)
    final = cache.dir("repos", key)
    if (final / COMPLETE).exists():
        return final
    items = lock.shared + (lock.vm if section == "vm" else [])
    with cache.building("repos", key) as tmp:
        _link_all(cache, items, tmp / "pool", lambda i: i.basename)
        with (tmp / "Packages").open("w") as out:
            subprocess.run(
                ["dpkg-scanpackages", "--multiversion", "pool", "/dev/null"],
                cwd=tmp,
                stdout=out,
                stderr=subprocess.DEVNULL,
                check=True,
            )
        (tmp / COMPLETE).write_text(f"{len(items)} packages\n")
    return final


def _wheelhouse(cache: Cache, lock: Lock) -> Path:
    key = lock.section_digest("python")
    final = cache.dir("wheelhouses", key)
    if (final / COMPLETE).exists():
        return final
    with cache.building("wheelhouses", key) as tmp:
        _link_all(cache, lock.python, tmp, lambda w: w.filename)
        (tmp / "requirements.txt").write_text(
            "".join(f"{w.name}=={w.version} --hash=sha256:{w.sha256}\n" for w in lock.python)
        )
        (tmp / COMPLETE).write_text(f"{len(lock.python)} wheels\n")
    return final


def missing(cache: Cache, lock: Lock) -> list[DebPackage | Wheel]:
    """Locked items not (validly) in the cache; hashes every present blob."""
    items = [*lock.shared, *lock.vm, *lock.python]
    with ThreadPoolExecutor(2) as pool:
        present = list(pool.map(lambda i: verify_blob(cache, i), items))
    return [i for i, ok in zip(items, present, strict=True) if not ok]


def fetch(lock: Lock, cache: Cache) -> FetchResult:
    with progress.stage("fetch: verify cache", str(cache.root)) as st:
        todo = missing(cache, lock)
        total = len(lock.shared) + len(lock.vm) + len(lock.python)
        st["note"] = f"{total - len(todo)}/{total} present"
    downloaded = 0
    if todo:
        with progress.stage("fetch: download", f"{len(todo)} files") as st:
            with ThreadPoolExecutor(6) as pool:
                downloaded = sum(pool.map(lambda i: _download(cache, lock, i), todo))
            st["note"] = f"{downloaded / 1e6:.1f} MB"
    with progress.stage("fetch: local apt repos + wheelhouse"):
        result = FetchResult(
            len(todo),
            total - len(todo),
            downloaded,
            _apt_repo(cache, lock, "shared"),
            _apt_repo(cache, lock, "vm"),
            _wheelhouse(cache, lock),
        )
    return result
