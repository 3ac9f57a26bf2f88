"""Which changes to a message's JSON Schema break its readers, and which do not.

A contract is the JSON Schema of one message — an event's payload at one version, a task's
message body, the envelope — as pydantic writes it. :func:`compare` takes the schema a
contract had and the one it has now and says what changed, field by field: a change that a
reader of the old schema cannot follow is *breaking* (a field removed or renamed, a type
changed, a new required field, a bound or enum narrowed, a pattern changed); a widening is
*compatible* (a new optional field, an enum or a bound widened). Plain functions over
dictionaries: ``$ref`` is resolved against the schema's own ``$defs``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

Schema = Mapping[str, Any]

#: Bounds a reader relies on: raising a lower one, or lowering an upper one, narrows what is
#: valid. A bound added narrows too; one dropped widens.
LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
#: Keywords that say nothing about what is valid.
ANNOTATIONS = frozenset({"title", "description", "examples", "default", "$defs", "$ref"})
#: Keywords compared on their own, by the functions below.
STRUCTURE = frozenset(
    {"type", "anyOf", "properties", "required", "additionalProperties", "items", "prefixItems", "enum", "const"}
)


@dataclass(frozen=True)
class Change:
    """One difference between two schemas: where (a field's path, ``lines[].qty``), what, and
    whether a reader of the old schema can still read messages of the new one."""

    field: str
    what: str
    breaking: bool

    def __str__(self) -> str:
        return f"field {self.field}: {self.what}" if self.field else self.what


def compare(old: Schema, new: Schema) -> list[Change]:
    """Every change from ``old`` to ``new``, breaking ones first, in field order."""
    changes = list(_walk(_resolve(old, old), _resolve(new, new), ""))
    return sorted(changes, key=lambda change: not change.breaking)


def _resolve(node: Any, root: Schema, depth: int = 0) -> Any:
    """``node`` with every ``$ref`` into ``root``'s ``$defs`` replaced by what it names."""
    if depth > 32:
        raise ValueError("schema nests too deep (a recursive $ref?)")
    if isinstance(node, list):
        return [_resolve(item, root, depth + 1) for item in node]
    if not isinstance(node, Mapping):
        return node
    if "$ref" in node:
        name = str(node["$ref"]).removeprefix("#/$defs/")
        target = root.get("$defs", {}).get(name)
        if target is None:
            raise ValueError(f"unresolvable $ref {node['$ref']!r}")
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, root, depth + 1)
    return {key: _resolve(value, root, depth + 1) for key, value in node.items() if key != "$defs"}


def _nullable(node: Schema) -> tuple[Schema, bool]:
    """An ``anyOf`` of one schema and null (how pydantic writes ``X | None``) as that schema
    and True; any other node as itself."""
    branches = node.get("anyOf")
    if isinstance(branches, list) and len(branches) == 2 and {"type": "null"} in branches:
        (inner,) = [branch for branch in branches if branch != {"type": "null"}]
        return {**{k: v for k, v in node.items() if k != "anyOf"}, **inner}, True
    return node, False


def _types(node: Schema) -> set[str]:
    declared = node.get("type")
    if declared is None:
        return set()
    return {declared} if isinstance(declared, str) else set(declared)


def _walk(old: Schema, new: Schema, path: str) -> Iterator[Change]:
    old, old_null = _nullable(old)
    new, new_null = _nullable(new)
    if old_null and not new_null:
        yield Change(path, "no longer nullable", True)
    elif new_null and not old_null:
        yield Change(path, "now nullable", False)
    old_types, new_types = _types(old), _types(new)
    if old_types != new_types or _strip(old.get("anyOf")) != _strip(new.get("anyOf")):
        widened = bool(old_types) and old_types < new_types and "anyOf" not in old and "anyOf" not in new
        was, now = _type_name(old), _type_name(new)
        yield Change(path, f"type {'widened' if widened else 'changed'} from {was} to {now}", not widened)
        if not widened:
            return
    yield from _bounds(old, new, path)
    yield from _choices(old, new, path)
    yield from _others(old, new, path)
    yield from _object(old, new, path)
    yield from _array(old, new, path)


def _type_name(node: Schema) -> str:
    if "anyOf" in node:
        return " | ".join(_type_name(branch) for branch in node["anyOf"])
    return "/".join(sorted(_types(node))) or "any"


def _bounds(old: Schema, new: Schema, path: str) -> Iterator[Change]:
    for key in (*LOWER_BOUNDS, *UPPER_BOUNDS):
        was, now = old.get(key), new.get(key)
        if was == now:
            continue
        if was is None:
            yield Change(path, f"{key} {now} added", True)
        elif now is None:
            yield Change(path, f"{key} {was} removed", False)
        else:
            narrowed = now > was if key in LOWER_BOUNDS else now < was
            direction = ("raised" if now > was else "lowered") + f" from {was} to {now}"
            yield Change(path, f"{key} {direction}", narrowed)
    if old.get("pattern") != new.get("pattern"):
        if "pattern" not in new:
            yield Change(path, f"pattern {old['pattern']!r} removed", False)
        else:
            yield Change(path, f"pattern changed from {old.get('pattern')!r} to {new['pattern']!r}", True)


def _choices(old: Schema, new: Schema, path: str) -> Iterator[Change]:
    was = old["enum"] if "enum" in old else [old["const"]] if "const" in old else None
    now = new["enum"] if "enum" in new else [new["const"]] if "const" in new else None
    if was == now:
        return
    if now is None:
        yield Change(path, "enum removed: any value of its type", False)
        return
    if was is None:
        yield Change(path, f"enum added: {_listed(now)}", True)
        return
    removed, added = [v for v in was if v not in now], [v for v in now if v not in was]
    if removed:
        yield Change(path, f"enum narrowed: {_listed(removed)} removed", True)
    if added:
        yield Change(path, f"enum widened: {_listed(added)} added", False)


def _listed(values: list[Any]) -> str:
    return ", ".join(repr(value) for value in values)


def _others(old: Schema, new: Schema, path: str) -> Iterator[Change]:
    """Any other keyword that constrains (``format``, ``multipleOf`` ...): a change to it may
    refuse what the old schema allowed."""
    skip = ANNOTATIONS | STRUCTURE | {"pattern", *LOWER_BOUNDS, *UPPER_BOUNDS}
    for key in sorted((set(old) | set(new)) - skip):
        if old.get(key) != new.get(key):
            yield Change(path, f"{key} changed from {old.get(key)!r} to {new.get(key)!r}", True)
    if old.get("default") != new.get("default") and "default" in old and "default" in new:
        yield Change(path, f"default changed from {old['default']!r} to {new['default']!r}", False)


def _object(old: Schema, new: Schema, path: str) -> Iterator[Change]:
    was: Mapping[str, Any] = old.get("properties", {})
    now: Mapping[str, Any] = new.get("properties", {})
    old_required, new_required = set(old.get("required", ())), set(new.get("required", ()))
    removed = [name for name in was if name not in now]
    added = [name for name in now if name not in was]
    for name in removed:
        renamed = [other for other in added if _same(was[name], now[other])]
        if renamed:  # the same field under another name: one change, not a removal and an addition
            added.remove(renamed[0])
        yield Change(_join(path, name), f"renamed to {renamed[0]}" if renamed else "removed", True)
    for name in added:
        required = name in new_required
        what = "new required field" if required else "new optional field"
        yield Change(_join(path, name), what, required)
    for name in was:
        if name not in now:
            continue
        if name in new_required and name not in old_required:
            yield Change(_join(path, name), "now required", True)
        elif name in old_required and name not in new_required:
            yield Change(_join(path, name), "no longer required", False)
        yield from _walk(was[name], now[name], _join(path, name))
    closed_before, closed_now = old.get("additionalProperties") is False, new.get("additionalProperties") is False
    if closed_now and not closed_before:
        yield Change(path, "unknown fields now refused", True)
    elif closed_before and not closed_now:
        yield Change(path, "unknown fields now allowed", False)
    extra_old, extra_new = old.get("additionalProperties"), new.get("additionalProperties")
    if isinstance(extra_old, Mapping) and isinstance(extra_new, Mapping):
        yield from _walk(extra_old, extra_new, _join(path, "*"))


def _array(old: Schema, new: Schema, path: str) -> Iterator[Change]:
    if isinstance(old.get("items"), Mapping) and isinstance(new.get("items"), Mapping):
        yield from _walk(old["items"], new["items"], f"{path}[]")
    elif old.get("items") != new.get("items"):
        yield Change(path, "its items changed", True)
    was, now = old.get("prefixItems", []), new.get("prefixItems", [])
    if len(was) != len(now):
        yield Change(path, f"tuple of {len(was)} items now of {len(now)}", True)
    for index, (item_was, item_now) in enumerate(zip(was, now, strict=False)):
        yield from _walk(item_was, item_now, f"{path}[{index}]")


def _same(old: Schema, new: Schema) -> bool:
    """Whether two field schemas say the same, annotations aside (for telling a rename from
    a removal)."""
    return bool(_strip(old) == _strip(new))


def _strip(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {k: _strip(v) for k, v in node.items() if k not in ANNOTATIONS}
    if isinstance(node, list):
        return [_strip(item) for item in node]
    return node


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
