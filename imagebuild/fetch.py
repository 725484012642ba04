"""`invoke fetch`: every locked .deb and wheel into the content-addressed cache, verified, then
a local apt repository per lock section and a wheelhouse, from which all builds install offline
(so the container and the VM receive the very same bytes)."""

from __future__ import annotations

import email.utils
import hashlib
import os
import tarfile
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagebuild import download, progress, tarnorm, tools
from imagebuild.cache import Cache, atomic_file, sha256_file, stat_key
from imagebuild.errors import ImageBuildError
from imagebuild.lock.lockfile import DebPackage, Lock, Wheel
from imagebuild.obtain import obtain


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
    """Download one item into its blob, refusing bytes whose sha256 is not the locked one and
    never writing more than its locked size."""
    dest = cache.blob(item.sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".dl-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            size = download.fetch_to(_url(lock, item), out, limit=item.size)
        got = sha256_file(Path(tmp))
        if got != item.sha256:
            raise FetchError(
                f"{lock.path}: {_label(item)}: downloaded sha256 {got} does not match "
                f"the locked {item.sha256}; refusing it (lock edited or mirror changed)"
            )
        os.replace(tmp, dest)
        return size
    except download.TooLarge as e:
        raise FetchError(
            f"{lock.row(item)}: {_label(item)}: {e.url} {e.reason} (the lock's "
            "size); refusing it, nothing kept"
        ) from None
    except download.DownloadError as e:
        if e.status in (404, 410):
            raise FetchError(_gone(lock, item, e.status)) from None
        raise FetchError(f"{_label(item)}: download from {e.url} failed: {e.reason}") from None
    except OSError as e:
        raise FetchError(f"{_label(item)}: writing {dest.parent} failed: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _gone(lock: Lock, item: DebPackage | Wheel, code: int) -> str:
    """A locked file the source no longer serves: which one, why, and what the user can do."""
    kind = "Python wheel" if isinstance(item, Wheel) else "Debian package"
    where = "the index" if isinstance(item, Wheel) else f"the mirror {lock.mirror}"
    return (
        f"{lock.path}: {kind} {item.name} {item.version} is gone: {where} no longer carries it "
        f"(HTTP {code} for {_url(lock, item)}; Debian's mirrors keep only the current point "
        f"release). Either load it from a cache that has it (`invoke fetch --export FILE` there, "
        f"`invoke fetch --import FILE` here), or resolve against a snapshot (`base.snapshot`), "
        f"or move the lock to what the mirror has now (`invoke lock --update {item.name}`). "
        "Nothing was written for it."
    )


def export_archive(lock: Lock, cache: Cache, dest: Path) -> int:
    """Every blob the lock needs, verified, into one tar (`blobs/sha256/<hex>`): the way a lock
    keeps building on a machine without the mirror, or after the mirror moved on."""
    items = _unique(lock.files)
    bad = missing(cache, lock, repair=False)
    if bad:
        raise FetchError(
            f"{len(bad)} locked files are not in {cache.root} (first: "
            f"{_label(bad[0])}); run `invoke fetch` first"
        )
    with atomic_file(dest) as tmp, tarfile.open(tmp, "w") as tar:
        for item in items:
            tar.add(
                cache.blob(item.sha256),
                f"blobs/sha256/{item.sha256}",
                recursive=False,
                filter=_plain,
            )
    return len(items)


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    return tarnorm.ours(info, 0)


def import_archive(lock: Lock, cache: Cache, src: Path) -> int:
    """Blobs from an `export_archive` tar into the cache: only names the lock has, each of its
    locked size (checked on the member's header, before a byte is extracted) and hashed before
    it is renamed into place; anything else in the archive is skipped, never extracted."""
    wanted = {i.sha256: i for i in lock.files}
    if not tarfile.is_tarfile(src):
        raise FetchError(f"--import {src}: not a tar archive made by `invoke fetch --export`")
    count = 0
    with tarfile.open(src) as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            hexdigest = name.removeprefix("blobs/sha256/")
            if not member.isreg() or hexdigest not in wanted or name == hexdigest:
                continue
            item = wanted[hexdigest]
            if item.size is not None and member.size != item.size:
                raise FetchError(
                    f"--import {src}: {name} is {member.size} bytes, "
                    f"{lock.row(item)} ({_label(item)}) says {item.size}; "
                    "refusing the archive, that member not extracted"
                )
            dest = cache.blob(hexdigest)
            if dest.is_file() and sha256_file(dest) == hexdigest:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".import-", dir=dest.parent)
            try:
                data = tar.extractfile(member)
                assert data is not None  # a regular member
                with os.fdopen(fd, "wb") as out, data:
                    while chunk := data.read(1 << 20):
                        out.write(chunk)
                if sha256_file(Path(tmp)) != hexdigest:
                    raise FetchError(
                        f"--import {src}: {name} does not hash to its name; refusing the archive"
                    )
                os.replace(tmp, dest)
                count += 1
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    return count


def _unique(items: list[DebPackage | Wheel]) -> list[DebPackage | Wheel]:
    return list({i.sha256: i for i in items}.values())


def verify_blob(
    cache: Cache, item: DebPackage | Wheel, repair: bool = True, memo: dict | None = None
) -> bool:
    """True when the cached blob exists and still hashes to its name (or is unchanged since it
    last did, per `memo`: see Cache.verified); a corrupt one is removed (by fetch, which then
    downloads it again) or reported (by builds, which never download)."""
    path = cache.blob(item.sha256)
    if not path.is_file():
        return False
    memo = {} if memo is None else memo
    key = stat_key(path)
    if memo.get(item.sha256) == key:
        return True
    if sha256_file(path) == item.sha256:
        memo[item.sha256] = key
        return True
    memo.pop(item.sha256, None)
    progress.say(
        f"cache entry for {_label(item)} is corrupt (sha256 mismatch)"
        + ("; removing it" if repair else "")
    )
    if repair:
        path.unlink()
    return False


def _link_all(cache: Cache, items: list, dest: Path, name: Callable[[Any], str]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for item in items:
        os.link(cache.blob(item.sha256), dest / name(item))


def _release(suite: str, arch: str, packages: Path, epoch: int) -> str:
    """A minimal Release file: enough for apt (trusted=yes) and for mmdebstrap's essential
    detection, which looks for suite/component/arch index targets (a flat repo has none)."""
    data = packages.read_bytes()
    rel = f"main/binary-{arch}/Packages"
    date = email.utils.formatdate(epoch, usegmt=True)
    return (
        f"Origin: imagebuild\nSuite: {suite}\nCodename: {suite}\nDate: {date}\n"
        f"Architectures: {arch}\n"
        f"Components: main\nSHA256:\n {hashlib.sha256(data).hexdigest()} {len(data)} {rel}\n"
    )


def _pool_hashes(items: list[DebPackage]) -> dict[str, str]:
    """What a repo's pool must hold: the lock anchors the entry's seal (a seal rewritten along
    with a file still differs from the lock)."""
    return {f"pool/{i.basename}": i.sha256 for i in items}


def _wheel_hashes(lock: Lock) -> dict[str, str]:
    return {w.filename: w.sha256 for w in lock.python}


def _apt_repo(cache: Cache, lock: Lock, section: str) -> Path:
    """An apt repo (`deb [trusted=yes] file:DIR SUITE main`) holding exactly one lock section
    (of `lock.arch`: each architecture's repo is its own)."""
    key = lock.section_digest(section)
    items = lock.shared + (lock.vm if section == "vm" else [])
    suite = str(lock.header["suite"])

    def build(tmp: Path, known: dict[str, str]) -> None:
        _link_all(cache, items, tmp / "pool", lambda i: i.basename)
        known |= _pool_hashes(items)  # verified blobs, linked: not hashed again
        index = tmp / "dists" / suite / "main" / f"binary-{lock.arch}" / "Packages"
        index.parent.mkdir(parents=True)
        with index.open("w") as out:
            tools.run(
                ["dpkg-scanpackages", "--multiversion", "pool", "/dev/null"], cwd=tmp, stdout=out
            )
        (tmp / "dists" / suite / "Release").write_text(
            _release(suite, lock.arch, index, lock.source_date_epoch)
        )

    obtain(cache, "repos", key, build, expect=_pool_hashes(items))
    return cache.dir("repos", key)


def apt_source(repo: Path, suite: str, scheme: str = "file") -> str:
    """The sources.list line for a repo made by `fetch` (copy:// for mmdebstrap)."""
    return f"deb [trusted=yes] {scheme}://{repo} {suite} main"


def requirement_files(lock: Lock) -> dict[str, str]:
    """The wheelhouse's requirements file of each installing role's group, python_env's first."""
    groups = dict.fromkeys(["python", *(w.group for w in lock.python)])
    return {g: "requirements.txt" if g == "python" else f"requirements-{g}.txt" for g in groups}


def _wheelhouse(cache: Cache, lock: Lock) -> Path:
    key = lock.section_digest("python")

    def build(tmp: Path, known: dict[str, str]) -> None:
        _link_all(cache, lock.python, tmp, lambda w: w.filename)
        known |= _wheel_hashes(lock)  # verified blobs, linked: not hashed again
        # One requirements file per installing role: python_env's, then each stack's.
        # python_env's file even when the spec's own requirements pin nothing (gpu-probe: every
        # wheel is a stack's): the role reads it in both artifacts.
        for group, name in requirement_files(lock).items():
            (tmp / name).write_text(
                "".join(
                    f"{w.name}=={w.version} --hash=sha256:{w.sha256}\n" for w in lock.wheels(group)
                )
            )

    obtain(cache, "wheelhouses", key, build, expect=_wheel_hashes(lock))
    return cache.dir("wheelhouses", key)


def missing(
    cache: Cache, lock: Lock, repair: bool = True, items: list[DebPackage | Wheel] | None = None
) -> list[DebPackage | Wheel]:
    """Locked items (default: every file of the lock) not (validly) in the cache; hashes every
    present blob that changed since its last good hash."""
    items = lock.files if items is None else items
    with cache.verified() as memo, ThreadPoolExecutor(2) as pool:
        present = list(pool.map(lambda i: verify_blob(cache, i, repair, memo), items))
    return [i for i, ok in zip(items, present, strict=True) if not ok]


def source_dirs(cache: Cache, lock: Lock) -> tuple[Path, Path, Path]:
    """Where fetch puts the container repo, the VM repo and the wheelhouse of this lock."""
    return (
        cache.dir("repos", lock.section_digest("shared")),
        cache.dir("repos", lock.section_digest("vm")),
        cache.dir("wheelhouses", lock.section_digest("python")),
    )


def local_sources(lock: Lock, cache: Cache) -> FetchResult:
    """For builds: the repos and wheelhouse of a completed fetch, every blob they hold
    re-verified (`lock`'s sections: the host's, or `Lock.for_arch`'s view of another
    architecture), or an error saying to run `invoke fetch`. Builds never download."""
    built: list[DebPackage | Wheel] = [*lock.shared, *lock.vm, *lock.python]
    bad = missing(cache, lock, repair=False, items=built)
    paths = source_dirs(cache, lock)
    if bad:
        raise FetchError(
            f"{len(bad)} locked files missing or corrupt in {cache.root} (first: "
            f"{_label(bad[0])}); run `invoke fetch`"
        )
    expect = (_pool_hashes(lock.shared), _pool_hashes(lock.shared + lock.vm), _wheel_hashes(lock))
    for path, anchor in zip(paths, expect, strict=True):
        # The folder exists only once complete (renamed into place); its seal says the rest.
        if problem := cache.seal_problem(path.parent.name, path.name, anchor):
            raise FetchError(f"{path} {problem}; run `invoke fetch` (it makes it again)")
    return FetchResult(0, len(built), 0, *paths)


def fetch(lock: Lock, cache: Cache) -> FetchResult:
    with progress.stage("fetch: verify cache", str(cache.root)) as st:
        todo = missing(cache, lock)
        total = len(lock.files)  # every architecture's (base.architectures)
        st["note"] = f"{total - len(todo)}/{total} present"
    downloaded = 0
    if todo:
        with progress.stage("fetch: download", f"{len(todo)} files") as st:
            with ThreadPoolExecutor(6) as pool:
                downloaded = sum(pool.map(lambda i: _download(cache, lock, i), todo))
            st["note"] = f"{downloaded / 1e6:.1f} MB"
    with progress.stage("fetch: local apt repos + wheelhouse"):
        for arch in lock.foreign:  # each architecture builds from its own (Lock.for_arch)
            _sources(cache, lock.for_arch(arch))
        return FetchResult(len(todo), total - len(todo), downloaded, *_sources(cache, lock))


def _sources(cache: Cache, lock: Lock) -> tuple[Path, Path, Path]:
    """`source_dirs`, made (or found made) from the cache's verified blobs."""
    return _apt_repo(cache, lock, "shared"), _apt_repo(cache, lock, "vm"), _wheelhouse(cache, lock)
