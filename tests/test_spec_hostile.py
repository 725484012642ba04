"""Hostile and careless specs are refused at their line (exit 2, nothing written); legal but
special values reach the VM's unit and the wrapper exactly."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pytest
import yaml

from imagebuild import requested, roles
from imagebuild import spec as specmod
from imagebuild.lock import lockfile
from imagebuild.resolved import resolve
from tests.conftest import EXAMPLE, run_invoke

# (field path, YAML value written at that path, what the error must say)
HOSTILE = [
    ("env.TZ", "UTC\nUser=root", "control character"),
    ("env", {"BAD KEY": "x"}, "not a valid environment variable name"),
    ("env", {"OK\n": "x"}, "control character"),
    ("app.src", "/root", "outside the project root"),
    ("app.src", "../" * 16 + "etc", "outside the project root"),
    ("python.requirements", "../" * 16 + "etc/hostname", "outside the project root"),
    ("python.venv", "/opt/venv --system-site-packages", "clean absolute path"),
    ("python.venv", "/opt/../etc", "clean absolute path"),
    ("app.dest", "/", "clean absolute path"),
    ("version", "1.0+local", "not a valid image tag"),
    ("version", "0.1.0\n", "control character"),
    ("user", "app\n", "control character"),
    ("user", "root", "not a valid non-root user name"),
    ("entrypoint", ["/opt/venv/bin/python", "-m", "app\nUser=root"], "control character"),
    ("cmd", ["--config", "a\tb"], "control character"),
    ("vm.disk_gb", 1000000, "not between 2 and 2048"),
    ("vm.cpus", 0, "not between 1 and 256"),
    ("base.mirror", "http://deb.debian.org/debian' ; touch /tmp/x ; '", "not an http(s) URL"),
    ("base.mirror", "file:///etc", "not an http(s) URL"),
    ("name", "onnx serve", "not a lower-case name"),
    ("project_root", "..\n", "control character"),
    ("cache.registry", "127.0.0.1:5000/cache\n", "control character"),
    ("cache.registry", "127.0.0.1:5000/c' ; touch /tmp/x ; '", "not a registry repository"),
    ("cache.registry", "127.0.0.1:5000/../etc", "not a registry repository"),
    ("cache.registry", "/var/lib/cache", "not a registry repository"),
    ("project_root", "no-such-folder", "not found"),
    ("verify.commands", [["--check\nUser=root"]], "control character"),
    ("verify.ignore", ["(unclosed"], "not a regular expression"),
    ("base.snapshot_url", "http://x/' ; id ; '", "not an http(s) URL"),
    ("vm.ami.ssh_cidrs", ["0.0.0.0/0"], "opens SSH to everyone"),
    ("vm.ami.ssh_cidrs", ["10.0.0.1/8"], "not a network in CIDR form"),
    ("vm.ami.ssh_cidrs", ["1.2.3.4/32 -p 22"], "not a network in CIDR form"),
    ("vm.ami.ssh_username", "admin;id", "not a user name"),
    ("project_root", "../" * 16, "the project root / holds"),
    ("project_root", "/tmp", "the project root /tmp is the system folder /tmp"),
    ("project_root", "/etc", "is the system folder /etc"),
    ("name", "ssh-hostkeys", "would replace imagebuild's own unit"),
    ("project_root", "/etc/ssh", "is inside the system folder /etc"),
    ("project_root", "/var/lib/docker/volumes", "is inside the system folder /var/lib/docker"),
    # Written into the resolver's sources.list and apt options only after this check.
    ("base.architectures", ["amd64", "arm64\n"], "control character"),
    ("base.architectures", ["amd64", "arm64] trusted=yes"], "is not one of amd64, arm64"),
    ("base.architectures", ["amd64", "../../etc"], "is not one of amd64, arm64"),
    ("base.architectures", ["amd64", "/abs"], "is not one of amd64, arm64"),
    ("base.architectures", ["amd64", 10**30], "must be a string"),
    ("base.architectures", ["amd64", "arm64'"], "did you mean 'arm64'"),
    ("base.architectures", "arm64", "must be a list"),
]


def _set(data: dict, path: str, value: object) -> None:
    *parents, last = path.split(".")
    for p in parents:  # a section the example lacks is added (an empty one replaced)
        if not isinstance(data.get(p), dict) or not data[p]:
            data[p] = {}
        data = data[p]
    data[last] = value


def _example(proj: Path, **fields: object) -> Path:
    """A private copy of the example in `proj` with `fields` (dotted paths) set."""
    shutil.copytree(EXAMPLE, proj, ignore=shutil.ignore_patterns("*.lock", "__pycache__"))
    spec = proj / "imagebuild.yaml"
    data = yaml.safe_load(spec.read_text())
    for path, value in fields.items():
        _set(data, path, value)
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    return spec


def test_a_version_too_long_for_another_architecture_s_tag(tmp_path: Path) -> None:
    """VERSION-arm64 must still be a tag Docker takes: refused at `version`, before a build."""
    fields = {"base.architectures": ["amd64", "arm64"], "version": "1" * 123}
    spec = _example(tmp_path / "proj", **fields)
    r = run_invoke("lock", "--spec", str(spec), "--cache-dir", str(tmp_path / "cache"))
    assert r.returncode == 2 and f"{spec}:" in r.stderr and "version: 123 characters" in r.stderr
    assert "limits to 128 characters" in r.stderr and not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("path", "value", "says"), HOSTILE, ids=[f"{p}-{i}" for i, (p, _, _) in enumerate(HOSTILE)]
)
def test_a_hostile_spec_is_refused_at_its_line(
    tmp_path: Path, path: str, value: object, says: str
) -> None:
    spec = _example(tmp_path / "proj", **{path: value})
    before = sorted(p.name for p in tmp_path.rglob("*"))
    r = run_invoke("lock", "--spec", str(spec), "--cache-dir", str(tmp_path / "cache"))
    assert r.returncode == 2, r.stderr
    field = path.split(".")[-1] if path.startswith("env") else path
    assert f"{spec}:" in r.stderr and field in r.stderr and says in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.parametrize(
    ("path", "value", "says"),
    [
        ("app.src", ".git", "'.git' (or inside it) of the project, which never ships"),
        ("app.src", "app/.AWS", "'app/.AWS' (or inside it) of the project, which never ships"),
        ("python.requirements", "credentials.json", "'credentials.json' (or inside it)"),
    ],
)
def test_a_spec_cannot_name_what_never_ships(
    tmp_path: Path, path: str, value: str, says: str
) -> None:
    """The default rules drop VCS data and credentials inside the app tree; naming such a
    folder or file as what ships (`app.src: .git`) is refused at its line, not shipped."""
    spec = _example(tmp_path / "proj", **{path: value})
    (tmp_path / "proj" / ".git").mkdir()
    (tmp_path / "proj" / ".git" / "config").write_text("[credential]\n")
    (tmp_path / "proj" / "app" / ".AWS").mkdir()
    (tmp_path / "proj" / "app" / ".AWS" / "credentials").write_text("secret\n")
    (tmp_path / "proj" / "credentials.json").write_text("{}\n")
    r = run_invoke("lock", "--spec", str(spec), "--cache-dir", str(tmp_path / "cache"))
    assert r.returncode == 2 and f"{spec}:" in r.stderr and says in r.stderr, r.stderr
    assert not (tmp_path / "cache").exists()


def test_a_project_inside_a_homes_hidden_folder_is_refused(tmp_path: Path) -> None:
    """`~/.docker/proj` (config.json with registry tokens beside it) cannot be a project root."""
    home = tmp_path / "home"
    spec = _example(home / ".docker" / "proj")
    r = run_invoke(
        "lock", "--spec", str(spec), "--cache-dir", str(tmp_path / "cache"), env={"HOME": str(home)}
    )
    assert r.returncode == 2 and "a home's hidden folder" in r.stderr, r.stderr
    assert str(home / ".docker") in r.stderr and not (tmp_path / "cache").exists()


def test_the_root_folder_as_project_root_cannot_ship_root_s_home(tmp_path: Path) -> None:
    """`project_root: /` used to make `app.src: /root` legal: refused at the root's line."""
    spec = _example(tmp_path / "proj", project_root="/", **{"app.src": "/root"})
    r = run_invoke("lock", "--spec", str(spec), "--cache-dir", str(tmp_path / "cache"))
    assert r.returncode == 2, r.stderr
    line = next(
        i for i, ln in enumerate(spec.read_text().splitlines(), 1) if ln.startswith("project_root:")
    )
    assert f"{spec}:{line}: project_root: the project root / holds" in r.stderr, r.stderr
    assert not (tmp_path / "cache").exists()


def test_a_home_is_no_project_root_even_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spec right in the user's home (HOME as the process sees it) would let `app.src: .`
    ship ~/.ssh: refused, though `project_root` is unset (so at line 1). A project folder
    inside the home is the ordinary case and loads."""
    home = tmp_path / "home"
    spec = _example(home)
    r = run_invoke(
        "lock", "--spec", str(spec), "--cache-dir", str(tmp_path / "cache"), env={"HOME": str(home)}
    )
    assert r.returncode == 2, r.stderr
    says = f"{spec}:1: project_root: the project root {home.resolve()} is the home"
    assert says in r.stderr, r.stderr
    monkeypatch.setenv("HOME", str(home))
    assert specmod.load(_example(home / "src" / "proj")).name == "onnx-serve"


@pytest.mark.parametrize("name", ["ssh", "cloud-init", "systemd-tmpfiles-setup"])
def test_an_os_unit_s_name_gets_its_own_unit(tmp_path: Path, name: str) -> None:
    """The VM's unit is `imagebuild-<name>.service`: a spec named like an OS unit no longer
    writes over it (the VM kept no sshd / cloud-init), through the values the build passes."""
    spec = specmod.load(_example(tmp_path / "proj", name=name))
    lock = lockfile.read(EXAMPLE / "imagebuild.lock")
    assert (
        resolve(requested.of(spec), lock).vm_vars()["imagebuild_service_name"]
        == f"imagebuild-{name}"
    )
    tasks = (roles.ROLES_DIR / "vm_service" / "tasks" / "main.yml").read_text()
    assert tasks.count("/{{ imagebuild_service_name }}.service") == 3
    # verify asks systemd about that unit, not the OS's namesake
    asked: list[str] = []

    class Vm:
        def run(self, command: str) -> SimpleNamespace:
            asked.append(command)
            return SimpleNamespace(stdout="failed\n", stderr="", rc=0)

    from imagebuild.verify import service

    rows = service.facts(Vm(), "vm", spec)["service"]
    assert rows["running as shipped"] == "failed"
    assert asked[0] == f"systemctl is-active imagebuild-{name}.service"
    assert f"-u imagebuild-{name}.service " in asked[1]


SPECIAL = "a%b $HOME \"dq\" 'sq' back\\slash  two  spaces"


def _render(template: Path, **values: object) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["quote"] = shlex.quote
    return env.from_string(template.read_text()).render(**values)


def test_special_env_values_reach_the_wrapper_exactly(tmp_path: Path) -> None:
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(
        _render(
            roles.ROLES_DIR / "app" / "templates" / "entrypoint.sh.j2",
            imagebuild_env={"K": SPECIAL},
            imagebuild_app_dest=str(tmp_path),
            imagebuild_cmd=[],
            imagebuild_exec=["/usr/bin/printenv", "K"],
        )
    )
    r = subprocess.run(["sh", str(wrapper)], capture_output=True, text=True, env={})
    assert (r.returncode, r.stdout) == (0, SPECIAL + "\n"), r.stderr


def test_special_env_values_are_escaped_for_systemd(tmp_path: Path) -> None:
    unit = _render(
        roles.ROLES_DIR / "vm_service" / "templates" / "unit.j2",
        imagebuild_env={"K": SPECIAL},
        imagebuild_service_name="x",
        imagebuild_user="app",
        imagebuild_app_dest="/opt/app",
    )
    line = next(ln for ln in unit.splitlines() if ln.startswith("Environment="))
    # What systemd does with it: strip the quotes, undo \\ and \", turn %% into %.
    quoted = line.removeprefix('Environment="').removesuffix('"')
    value = quoted.replace("%%", "\0").replace('\\"', '"').replace("\\\\", "\\")
    assert value.replace("\0", "%") == f"K={SPECIAL}"
    assert "%" not in quoted.replace("%%", "")  # no single % left for specifier expansion


HOSTILE_WORDS = [SPECIAL, "; touch /tmp/pwned", "$(id)", "`id`", "a\\'b", "--flag=x y", "*", ""]


def test_hostile_arguments_stay_one_word_in_the_wrapper(tmp_path: Path) -> None:
    """cmd and entrypoint arguments (legal in a spec) reach the program as the same argv."""
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(
        _render(
            roles.ROLES_DIR / "app" / "templates" / "entrypoint.sh.j2",
            imagebuild_env={},
            imagebuild_app_dest=str(tmp_path),
            imagebuild_cmd=HOSTILE_WORDS,
            imagebuild_exec=["/usr/bin/printf", "[%s]\\n"],
        )
    )
    r = subprocess.run(["sh", str(wrapper)], capture_output=True, text=True, cwd=tmp_path)
    assert r.stdout == "".join(f"[{w}]\n" for w in HOSTILE_WORDS), r.stderr
    assert not (tmp_path / "pwned").exists()


def test_the_mirror_hook_writes_the_line_and_runs_nothing(tmp_path: Path) -> None:
    """mmdebstrap's customize hook, run the way mmdebstrap runs it (`sh -c HOOK sh ROOT`),
    with a source line crafted to close the quote (the lock schema refuses such a mirror
    first; this is the second wall)."""
    from imagebuild.builders.base_layer import sources_hook

    (tmp_path / "etc" / "apt").mkdir(parents=True)
    line = f"deb http://x/' ; touch {tmp_path}/pwned ; ' bookworm main $(id) `id`"
    r = subprocess.run(["sh", "-c", sources_hook(line), "sh", str(tmp_path)])
    assert r.returncode == 0
    assert (tmp_path / "etc" / "apt" / "sources.list").read_text() == line + "\n"
    assert not (tmp_path / "pwned").exists()


def test_the_login_key_cannot_add_qemu_options() -> None:
    """QEMU splits option values at commas: a key with one (or a second line) is refused."""
    from imagebuild import vmboot

    args = vmboot.guest_args(2222, "ssh-ed25519 AAAAC3Nza k@h\n")
    assert args[-1] == f"type=11,value={vmboot.LOGIN_CREDENTIAL}=ssh-ed25519 AAAAC3Nza k@h"
    for bad in ("ssh-ed25519 AAAA,file=/etc/shadow", "ssh-ed25519 A\nssh-rsa B"):
        with pytest.raises(vmboot.BootError):
            vmboot.guest_args(2222, bad)


def test_every_shell_task_splits_as_ansible_splits_it() -> None:
    """Ansible splits a free-form `shell:` string as key=value arguments first: an odd quote in
    a comment (an apostrophe) fails the play at load time, on the build VM, minutes in."""
    from ansible.parsing.splitter import split_args

    found = 0
    for tasks in roles.ROLES_DIR.glob("*/tasks/*.yml"):
        for task in yaml.safe_load(tasks.read_text()) or []:
            for key in ("ansible.builtin.shell", "shell", "ansible.builtin.command"):
                if isinstance(task.get(key), str):
                    found += 1
                    try:
                        split_args(task[key])
                    except Exception as e:  # AnsibleParserError: which task, and why
                        pytest.fail(f"{tasks}: {task.get('name')}: {e}")
    assert found > 5


def test_systemctl_show_quoting_is_read_back_exactly() -> None:
    """verify reads the VM unit's Environment= from `systemctl show`, which quotes a value
    with specials as systemd's shell_maybe_quote does (backslash before \\ " $ `)."""
    from imagebuild.verify.facts import systemd_words

    def systemd_quote(word: str) -> str:
        if not any(c in word for c in " \\\"$`'"):
            return word
        return '"' + "".join("\\" + c if c in '\\"$`' else c for c in word) + '"'

    words = [f"K={SPECIAL}", "PLAIN=1", "TICK=`id` \\$x", "EMPTY="]
    assert systemd_words(" ".join(systemd_quote(w) for w in words)) == words
