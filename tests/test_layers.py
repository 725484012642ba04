"""Pure logic of making an artifact's files: what a stage's changes become in its layer (read
from an overlay upper directory or from the engine's stream), the app archive, the package
manifest. No engine needed."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

from imagebuild import app_tree
from imagebuild import spec as specmod
from imagebuild.builders.changes import upper_entries
from imagebuild.builders.layers import diff_layer
from imagebuild.inventory import Subject, write
from imagebuild.lock.lockfile import DebPackage, Lock, Wheel
from tests.conftest import copy_example

SDE = 1_700_000_000


def names(layer_path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(layer_path) as t:
        return {m.name: m for m in t.getmembers()}


def tar_stream(entries: list[tuple[str, bytes | None, str]]) -> list[bytes]:
    """(name, data or None for a folder, hard-link target or "") as one tar in memory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, data, link in entries:
            info = tarfile.TarInfo(name)
            info.mtime, info.mode = SDE - 10, 0o755
            if link:
                info.type, info.linkname = tarfile.LNKTYPE, link
                t.addfile(info)
            elif data is None:
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return [buf.getvalue()]


def test_upper_dir_whiteouts_opaque_folders_and_exclusions(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "opt/app").mkdir(parents=True)
    (upper / "opt/app/main.py").write_text("print(1)\n")
    os.link(upper / "opt/app/main.py", upper / "opt/app/alias.py")
    (upper / "etc").mkdir()
    os.mknod(upper / "etc/gone.conf", stat.S_IFCHR | 0o600, os.makedev(0, 0))  # a whiteout
    (upper / "srv/data").mkdir(parents=True)
    os.setxattr(upper / "srv/data", "trusted.overlay.opaque", b"y")
    (upper / "srv/data/new").write_text("n\n")
    (upper / "tmp").mkdir()
    (upper / "tmp/ansible-leftover").write_text("x")
    (upper / "var/lib/imagebuild/repo").mkdir(parents=True)  # the read-only mount points
    below = {p: ["5", 0o755, 0, 0, 0, SDE, ""] for p in ("etc", "srv", "srv/data", "opt")}
    below |= {p: ["0", 0o644, 0, 0, 2, SDE, ""] for p in ("srv/data/old", "etc/gone.conf")}

    stream, deleted = upper_entries(upper, below, tmp_path, SDE)
    layer, manifest = diff_layer(stream, below, tmp_path / "layer.tar", SDE, deleted=deleted)

    assert sorted(deleted) == ["etc/gone.conf", "srv/data/old"]
    got = names(layer.path)
    assert {"etc/.wh.gone.conf", "srv/data/.wh.old", "srv/data/new", "opt/app/main.py"} <= set(got)
    # A hard-linked pair stays one: the first name in walk order holds the data.
    assert got["opt/app/main.py"].islnk() and got["opt/app/main.py"].linkname == "opt/app/alias.py"
    assert not [n for n in got if n.startswith(("tmp/", "var/lib/imagebuild"))]
    assert "srv/data/old" not in manifest and "srv/data/new" in manifest


def test_a_stage_after_another_in_one_container_gives_only_its_own_changes(tmp_path: Path) -> None:
    """Two stages in one container: the upper dir still holds the first stage's files. The
    second's layer is only what it changed: a file the first made and it left alone is not
    read again; one it removed (never in the container's image: no whiteout in the upper dir)
    becomes a whiteout because the first stage's walk saw it."""
    upper = tmp_path / "upper"
    (upper / "opt/venv").mkdir(parents=True)
    for name in ("kept.py", "gone.py", "edited.py"):
        (upper / "opt/venv" / name).write_text("v1\n")
        os.utime(upper / "opt/venv" / name, (SDE + 99, SDE + 99))  # clamped to SDE in a layer
    os.utime(upper / "opt/venv", (SDE + 99, SDE + 99))
    os.utime(upper / "opt", (SDE + 99, SDE + 99))
    seen: set[str] = set()
    (tmp_path / "1").mkdir(), (tmp_path / "2").mkdir()  # each stage's own scratch folder
    stream, deleted = upper_entries(upper, {}, tmp_path / "1", SDE, seen)
    first, below = diff_layer(stream, {}, tmp_path / "first.tar", SDE, deleted=deleted)
    assert first.entries == 5 and seen == set(below)
    (upper / "opt/venv/gone.py").unlink()
    (upper / "opt/venv/edited.py").write_text("v2, longer\n")
    stream, deleted = upper_entries(upper, below, tmp_path / "2", SDE, seen)
    data = b"".join(stream)
    assert b"kept.py" not in data and b"edited.py" in data  # unchanged: not read again
    assert deleted == ["opt/venv/gone.py"] and "opt/venv/gone.py" not in seen
    second, _ = diff_layer([data], below, tmp_path / "second.tar", SDE, deleted=deleted)
    assert sorted(names(second.path)) == [
        "opt",
        "opt/venv",
        "opt/venv/.wh.gone.py",
        "opt/venv/edited.py",
    ]


def test_layer_carries_the_folders_of_its_entries(tmp_path: Path) -> None:
    # opt/ is unchanged, but the engine would make it with the time of extraction if the
    # layer left it out.
    below = {"opt": ["5", 0o755, 0, 0, 0, SDE - 10, ""]}
    stream = tar_stream([("opt/", None, ""), ("opt/app/", None, ""), ("opt/app/x", b"x", "")])
    layer, _ = diff_layer(stream, below, tmp_path / "layer.tar", SDE)
    got = names(layer.path)
    assert list(got) == ["opt", "opt/app", "opt/app/x"]
    assert got["opt"].isdir() and got["opt"].mtime == SDE - 10


def test_hard_link_names_compare_without_dot_slash(tmp_path: Path) -> None:
    # mmdebstrap writes "./usr/bin/perl", docker export "usr/bin/perl": the same link.
    base = tar_stream([("./usr/bin/perl", b"elf", ""), ("./usr/bin/perl5", None, "./usr/bin/perl")])
    _, below = diff_layer(base, {}, tmp_path / "base.tar", SDE)
    again = tar_stream([("usr/bin/perl", b"elf", ""), ("usr/bin/perl5", None, "usr/bin/perl")])
    layer, _ = diff_layer(again, below, tmp_path / "layer.tar", SDE)
    assert layer.entries == 0


def test_app_archive_is_rooted_at_its_destination_with_the_stamp_last(tmp_path: Path) -> None:
    spec = specmod.load(copy_example(tmp_path / "ex"))
    stamp = app_tree.stamp(spec, app_tree.digest(spec))
    archive = Path(app_tree.write_archive(spec, SDE, stamp, tmp_path / "app.tar"))
    with tarfile.open(archive) as t:
        members = t.getmembers()
    top = spec.app.dest.strip("/")
    assert members[0].name == top and members[0].isdir()
    assert members[-1].name == stamp.lstrip("/") and members[-1].size == 0
    assert all(m.name == top or m.name.startswith(top + "/") for m in members)
    assert {(m.uid, m.gid, m.uname, m.mtime) for m in members} == {(0, 0, "", SDE)}
    assert any(m.name.endswith("/app/__main__.py") for m in members)


def test_packages_not_in_the_lock_are_marked_and_said(tmp_path: Path, capsys) -> None:
    deb = DebPackage("libc6", "2.36-9", "amd64", "ab" * 32, "pool/main/g/glibc/libc6.deb", 1)
    lock = Lock(
        {"source_date_epoch": SDE}, {}, [deb], [], [Wheel("numpy", "2.0", "n.whl", "", "cd" * 32)]
    )
    installed = {
        "deb": [
            ["libc6", "2.36-9", "amd64"],
            ["libc6", "2.36-9+deb12u9", "amd64"],
            ["curl", "1", "a"],
        ],
        "python": [["NumPy", "2.0"], ["six", "1.16"], ["pip", "23.0.1"]],
    }
    spec = specmod.load(copy_example(tmp_path / "ex"))
    subject = Subject("container", "ef" * 32, "x")
    out = write(installed, spec, lock, subject, tmp_path / "p.txt", tmp_path / "b.json")
    assert out == ["deb curl=1", "deb libc6=2.36-9+deb12u9", "python six=1.16"]
    manifest = (tmp_path / "p.txt").read_text()
    assert "deb libc6=2.36-9=" + "ab" * 32 in manifest
    assert "python pip=23.0.1=not-in-lock" in manifest  # marked, but venv tooling: not said
    assert "3 packages in the container are not in the lock" in capsys.readouterr().err


def test_hard_link_group_data_goes_with_the_first_name_in_layer_order(tmp_path: Path) -> None:
    # The upper-dir walk meets opt/t/run before opt/t/bin/run; the layer lists bin/ first, and
    # the engine extracts in order, so the data must move to opt/t/bin/run.
    stream = tar_stream(
        [
            ("opt/t/", None, ""),
            ("opt/t/run", b"#!elf", ""),
            ("opt/t/bin/", None, ""),
            ("opt/t/bin/run", None, "opt/t/run"),
        ]
    )
    layer, _ = diff_layer(stream, {}, tmp_path / "layer.tar", SDE)
    got = names(layer.path)
    assert list(got) == ["opt/t", "opt/t/bin", "opt/t/bin/run", "opt/t/run"]
    assert got["opt/t/bin/run"].isreg() and got["opt/t/bin/run"].size == 5
    assert got["opt/t/run"].islnk() and got["opt/t/run"].linkname == "opt/t/bin/run"
    with tarfile.open(layer.path) as t:  # extractable in order, same bytes under both names
        t.extractall(tmp_path / "x")
    assert (tmp_path / "x/opt/t/run").read_bytes() == b"#!elf"
    assert (tmp_path / "x/opt/t/run").stat().st_ino == (tmp_path / "x/opt/t/bin/run").stat().st_ino
