"""The app tree ships what a user means: VCS data and common secrets never (in any letter case),
`.imagebuildignore` (gitignore syntax) on top, links as links and never followed, and the build
record lists what shipped."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import pytest

from imagebuild import app_tree, requested
from imagebuild import spec as specmod
from imagebuild.errors import SpecError
from imagebuild.lock import lockfile
from imagebuild.resolved import resolve
from tests.conftest import EXAMPLE, run_invoke

SECRETS = (
    ".git/config",
    ".env",
    ".ENV",
    ".Env.local",
    "certs/server.pem",
    "certs/Secrets.PEM",
    "deploy/id_ed25519",
    "deploy/ID_RSA",
    ".ssh/known_hosts",
    ".git-credentials",
    ".kube/config",
    ".gnupg/pubring.kbx",
    "certs/client.p12",
    "certs/client.PFX",
    "credentials.json",
    "gcp/Credentials.JSON",
    "infra/terraform.tfstate",
    "infra/terraform.tfstate.backup",
    "infra/prod.tfvars",
    ".vault-token",
    ".docker/config.json",
    ".Aws/credentials",
)


def _project(tmp_path: Path) -> Path:
    """A private copy of the example (with its lock, for `invoke plan`); returns the app folder."""
    proj = tmp_path / "proj"
    shutil.copytree(EXAMPLE, proj, ignore=shutil.ignore_patterns("__pycache__"))
    return proj / "app"


def _shipped(app: Path) -> set[str]:
    spec = specmod.load(app.parent / "imagebuild.yaml")
    return {row.split(" ", 1)[1] for row in app_tree.manifest(spec)}


def _archive(app: Path, tmp_path: Path) -> dict[str, tarfile.TarInfo]:
    spec = specmod.load(app.parent / "imagebuild.yaml")
    archive = tmp_path / "app.tar"
    resolve(requested.of(spec), lockfile.read(EXAMPLE / "imagebuild.lock")).write_app_archive(
        archive
    )
    with tarfile.open(archive) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_secrets_and_ignored_files_are_not_shipped(tmp_path: Path) -> None:
    app = _project(tmp_path)
    for name in (
        *SECRETS,
        "data/big.bin",
        "notes/keep.md",
        "build.log",
        "BUILD.LOG",
        "keys.py",
        "infra/main.tf",
    ):
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text("secret\n")
    (app / ".imagebuildignore").write_text("# the user's own rules\ndata/\n*.log\n")
    names = _shipped(app)
    # the user's rules keep git's meaning: case-sensitive, so BUILD.LOG ships
    for kept in (
        "notes/keep.md",
        "app/infer.py",
        "default.yaml",
        "keys.py",
        "infra/main.tf",
        "BUILD.LOG",
    ):
        assert kept in names, kept
    gone = [*SECRETS, ".git/", ".ssh/", ".kube/", ".gnupg/", ".docker/", ".Aws/", "data/"]
    for name in (*gone, "build.log", ".imagebuildignore"):
        assert name not in names, name
    members = _archive(app, tmp_path)
    assert "opt/app/notes/keep.md" in members
    assert not [p for p in members if p.removeprefix("opt/app/") in SECRETS or "secret" in p]
    assert {(m.uid, m.gid) for m in members.values()} == {(0, 0)}


def test_a_user_can_re_include_a_default(tmp_path: Path) -> None:
    app = _project(tmp_path)
    (app / ".env").write_text("PUBLIC=1\n")
    (app / ".ENV").write_text("SECRET=1\n")
    (app / ".imagebuildignore").write_text("!.env\n")
    names = _shipped(app)
    assert ".env" in names and ".ENV" not in names  # only what the rule names, as git reads it


def test_a_link_inside_the_tree_ships_as_a_link(tmp_path: Path) -> None:
    app = _project(tmp_path)
    (app / "conf").mkdir()
    (app / "conf" / "current.yaml").symlink_to("../default.yaml")
    (app / "code").symlink_to("app", target_is_directory=True)  # a linked folder: not entered
    (app / "dangling").symlink_to("not-there")
    spec = specmod.load(app.parent / "imagebuild.yaml")
    rows = app_tree.manifest(spec)
    assert "0777 conf/current.yaml -> ../default.yaml" in rows
    assert "0777 code -> app" in rows and "0777 dangling -> not-there" in rows
    assert not [r for r in rows if " code/" in r]
    members = _archive(app, tmp_path)
    link = members["opt/app/conf/current.yaml"]
    assert (link.issym(), link.linkname) == (True, "../default.yaml")
    assert members["opt/app/code"].issym() and members["opt/app"].isdir()
    # the digest hashes the link's target as written, not the bytes behind it
    before = app_tree.digest(spec)
    (app / "conf" / "current.yaml").unlink()
    (app / "conf" / "current.yaml").symlink_to("../gpu.yaml")
    assert app_tree.digest(spec) != before


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda app: (app / "kcore").symlink_to("/proc/kcore"), "an absolute link"),
        (lambda app: (app / "shadow").symlink_to("/etc/shadow"), "an absolute link"),
        (lambda app: (app / "up").symlink_to("../" * 20 + "proc/kcore"), "to /proc/kcore)"),
        (lambda app: (app / "app" / "out").symlink_to("../../imagebuild.yaml"), "leads out"),
        (lambda app: os.mkfifo(app / "pipe"), "not a file, folder or symbolic link"),
    ],
    ids=["abs-kcore", "abs-shadow", "up-to-kcore", "out-of-app-folder", "fifo"],
)
def test_a_link_out_of_the_tree_is_refused_quickly(tmp_path: Path, make, says: str) -> None:
    """Before: the digest read /proc/kcore through the link (the build hung), a link to
    /etc/shadow shipped pointing at the image's own. Now: exit 2 naming the file, at once
    (`timeout` turns a hang into 124), through `invoke plan` (which hashes the app, builds
    nothing)."""
    app = _project(tmp_path)
    make(app)
    spec = app.parent / "imagebuild.yaml"
    bad = next(p for p in app.rglob("*") if p.is_symlink() or p.is_fifo())
    r = run_invoke(
        "plan",
        "--spec",
        str(spec),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--dist",
        str(tmp_path / "dist"),
        prefix=("timeout", "60"),
    )
    assert r.returncode == 2, r.stdout + r.stderr
    where = specmod.load(spec).where("app.src")
    assert f"{where}: app.src: {bad}: " in r.stderr and says in r.stderr, r.stderr
    assert not (tmp_path / "dist").exists() and not (tmp_path / "cache").exists()


def test_an_ignored_link_is_not_looked_at_and_the_rules_file_is_no_link(tmp_path: Path) -> None:
    app = _project(tmp_path)
    (app / ".git").mkdir()
    (app / ".git" / "kcore").symlink_to("/proc/kcore")  # inside an ignored folder: never read
    spec = specmod.load(app.parent / "imagebuild.yaml")
    assert app_tree.digest(spec)
    (app / ".imagebuildignore").symlink_to("/etc/shadow")
    with pytest.raises(SpecError, match=r"\.imagebuildignore must be a file, not a link"):
        app_tree.digest(spec)
