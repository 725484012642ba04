"""The one way variables reach Ansible: a YAML file for `--extra-vars @FILE`, every string in it
that holds a template marker tagged `!unsafe`.

Extra vars are trusted templates to Ansible: it renders `{{ }}`, `{% %}` and `{# #}` in them on
the controller, as root, when a task uses the value (`{{ lookup('pipe', ...) }}` runs a command,
`{{ lookup('env', ...) }}` copies a CI secret into the image, `{{.Time}}` fails the build). Spec
values are data: tagged unsafe, Ansible passes them through templates, modules and files as
they are, byte for byte. Both ways Ansible runs (ansible-runner for the container stages,
Packer's provisioner for the VM) read this file, so the two artifacts get the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class _Unsafe(str):
    """A string value to be written with the `!unsafe` tag (keys stay plain: they are ours or
    checked by the spec's grammar, and Ansible does not render keys)."""


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"')


def _represent_unsafe(dumper: yaml.SafeDumper, value: _Unsafe) -> yaml.Node:
    # Double-quoted: every character escaped as YAML defines, nothing left to a plain scalar's
    # rules (a value like `yes`, `~` or `: x` stays the string it is).
    return dumper.represent_scalar("!unsafe", str(value), style='"')


_Dumper.add_representer(_Unsafe, _represent_unsafe)
_Dumper.add_representer(str, _represent_str)


# What starts a Jinja construct in Ansible (its default delimiters, which imagebuild's
# ansible.cfg keeps). Only strings holding one are tagged: ansible-core 2.19 re-resolves an
# `!unsafe` scalar as if it were plain, so a tagged "yes", "1", "0755" or "" would arrive as
# True, 1, 493 or None; an untagged, double-quoted string is always the string, and one without
# these markers has nothing Ansible could render.
TEMPLATE_MARKS = ("{{", "{%", "{#")


def _tagged(value: Any) -> Any:
    if isinstance(value, str):
        return _Unsafe(value) if any(m in value for m in TEMPLATE_MARKS) else value
    if isinstance(value, dict):
        return {str(k): _tagged(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_tagged(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    raise TypeError(f"not an Ansible variable value: {type(value).__name__}")


def dumps(values: dict[str, Any]) -> str:
    # Every plain string double-quoted too: its type never depends on YAML's implicit rules.
    return yaml.dump(
        _tagged(values), Dumper=_Dumper, sort_keys=True, allow_unicode=True, width=1 << 16
    )


def write(values: dict[str, Any], dest: Path) -> Path:
    """Write `values` for `--extra-vars @dest`; returns `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(dumps(values))
    return dest
