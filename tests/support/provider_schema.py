"""Terraform provider schemas, offline, from the CDK for Terraform packages on the npm registry.

``@cdktf/provider-google`` (and ``-time``) are generated from the providers' own schemas: each resource's
``synthesizeHclAttributes()`` lists every argument and block by its Terraform name, with ``isBlock``, and each
nested block has a ``...ToHclTerraform(struct)`` function doing the same one level down. Read from the package
tarball that scripts/infra_tools.sh fetched (pinned by version and integrity) and cached as JSON beside it.

Computed-only attributes (``id`` of most resources, ``uri``...) are not in the configuration schema, so setting
one is reported like any unknown argument, as ``terraform validate`` would.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

_CLASS = re.compile(r"^class (\w+) extends cdktf\.(TerraformResource|TerraformDataSource|TerraformProvider) \{", re.M)
_TYPE = re.compile(r'^(\w+)\.tfResourceType = "([\w-]+)";', re.M)
_FUNC = re.compile(r"^function (\w+)ToHclTerraform\(struct\) \{", re.M)
_ATTRS_FN = re.compile(r"const attrs = \{\n(.*?)\n    \};", re.S)  # in a function (4-space indent)
_ATTRS_CLASS = re.compile(r"const attrs = \{\n(.*?)\n        \};", re.S)  # in a class method
_ENTRY = re.compile(r'(\w+): \{\s*value: (.+?),\s*isBlock: (true|false),\s*type: "(\w+)",', re.S)
_NESTED = re.compile(r"(?<![.\w])(\w+)ToHclTerraform\b")
# Attributes a resource exports (computed ones included): what `type.name.ATTR` may read.
_GETTER = re.compile(r"this\.get\w*Attribute\('(\w+)'\)|this\.interpolationForAttribute\('(\w+)'\)")

META_ARGUMENTS = {"count", "for_each", "depends_on", "lifecycle", "provider", "provisioner", "connection"}


@dataclass(frozen=True)
class Block:
    """Arguments of one block: name -> nested Block for a block, None for a plain argument."""

    arguments: dict[str, Block | None]


def _entries(body: str) -> dict[str, str | None]:
    """attrs literal -> {terraform name: nested function name (block) or None (argument)}."""
    out: dict[str, str | None] = {}
    for name, value, is_block, _type in _ENTRY.findall(body):
        nested = _NESTED.findall(value) if is_block == "true" else []
        out[name] = nested[0] if nested else None
    return out


def _parse_module(text: str) -> tuple[dict[tuple[str, str], dict], dict[str, dict], dict[tuple[str, str], list]]:
    """(kind, type) -> top-level entries, nested function -> entries, and (kind, type) -> exported attributes."""
    functions: dict[str, dict] = {}
    for match in _FUNC.finditer(text):
        body = _ATTRS_FN.search(text, match.end())
        end = text.find("\n}\n", match.end())
        if body and body.start() < end:
            functions[match.group(1)] = _entries(body.group(1))
    tops: dict[tuple[str, str], dict] = {}
    exported: dict[tuple[str, str], list] = {}
    kinds = {name: kind for name, kind in _CLASS.findall(text)}
    for cls, tf_type in _TYPE.findall(text):
        kind = {"TerraformResource": "resource", "TerraformDataSource": "data",
                "TerraformProvider": "provider"}.get(kinds.get(cls, ""))
        if kind is None:
            continue
        class_start = text.find(f"class {cls} ")
        start = text.find("synthesizeHclAttributes() {", class_start)
        body = _ATTRS_CLASS.search(text, start)
        if start >= 0 and body:
            tops[(kind, tf_type)] = _entries(body.group(1))
            exported[(kind, tf_type)] = sorted({a or b for a, b in _GETTER.findall(text[class_start:start])})
    return tops, functions, exported


def _resolve(entries: dict[str, str | None], functions: dict[str, dict], depth: int = 0) -> dict:
    if depth > 12:
        return {}
    return {name: (None if fn is None else _resolve(functions.get(fn, {}), functions, depth + 1))
            for name, fn in entries.items()}


def extract(tarball: Path) -> dict:
    """{"provider": {...}, "resource": {type: {...}}, "data": {type: {...}}}; nested dicts are blocks."""
    schema: dict[str, dict] = {"provider": {}, "resource": {}, "data": {}, "package": {}, "attributes": {}}
    with tarfile.open(tarball) as archive:
        for member in archive:
            if member.name == "package/package.json":
                meta = json.load(archive.extractfile(member))  # type: ignore[arg-type]
                schema["package"] = {"name": meta["name"], "version": meta["version"],
                                     "provider": meta.get("cdktf", {}).get("provider", {})}
            if not re.fullmatch(r"package/lib/[\w-]+/index\.js", member.name):
                continue
            text = archive.extractfile(member).read().decode()  # type: ignore[union-attr]
            tops, functions, exported = _parse_module(text)
            for (kind, tf_type), entries in tops.items():
                schema[kind][tf_type] = _resolve(entries, functions)
                schema["attributes"][f"{kind}.{tf_type}"] = exported.get((kind, tf_type), [])
    return schema


def load(tarball: Path) -> dict:
    """The extracted schema, cached as JSON next to the tarball (rebuilt when the tarball changes)."""
    cache = tarball.with_suffix(".schema.json")
    # The stamp names the tarball and this parser: a change to either rebuilds the cache.
    parser = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    stamp = f"{tarball.name}:{tarball.stat().st_size}:{tarball.stat().st_mtime_ns}:{parser}"
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("stamp") == stamp:
            return cached["schema"]
    schema = extract(tarball)
    cache.write_text(json.dumps({"stamp": stamp, "schema": schema}))
    return schema


def problems(kind: str, tf_type: str, body: dict, schema: dict, where: str) -> list[str]:
    """Unknown arguments and blocks (and arguments written as blocks or the reverse) in one python-hcl2 body."""
    known = schema.get(kind, {}).get(tf_type) if kind != "provider" else schema["provider"].get(tf_type)
    if known is None:
        return [f"{where}: {kind} type {tf_type!r} is not in the provider schema"]
    allowed_meta = META_ARGUMENTS if kind != "provider" else {"alias"}
    return _check(body, known, where, allowed_meta)


def _check(body: dict, known: dict, where: str, meta: set[str]) -> list[str]:
    out: list[str] = []
    for key, value in body.items():
        if key.startswith("__") or key in meta:
            continue
        if key == "dynamic":  # dynamic "NAME" { for_each = ...; content { ... } }
            for dyn in value if isinstance(value, list) else [value]:
                for name, spec in dyn.items():
                    name = name.strip('"')
                    if not isinstance(known.get(name), dict):
                        out.append(f"{where}: dynamic block {name!r} is not a block of this schema")
                        continue
                    for content in spec.get("content", []):
                        out += _check(content, known[name], f"{where}.{name}", set())
            continue
        if key not in known:
            out.append(f"{where}: unknown argument or block {key!r}")
            continue
        nested = known[key]
        is_block_value = isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
        if nested is None:
            continue  # a plain argument: any expression (maps and lists of objects included)
        if not is_block_value:
            out.append(f"{where}: {key!r} is a block, written as an argument")
            continue
        for item in value:
            out += _check(item, nested, f"{where}.{key}", set())
    return out
