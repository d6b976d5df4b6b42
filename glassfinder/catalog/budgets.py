"""Cheap rejects: an asset's triangle and node budgets, from its glTF JSON before any buffer is decoded.

trimesh decodes every buffer before we can count triangles: a 96 MB GLB of 2M separate
triangles peaked at ~790 MB and took seconds before the budget refused it. A glTF document says
how much geometry it holds in its JSON (accessor counts, node count, the node tree), and a GLB
keeps that JSON in its first chunk, so these checks cost a JSON parse of a few kilobytes. What
trimesh later builds follows the same accessors, so the post-parse count in the loader agrees;
it stays as the check for OBJ (counted here only from its face lines, a lower bound) and for
any file whose JSON understates its geometry.

The glTF container is read by hand (a 12-byte header and one chunk header, per the glTF 2.0
spec): no library parses a GLB's JSON chunk without also loading its buffers.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from glassfinder.errors import BudgetError

#: Nodes in one asset: a pair of glasses has ~10; a file with thousands is a scene dump.
DEFAULT_MAX_NODES = 4096
#: Nesting of the node tree (root = 1).
DEFAULT_MAX_NODE_DEPTH = 32
#: Largest glTF JSON (a GLB's first chunk, or a .gltf file without its data URIs' bulk).
MAX_JSON_BYTES = 64 * 1024 * 1024
_GLB_MAGIC = b"glTF"
_JSON_CHUNK = 0x4E4F534A
#: Triangles per vertex/index count by primitive mode (4 triangles, 5 strip, 6 fan; 0-3 no faces).
_TRIANGLE_MODES = (4, 5, 6)


def glb_json(data: bytes) -> dict[str, Any]:
    """The JSON chunk of a GLB, parsed, without touching its binary chunk."""
    if len(data) < 20 or data[:4] != _GLB_MAGIC:
        raise BudgetError("unparseable", "is not a GLB (expected the 'glTF' magic and a 12-byte header)")
    version, _length = struct.unpack_from("<II", data, 4)
    if version != 2:
        raise BudgetError("unparseable", f"is GLB version {version}, expected 2")
    chunk_length, chunk_type = struct.unpack_from("<II", data, 12)
    if chunk_type != _JSON_CHUNK:
        raise BudgetError("unparseable", "GLB's first chunk is not JSON")
    if chunk_length > MAX_JSON_BYTES or 20 + chunk_length > len(data):
        raise BudgetError(
            "unparseable",
            f"GLB's JSON chunk claims {chunk_length:,} bytes; the file has {len(data) - 20:,} after "
            f"the header (at most {MAX_JSON_BYTES:,})",
        )
    return parse_json(data[20 : 20 + chunk_length])


def parse_json(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_JSON_BYTES:
        raise BudgetError("unparseable", f"glTF JSON has {len(raw):,} bytes, at most {MAX_JSON_BYTES:,}")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BudgetError("unparseable", f"glTF JSON cannot be parsed: {exc}") from None
    if not isinstance(doc, dict):
        raise BudgetError("unparseable", f"glTF JSON is a {type(doc).__name__}, expected an object")
    return doc


def _items(doc: dict[str, Any], name: str) -> list[Any]:
    items = doc.get(name, [])
    if not isinstance(items, list):
        raise BudgetError("unparseable", f"glTF '{name}' is a {type(items).__name__}, expected an array")
    return items


def _at(items: list[Any], index: Any, what: str) -> dict[str, Any]:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(items):
        raise BudgetError("unparseable", f"glTF {what} index {index!r} is out of range (0-{len(items) - 1})")
    item = items[index]
    if not isinstance(item, dict):
        raise BudgetError("unparseable", f"glTF {what} {index} is not an object")
    return item


def _count(accessor: dict[str, Any]) -> int:
    count = accessor.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise BudgetError("unparseable", f"glTF accessor count {count!r} is not a whole number")
    return count


def mesh_triangles(doc: dict[str, Any]) -> list[int]:
    """Triangles each mesh of a glTF document declares (points and lines count none)."""
    accessors = _items(doc, "accessors")
    out = []
    for m, mesh in enumerate(_items(doc, "meshes")):
        prims = mesh.get("primitives", []) if isinstance(mesh, dict) else None
        if not isinstance(prims, list):
            raise BudgetError("unparseable", f"glTF mesh {m} has no primitives array")
        total = 0
        for prim in prims:
            if not isinstance(prim, dict):
                raise BudgetError("unparseable", f"glTF mesh {m} has a primitive that is not an object")
            mode = prim.get("mode", 4)
            if mode not in _TRIANGLE_MODES:
                continue
            if "indices" in prim:
                n = _count(_at(accessors, prim["indices"], "accessor"))
            else:
                attributes = prim.get("attributes")
                if not isinstance(attributes, dict) or "POSITION" not in attributes:
                    raise BudgetError("unparseable", f"glTF mesh {m} has a primitive without POSITION")
                n = _count(_at(accessors, attributes["POSITION"], "accessor"))
            total += n // 3 if mode == 4 else max(n - 2, 0)
        out.append(total)
    return out


def check_gltf_budgets(
    doc: dict[str, Any],
    *,
    max_triangles: int,
    max_nodes: int = DEFAULT_MAX_NODES,
    max_depth: int = DEFAULT_MAX_NODE_DEPTH,
) -> int:
    """The triangles the document's nodes instance; BudgetError past a budget or on a broken tree."""
    nodes = _items(doc, "nodes")
    if len(nodes) > max_nodes:
        raise BudgetError("too_many_nodes", f"has {len(nodes):,} nodes, the budget is {max_nodes:,}")
    per_mesh = mesh_triangles(doc)
    meshes = _items(doc, "meshes")
    triangles = 0
    children: list[list[int]] = []
    for n in range(len(nodes)):
        node = _at(nodes, n, "node")
        if "mesh" in node:
            _at(meshes, node["mesh"], "mesh")
            triangles += per_mesh[node["mesh"]]
        kids = node.get("children", [])
        if not isinstance(kids, list):
            raise BudgetError("unparseable", f"glTF node {n}'s children is not an array")
        for k in kids:
            _at(nodes, k, "node")
        children.append(kids)
    if not nodes:  # a document without nodes: trimesh shows each mesh once
        triangles = sum(per_mesh)
    if triangles > max_triangles:
        raise BudgetError(
            "too_many_triangles",
            f"declares {triangles:,} triangles, the budget is {max_triangles:,} (refused before decoding)",
        )
    _check_tree(children, max_depth)
    return triangles


def _check_tree(children: list[list[int]], max_depth: int) -> None:
    """Every node has at most one parent, no cycle, and the tree is at most `max_depth` deep."""
    parents = [0] * len(children)
    for kids in children:
        for k in kids:
            parents[k] += 1
    if any(p > 1 for p in parents):
        raise BudgetError("unparseable", "glTF node tree gives a node two parents")
    depth = [0] * len(children)
    stack = [(n, 1) for n in range(len(children)) if parents[n] == 0]
    seen = 0
    while stack:
        n, d = stack.pop()
        seen += 1
        if d > max_depth:
            raise BudgetError("too_deep", f"nests nodes {d} deep, the budget is {max_depth}")
        depth[n] = d
        stack.extend((k, d + 1) for k in children[n])
    if seen != len(children):
        raise BudgetError("unparseable", "glTF node tree has a cycle")


def obj_face_lines(data: bytes) -> int:
    """Face lines of an OBJ file: each is at least one triangle (a lower bound, counted without parsing)."""
    return data.count(b"\nf ") + data.count(b"\nf\t") + int(data[:2] in (b"f ", b"f\t"))
