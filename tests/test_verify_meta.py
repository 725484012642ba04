"""verify's blind spots, without an engine: what a file is (mode, owner, type, link) judged
between two listings and against a real .deb (dpkg-deb), the in-artifact script's walk over a
real tree, a broken Python named by its path (a real shell over testinfra's local backend),
pytest's interrupt handed back to verify, and the disk copy killed when verify unwinds (real
qemu-img, mkfs.ext4, debugfs). The same cases on built artifacts: tests/test_verify.py."""

from __future__ import annotations

import grp
import hashlib
import importlib.util
import json
import os
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import testinfra

from imagebuild.cache import Cache, sha256_file
from imagebuild.errors import Terminated
from imagebuild.lock.lockfile import DebPackage, Lock
from imagebuild.verify import diskbytes, diskread, filebytes, filemeta, interpreter, model
from imagebuild.verify import facts as factsmod
from imagebuild.verify.filemeta import MORE, SPECIAL, SUMMARY, UNCHECKED, Listing
from imagebuild.verify.run import Interrupt
from tests.conftest import ROOT


def load_file(path: Path, name: str) -> ModuleType:
    """A script or the suite's conftest as a module, without running its `__main__` part."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPT = diskbytes.S  # the script as verify loads it
ME = f"{pwd.getpwuid(os.getuid())[0]}:{grp.getgrgid(os.getgid())[0]}"


def listing(
    packages: dict[str, tuple[str, dict[str, str]]],
    trees: dict[str, str] | None = None,
    mounts: tuple[str, ...] = (),
    overrides: dict[str, str] | None = None,
) -> Listing:
    return Listing(packages, trees or {}, frozenset(mounts), overrides or {})


class NoDebs(filemeta.Debs):
    """A reference with the given entries per package (no cache, no lock)."""

    def __init__(self, entries: dict[str, dict[str, str] | str]) -> None:
        self._entries = entries

    def entries(self, package: str, version: str) -> dict[str, str] | str:
        return self._entries.get(package, f"{package} is not in the lock")

    def scripts(self, package: str) -> str:
        return ""  # no maintainer script sets anything


# --- the in-artifact script, over a real tree -------------------------------------------------


def test_the_script_describes_modes_owners_types_and_links_without_following_them(
    tmp_path: Path,
) -> None:
    top = tmp_path / "venv"
    (top / "bin").mkdir(parents=True)
    (top / "lib" / "__pycache__").mkdir(parents=True)
    tool = top / "bin" / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o4755)
    (top / "lib" / "mod.py").write_text("x = 1\n")
    (top / "lib" / "mod.pyc").write_bytes(b"cache")
    (top / "lib" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"cache")
    (top / "bin" / "python").symlink_to("/usr/bin/python3")
    (top / "zero").symlink_to("/dev/zero")  # followed, the walk would never end
    (top / "lib64").symlink_to("lib")
    digests, meta = SCRIPT.survey(str(top))
    assert meta[str(tool)] == f"file 4755 {ME}"
    assert meta[str(top / "bin" / "python")] == f"link {ME} -> /usr/bin/python3"
    assert meta[str(top / "zero")] == f"link {ME} -> /dev/zero"
    assert meta[str(top / "lib64")] == f"link {ME} -> lib"
    assert meta[str(top / "lib")] == f"dir {(top / 'lib').stat().st_mode & 0o7777:04o} {ME}"
    assert set(digests) == {str(tool), str(top / "lib" / "mod.py")}  # regular files only
    assert not any("pycache" in p or p.endswith(".pyc") for p in meta)
    assert SCRIPT.describe(str(tmp_path / "gone")) == "missing"
    assert SCRIPT.describe(str(tool / "below-a-file")) == "missing"


def test_the_script_reads_mounts_and_statoverrides(tmp_path: Path) -> None:
    assert "/proc" in SCRIPT.mount_points()
    table = tmp_path / "statoverride"
    table.write_text("root messagebus 4754 /usr/lib/dbus-1.0/helper\nnot a row\nroot root 9x /x\n")
    assert SCRIPT.stat_overrides(str(table)) == {"/usr/lib/dbus-1.0/helper": "4754 root:messagebus"}
    assert SCRIPT.stat_overrides(str(tmp_path / "none")) == {}


@pytest.mark.skipif(not Path("/var/lib/dpkg/info").is_dir(), reason="needs dpkg's database")
def test_the_script_lists_what_dpkg_lists_with_its_version() -> None:
    lists = SCRIPT.package_lists()
    got = SCRIPT.packages_meta({"dpkg": lists["dpkg"]})
    version, paths = got["dpkg"]
    assert version == SCRIPT.installed()["dpkg"]
    assert paths["/usr/bin/dpkg"] == "file 0755 root:root"
    assert "/usr/bin/dpkg" in SCRIPT.owned(lists)


@pytest.mark.skipif(not Path("/var/lib/dpkg/info").is_dir(), reason="needs dpkg's database")
def test_the_scripts_output_is_what_verify_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole script on this machine's dpkg database and a small app folder (dpkg --verify
    itself stood in for: it would hash every package file here)."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "main.py").write_text("print('hi')\n")
    (app / "main.py").chmod(0o644)
    real_popen = subprocess.Popen
    dpkg = ["true"]

    def popen(argv: list[str], **kw: Any) -> subprocess.Popen[str]:
        return real_popen(dpkg if argv[:2] == ["dpkg", "--verify"] else argv, **kw)

    monkeypatch.setattr(SCRIPT.subprocess, "Popen", popen)
    want = {"venv": None, "app": str(app), "skip": []}
    out = json.loads(json.dumps(SCRIPT.main(want)))
    meta = Listing.from_json(out["meta"])
    assert meta.trees[str(app / "main.py")] == f"file 0644 {ME}"
    assert meta.packages["dpkg"][1]["/usr/bin/dpkg"] == "file 0755 root:root"
    assert "/proc" in meta.mounts and "/" not in meta.mounts
    assert out["deb"] == "none" and set(out["app"]) == {"main.py"}
    # A dpkg that dies printed no finding either: that is a failure, never "none".
    dpkg[:] = ["sh", "-c", "kill -9 $$"]
    with pytest.raises(SystemExit, match="dpkg --verify failed: exit -9"):
        SCRIPT.main(want)
    # Without contents (a VM's are read from its disk image): the same listing, no file
    # hashed, no dpkg started (this one would fail the run).
    dpkg[:] = ["sh", "-c", "kill -9 $$"]
    opened: list[str] = []
    monkeypatch.setattr(SCRIPT, "sha256", lambda path: opened.append(path))
    bare = json.loads(json.dumps(SCRIPT.main(want | {"contents": False})))
    assert opened == [] and set(bare) == {"unlocked", "meta"}
    assert Listing.from_json(bare["meta"]).trees == meta.trees


# --- judging two listings ---------------------------------------------------------------------


def test_a_changed_mode_owner_or_link_is_a_row_naming_the_path_and_both_values() -> None:
    common = {
        "/usr/bin/python3.11": "file 0755 root:root",
        "/usr/bin/python3": "link root:root -> python3.11",
        "/usr/lib/python3.11/this.py": "file 0644 root:root",
    }
    bad = common | {
        "/usr/bin/python3.11": "file 4755 root:root",
        "/usr/bin/python3": "link root:root -> /bin/true",
        "/usr/lib/python3.11/this.py": "file 0644 nobody:nogroup",
    }
    c = listing({"python3.11-minimal": ("3.11.2-6", bad)})
    v = listing({"python3.11-minimal": ("3.11.2-6", common)})
    out = filemeta.judge({"container": c, "vm": v}, NoDebs({}))
    assert out["container"]["file-meta"] == bad and out["vm"]["file-meta"] == common
    assert out["container"]["files"][SUMMARY] != out["vm"]["files"][SUMMARY]
    assert out["vm"]["files"][SUMMARY].startswith("3 paths, sha256 ")
    ids = [i.id for i in filemeta.items(out["container"])]
    assert "file-meta:/usr/bin/python3.11" in ids and f"files:{SPECIAL}" in ids
    # Equal listings: equal digests, no path row.
    same = filemeta.judge({"container": v, "vm": v}, NoDebs({}))
    assert same["container"]["file-meta"] == {}
    assert same["container"]["files"][SUMMARY] == same["vm"]["files"][SUMMARY]


def test_what_is_not_the_images_is_not_compared() -> None:
    """Mount points and below (the engine's, the boot's; `/`: the container's is overlayfs'),
    per-run state no layer carries, a package at two versions (its deb row says so), a venv
    file in one artifact only."""
    c = listing(
        {
            "base-files": (
                "12.4",
                {
                    "/proc": "dir 0555 root:root",
                    "/run": "dir 0755 root:root",
                    "/": "dir 0700 root:root",
                    "/var/log/apt": "missing",
                    "/etc/issue": "file 0644 root:root",
                },
            ),
            "ca-certificates": ("99.0", {"/usr/sbin/update-ca-certificates": "missing"}),
        },
        trees={"/opt/venv/only-here.py": "file 0644 root:root"},
        mounts=("/proc", "/dev"),
    )
    v = listing(
        {
            "base-files": (
                "12.4",
                {
                    "/proc": "dir 0555 root:root",
                    "/run": "dir 0755 root:root",
                    "/": "dir 0755 root:root",
                    "/var/log/apt": "dir 0755 root:root",
                    "/etc/issue": "file 0644 root:root",
                },
            ),
            "ca-certificates": (
                "20230311",
                {"/usr/sbin/update-ca-certificates": "file 0755 root:root"},
            ),
        },
        mounts=("/proc", "/run"),
    )
    assert filemeta.pairs(c, v) == {"/etc/issue": ("file 0644 root:root",) * 2}


def test_a_path_one_side_does_not_list_is_named() -> None:
    c = listing({"p": ("1", {"/a": "file 0644 root:root", "/b": "file 0644 root:root"})})
    v = listing({"p": ("1", {"/a": "file 0644 root:root"})})
    assert filemeta.pairs(c, v)["/b"] == ("file 0644 root:root", "not listed")


def test_past_the_limit_one_row_counts_the_rest() -> None:
    n = filemeta.LIMIT + 7
    c = listing({"p": ("1", {f"/f{i:03}": "file 0600 root:root" for i in range(n)})})
    v = listing({"p": ("1", {f"/f{i:03}": "file 0644 root:root" for i in range(n)})})
    out = filemeta.judge({"container": c, "vm": v}, NoDebs({}))
    assert len(out["container"]["file-meta"]) == filemeta.LIMIT + 1
    assert out["container"]["file-meta"][MORE] == out["vm"]["file-meta"][MORE] == "7"
    more = [i for i in filemeta.items(out["container"]) if i.key == MORE]
    assert more and more[0].container == "0"  # a failing row, counting them


@pytest.mark.parametrize(
    ("description", "special"),
    [
        ("file 4755 root:root", True),
        ("file 2755 root:shadow", True),
        ("file 0666 root:root", True),
        ("dir 0777 root:root", True),
        ("dir 1777 root:root", False),  # /tmp
        ("dir 2775 root:mail", False),  # /var/mail: setgid picks the group of new files
        ("file 0755 root:root", False),
        ("link root:root -> /bin/true", False),
        ("missing", False),
        ("unreadable (Permission denied)", False),
    ],
)
def test_what_counts_as_special(description: str, special: bool) -> None:
    assert filemeta.special(description) is special


def test_special_files_are_checked_against_their_deb() -> None:
    files = {
        "/usr/bin/python3.11": "file 4755 root:root",  # the .deb: 0755
        "/bin/su": "file 4755 root:root",  # as shipped
        "/usr/lib/dbus-1.0/helper": "file 4754 root:messagebus",  # dpkg-statoverride
        "/usr/bin/ping": "file 0755 root:root capability 0100000200200000",  # not special
        "/usr/lib/python3.11/colorsys.py": "file 0666 root:root",
    }
    shipped = {
        "/usr/bin/python3.11": "file 0755 root:root",
        "/bin/su": "file 4755 root:root",
        "/usr/lib/dbus-1.0/helper": "file 0755 root:root",
        "/usr/lib/python3.11/colorsys.py": "file 0644 root:root",
    }
    art = listing(
        {"all": ("1", files), "gone": ("2", {"/usr/bin/sneaky": "file 6755 root:root"})},
        overrides={"/usr/lib/dbus-1.0/helper": "4754 root:messagebus"},
    )
    findings, unchecked = filemeta.against_debs(art, NoDebs({"all": shipped}))
    assert findings == [
        "/usr/bin/python3.11: file 4755 root:root, but all 1 ships file 0755 root:root",
        "/usr/lib/python3.11/colorsys.py: file 0666 root:root, but all 1 ships file 0644 root:root",
    ]
    assert unchecked == ["gone is not in the lock"]
    rows = filemeta.judge({"vm": art}, NoDebs({"all": shipped}))["vm"]["files"]
    assert rows[SPECIAL].startswith("/usr/bin/python3.11: file 4755")
    assert rows[UNCHECKED] == "gone is not in the lock"


def deb(tmp_path: Path, name: str, version: str) -> Path:
    """A real .deb (dpkg-deb) with a setuid program, a plain file and a link."""
    root = tmp_path / f"{name}-root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: t <t@t>\n"
        "Description: test\n"
    )
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "tool").write_text("#!/bin/sh\n")
    (root / "usr" / "bin" / "tool").chmod(0o4755)
    (root / "usr" / "bin" / "plain").write_text("#!/bin/sh\n")
    (root / "usr" / "bin" / "plain").chmod(0o755)
    (root / "usr" / "bin" / "alias").symlink_to("plain")
    out = tmp_path / f"{name}_{version}_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-b", str(root), str(out)],
        check=True,
        capture_output=True,
    )
    return out


def test_the_reference_is_the_locked_deb_read_from_the_cache(tmp_path: Path) -> None:
    made = deb(tmp_path, "tool", "1.0")
    cache = Cache(tmp_path / "cache")
    sha = sha256_file(made)
    row = DebPackage(
        "tool", "1.0", "all", sha, f"pool/main/t/tool/{made.name}", made.stat().st_size
    )
    lock = Lock(header={}, inputs={}, shared=[row], vm=[], python=[])
    debs = filemeta.Debs(lock, cache)
    assert "not in the cache" in str(debs.entries("tool", "1.0")) and "invoke fetch" in str(
        debs.entries("tool", "1.0")
    )
    debs = filemeta.Debs(lock, cache)  # a fresh reader: the first one remembers its answer
    cache.blob(sha).parent.mkdir(parents=True)
    cache.blob(sha).write_bytes(made.read_bytes())
    got = debs.entries("tool", "1.0")
    assert isinstance(got, dict)
    assert got["/usr/bin/tool"] == "file 4755 root:root"
    assert got["/usr/bin/alias"] == "link root:root -> plain"
    assert debs.entries("tool", "0.9") == "tool 0.9 installed, 1.0 locked"
    assert debs.entries("other", "1") == "other is not in the lock"
    # The artifact's setuid bit on `plain` is named against the .deb's 0755.
    art = listing(
        {
            "tool": (
                "1.0",
                {"/usr/bin/plain": "file 4755 root:root", "/usr/bin/tool": "file 4755 root:root"},
            )
        }
    )
    assert filemeta.against_debs(art, debs) == (
        ["/usr/bin/plain: file 4755 root:root, but tool 1.0 ships file 0755 root:root"],
        [],
    )
    # A cached blob whose bytes are not the lock's is no reference.
    cache.blob(sha).write_bytes(made.read_bytes() + b"x")
    assert "does not hash to the lock's sha256" in str(
        filemeta.Debs(lock, cache).entries("tool", "1.0")
    )


# --- a broken Python is a finding, never a traceback ------------------------------------------


LOCAL = testinfra.get_host("local://")


def test_a_python_that_does_not_run_is_named_with_its_path(tmp_path: Path) -> None:
    venv_python = tmp_path / "python"
    venv_python.symlink_to("/bin/true")  # `ln -sf /bin/true /usr/bin/python3`
    real = os.path.realpath("/bin/true")
    got = interpreter.probe(LOCAL, [str(venv_python), str(tmp_path / "gone"), sys.executable])
    assert got.tried[str(venv_python)] == (
        f"does not run Python (resolves to {real}): exit 0, printed nothing"
    )
    assert got.tried[str(tmp_path / "gone")].startswith("does not run Python: exit 127")
    assert got.working == sys.executable and got.tried[sys.executable] == interpreter.RUNS
    assert got.problem().startswith(f"{venv_python} does not run Python (resolves to {real})")
    assert got.problem().endswith(f"read with {sys.executable}")
    assert interpreter.rows(got) == {str(venv_python): got.problem().split(" ", 1)[1]}
    chatty = tmp_path / "chatty"  # endless output: cut, not waited for
    chatty.write_text("#!/bin/sh\nwhile :; do echo y; done\n")
    chatty.chmod(0o755)
    cut = interpreter.probe(LOCAL, [str(chatty)]).tried[str(chatty)]
    assert cut.startswith("does not run Python: exit unknown (output cut), printed 'y y y"), cut
    nothing = interpreter.probe(LOCAL, [str(venv_python)])
    assert nothing.working is None and nothing.problem().endswith("no Python here runs")
    runs = interpreter.probe(LOCAL, [sys.executable])
    assert runs.problem() == "" and interpreter.rows(runs) == {sys.executable: "runs"}


@pytest.mark.parametrize(
    ("rc", "stdout", "stderr", "message"),
    [
        (0, "", "", "x failed: exit 0, printed nothing"),
        (0, "[]", "", "x failed: exit 0, printed '[]'"),
        (1, '{"a": 1}', "Traceback: boom", "x failed: exit 1, printed 'Traceback: boom'"),
    ],
)
def test_a_script_output_that_is_not_its_json_is_named(
    rc: int, stdout: str, stderr: str, message: str
) -> None:
    with pytest.raises(interpreter.ScriptFailed) as e:
        interpreter.parse("x", rc, stdout, stderr)
    assert str(e.value) == message
    assert interpreter.parse("x", 0, '{"a": 1}') == {"a": 1}


def test_the_digest_script_on_a_broken_python_makes_its_rows_say_why(tmp_path: Path) -> None:
    """Started for real (in the background, on this machine) with /bin/true as its Python: no
    JSON comes back, and every row the script feeds says so instead of verify crashing."""
    broken = tmp_path / "python3"
    broken.symlink_to("/bin/true")
    spec = SimpleNamespace(python=None, app=None, gpu=None, stacks=[])
    run = filebytes.start(LOCAL, spec, str(broken))  # type: ignore[arg-type]
    facts, listing_ = filebytes.finish(run, timeout=60)
    assert listing_ is None
    assert (
        facts["unread"]["bytes"]
        == f"the file digest script ({broken}) failed: exit 0, printed nothing"
    )
    assert set(facts["unread"]) == set(filebytes.KINDS)
    assert not Path(run.out).exists() and not Path(f"{run.out}.err").exists()


def test_the_inventory_on_debians_python_keeps_what_it_can() -> None:
    """The spec's interpreter does not run, Debian's does: deb and lib are read with it, the
    venv's distributions and imports say why they are not."""
    pythons = interpreter.Interpreters(
        {"/opt/venv/bin/python": "does not run Python", sys.executable: interpreter.RUNS}
    )
    sections, unread = factsmod._inventory(LOCAL, None, pythons)  # type: ignore[arg-type]
    assert "dpkg" in sections["deb"] and sections["lib"]
    assert set(unread) == set(factsmod.VENV_KINDS)
    assert unread["python"].startswith("/opt/venv/bin/python does not run Python; read with")
    nothing = interpreter.Interpreters({"/opt/venv/bin/python": "does not run Python"})
    sections, unread = factsmod._inventory(LOCAL, None, nothing)  # type: ignore[arg-type]
    assert set(unread) == set(factsmod.INVENTORY_KINDS) and sections["deb"] == {}


# --- SIGTERM: pytest hands the interrupt back, nothing is collected twice ---------------------


def test_an_interrupt_in_the_suite_is_handed_back_to_verify(tmp_path: Path) -> None:
    """pytest turns a KeyboardInterrupt (SIGTERM's Terminated) during collection into exit 2
    and ends its session; the plugin keeps it for verify to raise again."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(
        "from imagebuild.errors import Terminated\n"
        "def pytest_generate_tests(metafunc):\n    raise Terminated\n"
    )
    (suite / "test_x.py").write_text("def test_x(item):\n    pass\n")
    caught = Interrupt()
    rc = pytest.main(
        [str(suite), "-q", "-p", "no:cacheprovider", "--rootdir", str(suite)], plugins=[caught]
    )
    assert rc == pytest.ExitCode.INTERRUPTED
    assert isinstance(caught.caught, Terminated)
    # A collection error also ends pytest's session by a KeyboardInterrupt of its own: no signal.
    (suite / "conftest.py").write_text(
        "def pytest_generate_tests(metafunc):\n    raise RuntimeError('no host')\n"
    )
    error = Interrupt()
    rc = pytest.main(
        [str(suite), "-q", "-p", "no:cacheprovider", "--rootdir", str(suite)], plugins=[error]
    )
    assert rc == pytest.ExitCode.INTERRUPTED and error.caught is None


def test_the_suite_collects_once_and_writes_no_report_when_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ~45 s a SIGTERM took: the suite's session end asked for the context again, and a
    context whose collection had been interrupted was collected anew, VMs and all."""
    conftest = load_file(ROOT / "imagebuild" / "verify" / "suite" / "conftest.py", "suite_conftest")
    calls = []

    def collect(path: str, project: object, config: object) -> dict[str, Any]:
        calls.append(path)
        raise Terminated

    monkeypatch.setattr(conftest, "_collect", collect)
    monkeypatch.setattr(conftest, "_project", lambda config, path: None)
    ctx = str(tmp_path / "context.json")
    config = SimpleNamespace(getoption=lambda _: ctx)
    for _ in range(2):
        with pytest.raises(Terminated):
            conftest._ctx(config)
    assert calls == [ctx]
    session = SimpleNamespace(config=config)
    conftest.pytest_sessionfinish(session, pytest.ExitCode.INTERRUPTED)
    assert calls == [ctx] and not (tmp_path / "report.json").exists()


# --- the disk image read on this host: hygiene and file contents, killed on unwinding ---------


def disk_image(tmp_path: Path, tamper: tuple[str, ...] = ()) -> Path:
    """A qcow2 whose root partition (at 1 MiB, as the base disk has it) is a real ext4."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "machine-id").write_text("")
    (rootfs / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (rootfs / "root" / ".ssh").mkdir(parents=True)
    (rootfs / "root" / ".ssh" / "authorized_keys").write_text("ssh-ed25519 AAAA left\n")
    (rootfs / "var" / "lib" / "dkms").mkdir(parents=True)
    (rootfs / "var" / "lib" / "dkms" / "mok.key").write_text("-----BEGIN PRIVATE KEY-----\n")
    (rootfs / "opt" / "app").mkdir(parents=True)
    (rootfs / "var" / "lib" / "dpkg").mkdir(parents=True)
    (rootfs / "var" / "lib" / "dpkg" / "status").write_text("")  # a database of no package
    (rootfs / "opt" / "app" / "main.py").write_text("print(1)\n")
    fs = tmp_path / "fs.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(rootfs), str(fs), "16M"], check=True)
    for command in tamper:  # what a hostile disk holds: debugfs writes it into the image
        subprocess.run(["debugfs", "-w", "-R", command, str(fs)], check=True, capture_output=True)
    raw = tmp_path / "disk.raw"
    with raw.open("wb") as out:
        out.truncate(1 << 20)
        out.seek(1 << 20)
        out.write(fs.read_bytes())
    qcow2 = tmp_path / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True
    )
    return qcow2


def children() -> set[str]:
    me = os.getpid()
    return set(Path(f"/proc/{me}/task/{me}/children").read_text().split())


def test_the_disk_hygiene_is_read_and_the_copy_never_outlives_an_interrupt(
    tmp_path: Path,
) -> None:
    qcow2 = disk_image(tmp_path)
    want = {"venv": None, "app": "/opt/app", "skip": []}
    with diskread.disk_reading(qcow2, want) as reading:
        assert reading is not None
        got = reading.hygiene()
        # its files dumped (debugfs in bubblewrap) and hashed by diskbytes.py, no mount
        contents = reading.contents()
    assert contents["app"] == {"main.py": hashlib.sha256(b"print(1)\n").hexdigest()}
    assert contents["deb"] == "none"
    assert got["authorized SSH keys (disk image)"] == "authorized_keys"
    assert got["root password (disk image)"] == "locked"
    assert got["/etc/machine-id content (disk image)"] == ""
    assert got["DKMS module-signing private key (disk image)"] == "/var/lib/dkms/mok.key"
    assert got.keys() == model.DISK_HYGIENE.keys()  # every row verify expects, read
    before = children()
    folders = set(Path(tempfile.gettempdir()).glob("imagebuild-disk-*"))
    with pytest.raises(Terminated), diskread.disk_reading(qcow2, want):
        raise Terminated  # SIGTERM while the copy runs
    assert children() == before
    assert set(Path(tempfile.gettempdir()).glob("imagebuild-disk-*")) == folders


@pytest.mark.parametrize(
    ("tamper", "refused"),
    [
        # a folder linked into itself: the dump would never end
        (("ln /opt /opt/app/loop",), "e2fsck -fn"),
        # a journal the guest's kernel would replay and debugfs does not
        (("feature needs_recovery",), "journal needs recovery"),
    ],
)
def test_a_disk_the_dump_would_misread_is_refused(
    tmp_path: Path, tamper: tuple[str, ...], refused: str
) -> None:
    qcow2 = disk_image(tmp_path, tamper)
    want = {"venv": None, "app": "/opt/app", "skip": []}
    with diskread.disk_reading(qcow2, want) as reading:
        assert reading is not None
        with pytest.raises(diskread.DiskReadError, match=refused):
            reading.contents()


def test_the_jail_sees_only_the_systems_programs_and_what_it_is_given(tmp_path: Path) -> None:
    """What debugfs, e2fsck and the hashing run in: should a hostile filesystem fool their
    parser, this host's other files (keys, credentials, /etc/shadow) are not there to read."""
    from imagebuild import vmboot

    secret = tmp_path / "secret"
    secret.write_text("key\n")
    cat = ["sh", "-c", f"cat {secret}; cat /etc/shadow; ls /root"]
    r = subprocess.run([*vmboot.jail([]), *cat], capture_output=True, text=True)
    assert r.returncode != 0 and "key" not in r.stdout and "root:" not in r.stdout, r
    r = subprocess.run([*vmboot.jail([secret]), "cat", str(secret)], capture_output=True)
    assert r.stdout == b"key\n", r
    r = subprocess.run([*vmboot.jail([secret]), "sh", "-c", f"echo x >> {secret}"])
    assert r.returncode != 0 and secret.read_text() == "key\n"  # given read-only


def test_a_sparse_file_cannot_fill_this_host(tmp_path: Path) -> None:
    """512 MiB of holes on a 16 MiB disk: the dump writes them out, into a tmpfs the size of
    the used blocks and some slack, which it fills; that is named, nothing else is written."""
    sparse = tmp_path / "sparse"
    with sparse.open("wb") as f:
        f.truncate(512 << 20)
    qcow2 = disk_image(tmp_path, (f"write {sparse} holes",))
    with diskread.disk_reading(qcow2, {"venv": None, "app": "/opt/app", "skip": []}) as reading:
        assert reading is not None
        with pytest.raises(diskread.DiskReadError, match="No space left on device"):
            reading.contents()


def test_a_mode_or_group_the_package_sets_itself_is_its_own() -> None:
    """openssh-client's postinst (as Debian ships it) makes ssh-agent setgid _ssh: that is the
    package's, not a finding; another mode, owner or path is."""
    from imagebuild.verify.filemeta import set_by_script

    script = (
        "if ! dpkg-statoverride --list /usr/bin/ssh-agent >/dev/null; then\n"
        "\tchgrp _ssh /usr/bin/ssh-agent\n\tchmod 2755 /usr/bin/ssh-agent\nfi\n"
    )
    deb = "file 0755 root:root"
    assert set_by_script(script, "/usr/bin/ssh-agent", "file 2755 root:_ssh", deb)
    assert not set_by_script(script, "/usr/bin/ssh-agent", "file 4755 root:_ssh", deb)
    assert not set_by_script(script, "/usr/bin/ssh-agent", "file 2755 nobody:_ssh", deb)
    assert not set_by_script(script, "/usr/bin/ssh-agent-x", "file 2755 root:_ssh", deb)
    assert not set_by_script(script, "/usr/bin/ssh", "file 2755 root:_ssh", deb)
    assert not set_by_script(script, "/usr/bin/ssh-agent", "link root:_ssh -> x", deb)
    assert not set_by_script("", "/usr/bin/ssh-agent", "file 2755 root:_ssh", deb)
