"""Spec values reach Ansible as data: a real ansible-playbook run (through provision.run, as
every container stage runs it) renders the roles' own templates with hostile values and runs
nothing on this host. The control case, the same values as plain extra vars (what
ansible-runner's own writer passes), shows what the test would catch."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from imagebuild import ansible_vars, provision
from imagebuild.roles import ROLES_DIR

HOSTILE = {
    "PIPE": "{{ lookup('pipe', 'touch MARKER') }}",
    "SECRET": "{{ lookup('env', 'IMAGEBUILD_TEST_SECRET') }}",
    "GO": "{{.Time}} {{ .Level }}",
    "BLOCK": "{% if true %}yes{% endif %}{# comment #}",
    "RAW": "{% raw %}x{% endraw %} ${HOME} %h %%",
}
PLAYBOOK = """
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.template:
        src: {roles}/app/templates/entrypoint.sh.j2
        dest: {out}/entrypoint
    - ansible.builtin.template:
        src: {roles}/vm_service/templates/unit.j2
        dest: {out}/unit
    - ansible.builtin.copy:
        content: "{{{{ imagebuild_env | to_json }}}}"
        dest: {out}/env.json
    - ansible.builtin.command:
        argv: "{{{{ imagebuild_app_build }}}}"
"""


def _run(tmp_path: Path, values: dict[str, str]) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK.format(roles=ROLES_DIR, out=out))
    extravars = {
        "imagebuild_env": values,
        "imagebuild_cmd": list(values.values()),
        "imagebuild_exec": ["/bin/true"],
        "imagebuild_app_dest": "/",
        "imagebuild_app_build": ["/bin/echo", *values.values()],
        "imagebuild_service_name": "imagebuild-x",
        "imagebuild_user": "app",
    }
    hostvars = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    provision.run("localhost", hostvars, extravars, None, tmp_path / "private", str(playbook))
    return out


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("IMAGEBUILD_TEST_SECRET", "s3cr3t-from-the-ci-environment")
    return {k: v.replace("MARKER", str(tmp_path / "ran")) for k, v in HOSTILE.items()}


def test_spec_values_ship_literally_and_run_nothing(tmp_path: Path, hostile: dict[str, str]):
    before = {k: v for k, v in os.environ.items() if k != "PATH"}  # run() may add the venv
    out = _run(tmp_path, hostile)
    assert {k: v for k, v in os.environ.items() if k != "PATH"} == before
    assert not (tmp_path / "ran").exists()  # the pipe lookup never ran
    assert json.loads((out / "env.json").read_text()) == hostile
    wrapper, unit = (out / "entrypoint").read_text(), (out / "unit").read_text()
    for key, value in hostile.items():
        assert f"export {key}={shlex.quote(value)}" in wrapper  # quoted for sh, else as written
        assert f'Environment="{key}={value.replace("%", "%%")}"' in unit
    assert "s3cr3t" not in wrapper + unit


def test_the_control_plain_extra_vars_are_rendered(
    tmp_path: Path, hostile: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the test above guards against, seen happen: the same values as plain JSON (what
    # ansible-runner's own writer passes) are templates to Ansible. The Go template cannot
    # render, so it is left out of the control.
    monkeypatch.setattr(ansible_vars, "dumps", json.dumps)
    del hostile["GO"]
    out = _run(tmp_path, hostile)
    assert (tmp_path / "ran").exists()
    assert "s3cr3t-from-the-ci-environment" in (out / "entrypoint").read_text()


def test_every_value_arrives_as_the_value_it_is() -> None:
    """Read back by Ansible's own loader (what `--extra-vars @FILE` uses): strings YAML would
    take for something else stay strings (ansible-core 2.19 re-resolves an `!unsafe` scalar as a
    plain one, so those are not tagged: they hold no template marker), templates stay text."""
    from ansible.parsing.dataloader import DataLoader

    tricky = [
        "",
        "yes",
        "No",
        "1",
        "0755",
        "0x1F",
        "1e3",
        ".inf",
        "null",
        "~",
        "2001-01-01",
        ": x",
        "- x",
        "#x",
        "'q'",
        '"q"',
        "a\\b",
        "{",
        "{a: 1}",
        "[1]",
    ]
    tricky += HOSTILE.values()
    values = {"s": tricky, "env": dict.fromkeys(["A", "B"], "yes"), "i": 3, "b": True, "n": None}
    text = ansible_vars.dumps(values)
    assert DataLoader().load(text) == values
    assert text.count("!unsafe") == len(HOSTILE)  # exactly the strings with a template marker
