"""Load a third-party eyewear asset (GLB, glTF, OBJ), validate it and normalise it to the convention.

Normalisation, in order: bake node transforms; detect the unit from the frame's width (mm, cm or
m); rotate so the widest axis is X, the temples run to -Z (the front, which holds most of the
surface, is at +Z) and the bridge sits above the lens centres (+Y up); move the origin to the
bridge centre; name parts by role from node/material names, or failing that from geometry
(transparent panels are lenses, long side pieces are temples).
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field

import numpy as np
import trimesh

from glassfinder.catalog import budgets
from glassfinder.catalog.build import export_glb
from glassfinder.catalog.convention import REQUIRED_PARTS, bridge_centre, bridge_vertices
from glassfinder.errors import AssetError, GlassFinderError

FORMATS = {"glb": "glb", "gltf": "gltf", "obj": "obj"}
DEFAULT_MAX_TRIANGLES = 300_000
#: Bump when normalisation changes what it writes: ingestion's cache of results is keyed on it.
NORMALISER_VERSION = 1
#: Frame width ranges (along its widest axis) by unit: what a pair of glasses measures.
UNIT_WIDTH_RANGES = (("m", 1.0, 0.08, 0.30), ("cm", 0.01, 8.0, 30.0), ("mm", 0.001, 80.0, 300.0))


@dataclass
class NormalisedAsset:
    scene: trimesh.Scene
    glb: bytes
    sha256: str
    unit: str
    triangles: int
    notes: list[str] = field(default_factory=list)


def _format_of(name: str) -> str:
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if suffix not in FORMATS:
        raise AssetError(
            name,
            "unsupported_format",
            f"unsupported file type {suffix or '(none)'!r}, expected .glb, .gltf or .obj",
        )
    return FORMATS[suffix]


def _parse(data: bytes, name: str, max_triangles: int) -> trimesh.Scene:
    fmt = _format_of(name)
    if not data:
        raise AssetError(name, "unparseable", f"file is empty, expected {fmt.upper()} data")
    _check_declared(data, name, fmt, max_triangles)
    try:
        loaded = trimesh.load(io.BytesIO(data), file_type=fmt, force="scene", process=False)
    except Exception as exc:
        raise AssetError(
            name, "unparseable", f"cannot be parsed as {fmt.upper()}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(loaded, trimesh.Scene):
        raise AssetError(name, "unparseable", f"parsed as {type(loaded).__name__}, expected a mesh scene")
    return loaded


def _check_declared(data: bytes, name: str, fmt: str, max_triangles: int) -> None:
    """Refuse what the file's own header or JSON says breaks a budget, before decoding any buffer."""
    try:
        if fmt == "obj":
            faces = budgets.obj_face_lines(data)
            if faces > max_triangles:
                raise budgets.BudgetError(
                    "too_many_triangles",
                    f"has at least {faces:,} triangles, the budget is {max_triangles:,} "
                    "(refused before parsing)",
                )
            return
        doc = budgets.glb_json(data) if fmt == "glb" else budgets.parse_json(data)
        if fmt == "gltf":
            _check_gltf_buffers(doc, name)
        budgets.check_gltf_budgets(doc, max_triangles=max_triangles)
    except budgets.BudgetError as exc:
        prefix = f"cannot be parsed as {fmt.upper()}: " if exc.reason == "unparseable" else ""
        raise AssetError(name, exc.reason, prefix + str(exc)) from None


def _check_gltf_buffers(doc: dict, name: str) -> None:
    """A manifest row points at one file: glTF buffers and images must be embedded in it."""
    for kind in ("buffers", "images"):
        items = doc.get(kind, [])
        for item in items if isinstance(items, list) else []:
            uri = item.get("uri") if isinstance(item, dict) else None
            if uri and not str(uri).startswith("data:"):
                raise AssetError(
                    name,
                    "external_file",
                    f"glTF references external file {uri!r}; embed its {kind} as data URIs or convert to GLB",
                )


_ROLE_WORDS = (
    ("lens", r"lens|glass|lente|verre"),
    ("temple", r"temple|arm|earpiece|tip"),
    ("nose_pads", r"pad"),
    ("frame", r"frame|rim|bridge|front|hinge|brow|wire|nylon"),
)


def _role_from_name(name: str) -> str | None:
    lowered = name.lower()
    for role, pattern in _ROLE_WORDS:
        if re.search(pattern, lowered):
            return role
    return None


def _is_transparent(mesh: trimesh.Trimesh) -> bool:
    mat = getattr(mesh.visual, "material", None)
    if mat is None:
        return False
    if getattr(mat, "alphaMode", None) == "BLEND":
        return True
    factor = getattr(mat, "baseColorFactor", None)
    if factor is not None:
        f = np.asarray(factor, float)
        alpha = f[3] / (255.0 if f.max() > 1 else 1.0) if len(f) > 3 else 1.0
        if alpha < 0.99:
            return True
    diffuse = getattr(mat, "diffuse", None)
    return diffuse is not None and len(diffuse) > 3 and diffuse[3] < 250


def load_asset(data: bytes, name: str, *, max_triangles: int = DEFAULT_MAX_TRIANGLES) -> NormalisedAsset:
    """Parse, validate and normalise one asset file; raise AssetError with a reason code.

    Whatever the bytes make a parser or a lazily decoded texture raise (found by fuzzing: a
    corrupt embedded PNG fails in PIL only when the scene is exported) is the asset's fault and
    becomes AssetError `unparseable`; only running out of memory is not.
    """
    try:
        return _load_asset(data, name, max_triangles)
    except (GlassFinderError, MemoryError):
        raise
    except Exception as exc:
        raise AssetError(name, "unparseable", f"cannot be processed: {type(exc).__name__}: {exc}") from exc


def _load_asset(data: bytes, name: str, max_triangles: int) -> NormalisedAsset:
    scene = _parse(data, name, max_triangles)
    pieces = _world_pieces(scene, name, _format_of(name))
    triangles = _checked_triangles(pieces, name, max_triangles)
    unit, notes = _to_convention(pieces, name)
    out = _canonical_scene(pieces, name)
    glb = export_glb(out)
    return NormalisedAsset(out, glb, hashlib.sha256(glb).hexdigest(), unit, triangles, notes)


def _world_pieces(scene: trimesh.Scene, name: str, fmt: str) -> list[tuple[str, trimesh.Trimesh]]:
    """(label for role names, mesh with its node transform baked) of every non-empty mesh node."""
    pieces: list[tuple[str, trimesh.Trimesh]] = []
    for node in scene.graph.nodes_geometry:
        transform, geom_name = scene.graph[node]
        geom = scene.geometry[geom_name]
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue
        if not np.isfinite(geom.vertices).all():
            raise AssetError(name, "non_finite", f"node {node!r} has NaN or infinite vertex coordinates")
        mesh = geom.copy()
        mesh.apply_transform(transform)
        material_name = getattr(getattr(mesh.visual, "material", None), "name", None) or ""
        # trimesh's OBJ parser merges objects that share a material under the first object's
        # name, so OBJ names would lie: OBJ parts are assigned from geometry alone.
        label = "" if fmt == "obj" else f"{node} {geom_name} {material_name}"
        pieces.append((label, mesh))
    return pieces


def _checked_triangles(pieces: list[tuple[str, trimesh.Trimesh]], name: str, max_triangles: int) -> int:
    """The asset's triangle count, refused when zero or over the budget."""
    triangles = sum(len(m.faces) for _, m in pieces)
    if triangles == 0:
        raise AssetError(name, "empty", "has no triangles (expected a mesh of the frame)")
    if triangles > max_triangles:
        raise AssetError(
            name, "too_many_triangles", f"has {triangles:,} triangles, the budget is {max_triangles:,}"
        )
    return triangles


def _to_convention(pieces: list[tuple[str, trimesh.Trimesh]], name: str) -> tuple[str, list[str]]:
    """Scale to metres, orient and move the origin to the bridge centre, in place; (unit, notes)."""
    vertices = np.vstack([m.vertices for _, m in pieces])
    extents = vertices.max(0) - vertices.min(0)
    widest = float(extents.max())
    fits = [(unit, scale) for unit, scale, lo, hi in UNIT_WIDTH_RANGES if lo <= widest <= hi]
    if not fits:
        raise AssetError(
            name,
            "bad_scale",
            f"is {widest:g} units across its widest axis, which fits no unit (expected a frame 80-300 mm, "
            "8-30 cm or 0.08-0.3 m wide)",
        )
    unit, scale = fits[0]
    notes = [] if unit == "m" else [f"scaled from {unit}"]
    lens_centres = [m.vertices.mean(axis=0) for label, m in pieces if _role_from_name(label) == "lens"]
    rotation = _orientation(vertices * scale, extents * scale, notes, lens_centres)
    world = np.eye(4)
    world[:3, :3] = rotation * scale
    # Skip no-op transforms so that normalising a normalised asset gives the same bytes.
    if not np.allclose(world, np.eye(4)):
        for _, mesh in pieces:
            mesh.apply_transform(world)
    origin = bridge_centre(np.vstack([m.vertices for _, m in pieces]))
    if np.abs(origin).max() > 1e-6:
        for _, mesh in pieces:
            mesh.apply_translation(-origin)
    return unit, notes


def _canonical_scene(pieces: list[tuple[str, trimesh.Trimesh]], name: str) -> trimesh.Scene:
    """The pieces as one scene of nodes named by role; AssetError if a required part is missing."""
    out = trimesh.Scene()
    counts: dict[str, int] = {}
    roles = _assign_roles(pieces, name)
    # A canonical order (by role, then size and position), not the file's node order.
    order = sorted(
        range(len(pieces)),
        key=lambda i: (
            roles[i],
            -len(pieces[i][1].vertices),
            tuple(np.round(pieces[i][1].bounds.ravel(), 5)),
        ),
    )
    for (_, mesh), role in ((pieces[i], roles[i]) for i in order):
        if role.startswith("lens"):
            mat = getattr(mesh.visual, "material", None)
            if isinstance(mat, trimesh.visual.material.PBRMaterial):
                mat.alphaMode = "BLEND"
        k = counts.get(role, 0)
        counts[role] = k + 1
        node = role if k == 0 else f"{role}.{k}"
        out.add_geometry(mesh, node_name=node, geom_name=node)
    missing = [p for p in REQUIRED_PARTS if p not in counts]
    if missing:
        raise AssetError(
            name,
            "missing_parts",
            f"has no {', '.join(missing)} part (name nodes lens_left/lens_right/frame, "
            "or give lenses a transparent material)",
        )
    return out


def _skew(values: np.ndarray) -> float:
    centred = values - values.mean()
    return float(abs((centred**3).mean()) / max(centred.std() ** 3, 1e-18))


def _orientation(
    v: np.ndarray, extents: np.ndarray, notes: list[str], lens_centres: list[np.ndarray]
) -> np.ndarray:
    """Rotation (3, 3) taking the asset's axes to the convention's."""
    order = [int(a) for a in np.argsort(extents)[::-1]]
    # X: the axis the lenses are spread along; without named lenses, the axis (of the two
    # longest; temples can outrun the frame's width) along which the frame is mirror-symmetric.
    if len(lens_centres) >= 2:
        spread = np.ptp(np.vstack(lens_centres), axis=0)
        x_axis = int(np.argmax(spread))
    else:
        x_axis = min(order[:2], key=lambda a: _skew(v[:, a]))
    rest = [a for a in order if a != x_axis]
    # A frame with temples is deep (temples ~ 0.1-0.16 m); a front-only asset is taller than deep.
    z_axis, y_axis = (rest[0], rest[1]) if extents[rest[0]] > 0.07 else (rest[1], rest[0])
    basis = np.zeros((3, 3))
    basis[0, x_axis] = basis[1, y_axis] = basis[2, z_axis] = 1.0
    p = v @ basis.T
    # +Z: the end holding most of the surface (lenses, rims, bridge) is the front.
    zmin, zmax = p[:, 2].min(), p[:, 2].max()
    depth = max(zmax - zmin, 1e-9)
    front = (p[:, 2] > zmax - 0.25 * depth).sum()
    back = (p[:, 2] < zmin + 0.25 * depth).sum()
    if back > front:
        basis[2] *= -1
        basis[0] *= -1  # a 180 degree turn about Y keeps the rotation proper
        p = v @ basis.T
    # +Y: the bridge sits above the middle of the front.
    scale = float(np.ptp(p[:, 0])) / 0.14  # bridge_vertices works in metres; p may not be yet
    bridge = bridge_vertices(p / scale) * scale
    front = p[p[:, 2] > p[:, 2].max() - 0.25 * max(float(np.ptp(p[:, 2])), 1e-9)]
    if len(bridge) and bridge[:, 1].mean() < (front[:, 1].min() + front[:, 1].max()) / 2:
        basis[1] *= -1
        basis[0] *= -1  # a 180 degree turn about Z
    if not np.allclose(basis, np.eye(3)):
        notes.append("reoriented to +Y up, temples towards -Z")
    return basis


def _assign_roles(pieces: list[tuple[str, trimesh.Trimesh]], name: str) -> list[str]:
    """A convention role for every piece (splitting unnamed pieces into connected parts first):
    names first, then materials, then geometry."""
    expanded: list[tuple[str, trimesh.Trimesh]] = []
    for label, mesh in pieces:
        if _role_from_name(label) is None and not _is_transparent(mesh):
            expanded.extend((label, part) for part in mesh.split(only_watertight=False))
        else:
            expanded.append((label, mesh))
    pieces[:] = expanded
    front_z = max(float(m.vertices[:, 2].max()) for _, m in pieces)
    roles: list[str] = []
    for label, mesh in pieces:
        role = _role_from_name(label)
        centre_x = float(mesh.bounds.mean(axis=0)[0])
        if role is None:
            if _is_transparent(mesh) or _looks_like_lens(mesh, front_z):
                role = "lens"
            elif float(np.ptp(mesh.vertices[:, 2])) > 0.06 and abs(centre_x) > 0.03:
                role = "temple"
            else:
                role = "frame"
        if role in ("lens", "temple"):
            role = f"{role}_{'left' if centre_x > 0 else 'right'}"
        roles.append(role)
    return roles


def _looks_like_lens(mesh: trimesh.Trimesh, front_z: float) -> bool:
    """A lens is a thin, filled panel at the front on one side: unlike a rim, it has surface at
    its own centre."""
    v = mesh.vertices
    ext = np.ptp(v, axis=0)
    if not (0.025 < ext[0] < 0.08 and 0.018 < ext[1] < 0.07 and ext[2] < 0.015):
        return False
    if v[:, 2].max() < front_z - 0.02 or abs(float(mesh.bounds.mean(axis=0)[0])) < 0.01:
        return False
    centre = mesh.bounds.mean(axis=0)[:2]
    near_centre = np.linalg.norm((v[:, :2] - centre) / ext[:2], axis=1) < 0.2
    return bool(near_centre.any())


# --- assets already normalised -----------------------------------------------------------------------
def import_glb(data: bytes) -> trimesh.Scene:
    """A GLB's scene, nodes and materials kept (for assets already in the convention)."""
    return trimesh.load_scene(io.BytesIO(data), file_type="glb")
