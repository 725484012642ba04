"""The app tree ships what a user means: VCS data and common secrets never, `.imagebuildignore`
(gitignore syntax) on top, and the build record lists what shipped."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

from imagebuild import app_tree
from imagebuild import spec as specmod
from imagebuild.lock import lockfile
from imagebuild.resolved import resolve
from tests.conftest import EXAMPLE


def test_secrets_and_ignored_files_are_not_shipped(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    shutil.copytree(EXAMPLE, proj, ignore=shutil.ignore_patterns("__pycache__"))
    app = proj / "app"
    for name in (".git/config", ".env", "certs/server.pem", "deploy/id_ed25519", ".ssh/known_hosts",
                 "data/big.bin", "notes/keep.md", "build.log"):  # fmt: skip
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text("secret\n")
    (app / ".imagebuildignore").write_text("# the user's own rules\ndata/\n*.log\n")
    spec = specmod.load(proj / "imagebuild.yaml")
    shipped = app_tree.manifest(spec)
    names = {row.split(" ", 1)[1] for row in shipped}
    assert "notes/keep.md" in names and "app/infer.py" in names and "default.yaml" in names
    for gone in (".git/", ".env", "certs/server.pem", "deploy/id_ed25519", ".ssh/", "data/",
                 "build.log", ".imagebuildignore"):  # fmt: skip
        assert gone not in names, gone
    lock = lockfile.read(EXAMPLE / "imagebuild.lock")
    archive = tmp_path / "app.tar"
    resolve(spec, lock).write_app_archive(archive)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
    paths = {m.name for m in members}
    assert "opt/app/notes/keep.md" in paths
    assert not [p for p in paths if "secret" in p or p.endswith((".pem", ".env", "id_ed25519"))]
    assert {(m.uid, m.gid) for m in members} == {(0, 0)}


def test_a_user_can_re_include_a_default(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    shutil.copytree(EXAMPLE, proj, ignore=shutil.ignore_patterns("__pycache__"))
    (proj / "app" / ".env").write_text("PUBLIC=1\n")
    (proj / "app" / ".imagebuildignore").write_text("!.env\n")
    names = {
        row.split(" ", 1)[1] for row in app_tree.manifest(specmod.load(proj / "imagebuild.yaml"))
    }
    assert ".env" in names
