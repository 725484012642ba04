"""YAML -> dataclasses, driven by the type hints and metadata of any settings table: the
conversion with errors at the value's line, unknown keys with a did-you-mean, the field checks,
and the Markdown reference made from the same table."""

from __future__ import annotations

import dataclasses
import difflib
import types
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from imagebuild.spec_checks import CONTROL, Check, Context

_TAGS = {str: ("str", "a string"), int: ("int", "an integer"), bool: ("bool", "a boolean")}


INVALID = object()  # marks a value that already produced an error


def _join(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"{node.tag.rsplit(':', 1)[-1]} {node.value!r}"


def _convert(tp: Any, node: yaml.Node, path: str, ctx: Context) -> Any:
    ctx.lines.setdefault(path, node.start_mark.line + 1)
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return None
        return _convert(next(a for a in args if a is not type(None)), node, path, ctx)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build_dataclass(tp, node, path, ctx)
    if origin is list:
        if not isinstance(node, yaml.SequenceNode):
            ctx.fail(node, path, f"must be a list, got {_describe(node)}")
            return INVALID
        return [_convert(args[0], item, _join(path, i), ctx) for i, item in enumerate(node.value)]
    if origin is dict:
        if not isinstance(node, yaml.MappingNode):
            ctx.fail(node, path, f"must be a mapping, got {_describe(node)}")
            return INVALID
        out = {}
        for k, v in node.value:
            if CONTROL.search(str(k.value)):
                ctx.fail(k, _join(path, repr(k.value)), "key contains a control character")
            out[k.value] = _convert(args[1], v, _join(path, k.value), ctx)
        return out
    tag, want = _TAGS[tp]
    if not isinstance(node, yaml.ScalarNode) or not node.tag.endswith(":" + tag):
        hint = " (quote it)" if tp is str and isinstance(node, yaml.ScalarNode) else ""
        ctx.fail(node, path, f"must be {want}, got {_describe(node)}{hint}")
        return INVALID
    if tp is str and CONTROL.search(node.value):
        # A newline would add a line to the VM's unit or the wrapper; nothing legitimate needs one.
        ctx.fail(node, path, f"{node.value!r} contains a control character (newline, tab, ...)")
        return INVALID
    return int(node.value, 0) if tp is int else node.value


def _run_check(check: Check, value: Any, node: yaml.Node, path: str, ctx: Context) -> None:
    if check is not None and value is not INVALID and value is not None:
        message = check(value, ctx)
        if message:
            ctx.fail(node, path, message)


def build_dataclass(cls: type, node: yaml.Node, path: str, ctx: Context) -> Any:
    if not isinstance(node, yaml.MappingNode):
        ctx.fail(node, path or "(top level)", f"must be a mapping, got {_describe(node)}")
        return INVALID
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    given: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for k, v in node.value:
        key = str(k.value)
        if key in given:
            ctx.fail(k, _join(path, key), "duplicate key")
        elif key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(fields)}"
            ctx.fail(k, _join(path, key), f"unknown key{hint}")
        given[key] = (k, v)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        fpath = _join(path, name)
        if name not in given:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                ctx.fail(node, fpath, "missing required field")
            continue
        _, vnode = given[name]
        value = _convert(hints[name], vnode, fpath, ctx)
        _run_check(f.metadata.get("check"), value, vnode, fpath, ctx)
        if f.metadata.get("item_check") and isinstance(value, list):
            for i, (item, inode) in enumerate(zip(value, vnode.value, strict=True)):
                _run_check(f.metadata["item_check"], item, inode, _join(fpath, i), ctx)
        values[name] = value
    if any(v is INVALID for v in values.values()) or ctx.errors:
        return INVALID
    return cls(**values)


def field_problem(root: type, path: str, value: Any, ctx: Context) -> str | None:
    """What field `path` ("vm.ami.region") of the table `root` says of `value`, by its own
    check, as a spec file's value gets it: a command-line override is checked the same way."""
    *parents, leaf = path.split(".")
    cls: Any = root
    for part in parents:
        hint = get_type_hints(cls)[part]
        cls = next(a for a in (get_args(hint) or (hint,)) if dataclasses.is_dataclass(a))
    check = {f.name: f for f in dataclasses.fields(cls)}[leaf].metadata.get("check")
    return check(value, ctx) if check is not None else None


def _type_name(tp: Any) -> str:
    args = [a for a in get_args(tp) if a is not type(None)]
    if get_origin(tp) in (Union, types.UnionType):
        return f"{_type_name(args[0])} or null"
    if args:
        return f"{tp.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return "mapping" if dataclasses.is_dataclass(tp) else tp.__name__


def reference(cls: type, prefix: str = "") -> list[str]:
    """Markdown rows `| field | type | default | meaning |` for the README."""
    rows = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        tp = hints[f.name]
        inner = next((a for a in get_args(tp) if dataclasses.is_dataclass(a)), tp)
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            made = f.default_factory()
            default = "see below" if dataclasses.is_dataclass(made) else repr(made)
        else:
            default = "required"
        rows.append(
            f"| `{prefix}{f.name}` | {_type_name(tp)} | `{default}` | {f.metadata['doc']} |"
        )
        if isinstance(inner, type) and dataclasses.is_dataclass(inner):
            rows += reference(inner, f"{prefix}{f.name}.")
    return rows
