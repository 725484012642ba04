"""The VM's file contents read on this host from its disk's dump (imagebuild/verify/diskbytes.py):
what it finds is what the real `dpkg --verify` finds on a real dpkg database (packages built with
dpkg-deb and installed by dpkg into a private root), and a hostile disk's links never reach this
host's files. Built artifacts: tests/test_verify.py (the sabotage test)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagebuild.verify import diskbytes
from tests.conftest import ROOT


def _deb(tmp: Path, name: str, files: dict[str, str], conffiles: tuple[str, ...] = ()) -> Path:
    d = tmp / f"{name}-src"
    (d / "DEBIAN").mkdir(parents=True)
    control = f"Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\n"
    (d / "DEBIAN" / "control").write_text(control + "Description: test\n")
    if conffiles:
        (d / "DEBIAN" / "conffiles").write_text("".join(f"{c}\n" for c in conffiles))
    sums = []
    for path, text in files.items():
        (d / path).parent.mkdir(parents=True, exist_ok=True)
        (d / path).write_text(text)
        if "/" + path not in conffiles:
            sums.append(f"{hashlib.md5(text.encode()).hexdigest()}  {path}\n")
    (d / "DEBIAN" / "md5sums").write_text("".join(sums))
    out = tmp / f"{name}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(d), str(out)], check=True)
    return out


def _dpkg(root: Path, *args: str) -> str:
    r = subprocess.run(
        ["dpkg", f"--root={root}", "--force-script-chrootless", "--force-not-root", *args],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def _real_verify(root: Path) -> tuple[set[str], set[str]]:
    """`dpkg --verify`'s findings, as the in-artifact script reads them (digest or missing)."""
    plain, conf = set(), set()
    for line in _dpkg(root, "--verify").split("\n")[:-1]:  # a path may hold U+2028
        flags, conffile, path = line[:9], line[10:11] == "c", line[12:]
        if flags.startswith("missing"):
            path += " (missing)"
        elif flags[2] != "5":
            continue
        (conf if conffile else plain).add(path)
    return plain, conf


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """A root with two packages installed by the real dpkg, one file diverted by a third."""
    root = tmp_path / "root"
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"):
        (root / d).mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("")
    a = _deb(
        tmp_path,
        "pkg-a",
        {"usr/share/a/one": "one\n", "usr/share/a/two": "two\n", "etc/a.conf": "x=1\n"},
        ("/etc/a.conf",),
    )
    b = _deb(tmp_path, "pkg-b", {"usr/share/b/three": "three\n", "usr/share/b/four": "4\n"})
    _dpkg(root, "--force-all", "-i", str(a), str(b))
    # pkg-c diverts pkg-b's file; pkg-b's bytes now live under the diverted name
    divert = ["dpkg-divert", f"--root={root}", "--package", "pkg-c", "--rename"]
    subprocess.run([*divert, "--divert", "/usr/share/b/four.b", "--add", "/usr/share/b/four"])
    return root


def test_what_it_finds_is_what_dpkg_verify_finds(installed: Path) -> None:
    assert _real_verify(installed) == (set(), set())
    assert diskbytes.deb_verify(str(installed))[:2] == ([], [])
    (installed / "usr/share/a/one").write_text("one\n# x\n")  # a byte appended
    (installed / "usr/share/a/two").unlink()  # gone
    (installed / "etc/a.conf").write_text("x=2\n")  # the admin's edit
    # pkg-c's diversion of pkg-b's file: dpkg checks neither name
    (installed / "usr/share/b/four.b").write_text("5\n")
    (installed / "usr/share/b/four").write_text("6\n")
    (installed / "usr/share/b/three").write_text("3\n")
    plain, conf, owner = diskbytes.deb_verify(str(installed))
    assert (set(plain), set(conf)) == _real_verify(installed)
    assert plain == ["/usr/share/a/one", "/usr/share/a/two (missing)", "/usr/share/b/three"]
    assert conf == ["/etc/a.conf"]
    assert owner["/usr/share/b/three"] == "pkg-b"


def test_a_taken_over_file_an_unpacked_package_and_odd_names_as_dpkg_sees_them(
    installed: Path, tmp_path: Path
) -> None:
    """pkg-d takes over pkg-a's file (Replaces: dpkg drops it from pkg-a's .list, not from its
    md5sums); pkg-e is only unpacked (dpkg --verify checks it); a conffile whose path holds a
    space; names that are not UTF-8 or hold a line separator other than newline."""
    tmp = tmp_path / "more"
    tmp.mkdir()
    d = _deb(tmp, "pkg-d", {"usr/share/a/one": "mine\n"})
    control = (tmp / "pkg-d-src/DEBIAN/control").read_text()
    (tmp / "pkg-d-src/DEBIAN/control").write_text(control + "Replaces: pkg-a\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tmp / "pkg-d-src"), str(d)])
    odd = {"usr/share/e/line\u2028sep": "1\n", "etc/e e.conf": "c\n"}
    e = _deb(tmp, "pkg-e", odd, ("/etc/e e.conf",))
    _dpkg(installed, "--force-all", "-i", str(d))
    _dpkg(installed, "--force-all", "--unpack", str(e))
    (installed / "usr/share/a/one").write_text("changed\n")  # pkg-d's now
    (installed / "usr/share/e/line\u2028sep").write_text("2\n")
    (installed / "etc/e e.conf").write_text("d\n")
    plain, conf, owner = diskbytes.deb_verify(str(installed))
    assert (set(plain), set(conf)) == _real_verify(installed)
    assert plain == ["/usr/share/a/one", "/usr/share/e/line\u2028sep"]
    assert conf == ["/etc/e e.conf"] and owner["/usr/share/a/one"] == "pkg-d"


def test_a_disk_without_dpkgs_database_is_an_error_not_none(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="/var/lib/dpkg/status: none on the disk"):
        diskbytes.deb_verify(str(tmp_path))


def test_the_script_runs_on_a_dump_and_names_each_file_with_its_package(installed: Path) -> None:
    """Through `python -m` as verify runs it: the script's content keys, venv and app read."""
    (installed / "usr/share/a/one").write_text("changed\n")
    app = installed / "opt/app"
    app.mkdir(parents=True)
    (app / "main.py").write_text("print(1)\n")
    want = {"venv": "/opt/venv", "app": "/opt/app", "skip": []}
    r = subprocess.run(
        [sys.executable, "-m", "imagebuild.verify.diskbytes", str(installed), json.dumps(want)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    out = json.loads(r.stdout)
    assert out["deb"] == "/usr/share/a/one (pkg-a)"
    assert out["conffiles"] == "none"
    assert out["app"] == {"main.py": hashlib.sha256(b"print(1)\n").hexdigest()}
    assert out["record"] == "none" and out["venv"].endswith("(0 files)")


def test_a_link_on_the_disk_never_leads_to_this_hosts_files(tmp_path: Path) -> None:
    """The disk's absolute links, `..` past its root and link loops resolve inside the dump:
    a file of this host with the recorded digest is never read in its place."""
    root = tmp_path / "dump"
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_text("host\n")
    (root / "usr/share").mkdir(parents=True)
    os.symlink(str(secret), root / "usr/share/abs")  # this host's path, absolute
    os.symlink("../../../outside/secret", root / "usr/share/up")  # `..` past the root
    os.symlink("loop", root / "usr/share/loop")
    os.symlink("/usr", root / "usr/share/root-usr")  # absolute: the disk's own /usr
    (root / "usr/share/real").write_text("disk\n")
    for path in ("/usr/share/abs", "/usr/share/up", "/usr/share/loop", "/usr/share/real/x"):
        assert diskbytes.inside(str(root), path) is None, path
    assert diskbytes.inside(str(root), "/usr/share/root-usr/share/real") == str(
        root / "usr/share/real"
    )
    # a package recording the host file's digest at those paths: missing on the disk
    info = root / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    md5 = hashlib.md5(b"host\n").hexdigest()
    status = "Package: p\nStatus: install ok installed\nVersion: 1\nArchitecture: all\n"
    (root / "var/lib/dpkg/status").write_text(status)
    (info / "p.md5sums").write_text(f"{md5}  usr/share/abs\n{md5}  usr/share/up\n")
    (info / "p.list").write_text("/usr/share/abs\n/usr/share/up\n")
    plain, _, _ = diskbytes.deb_verify(str(root))
    assert plain == ["/usr/share/abs (missing)", "/usr/share/up (missing)"]
