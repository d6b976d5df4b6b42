"""The procedural sample catalogue: determinism, real-world variety, and the asset convention."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import trimesh

from glassfinder.catalog.build import build_frame
from glassfinder.catalog.convention import REQUIRED_PARTS, bridge_centre, part_of
from glassfinder.catalog.design import FAMILIES, sample_colourways, sample_design
from glassfinder.catalog.generate import MANIFEST_KEY, build_family, family_plan, generate_catalog
from glassfinder.catalog.loader import import_glb
from glassfinder.catalog.shapes import lens_outline
from glassfinder.store import LocalStore, ObjectStore


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> LocalStore:
    store = LocalStore(tmp_path_factory.mktemp("cat") / "store")
    generate_catalog(store, 40, seed=11, workers=1)
    return store


def _scene(store: ObjectStore, key: str) -> trimesh.Scene:
    return import_glb(store.get(key))


def test_same_seed_same_bytes(catalog: LocalStore, tmp_path: Path) -> None:
    again = LocalStore(tmp_path / "again")
    generate_catalog(again, 40, seed=11, workers=2)  # a different worker count changes nothing
    assert again.get(MANIFEST_KEY) == catalog.get(MANIFEST_KEY)
    keys = [i.key for i in catalog.list("assets/")]
    assert keys == [i.key for i in again.list("assets/")] and len(keys) == 40
    assert all(catalog.get(k) == again.get(k) for k in keys[:5])


def test_a_catalog_is_a_prefix_of_a_bigger_one_with_the_same_seed(tmp_path: Path) -> None:
    """Growing a shop's sample catalogue keeps every product it had, byte for byte: seed 3 at
    12 products cuts a family short that 14 completes (the case that used to change products)."""
    small, big = LocalStore(tmp_path / "small"), LocalStore(tmp_path / "big")
    generate_catalog(small, 12, seed=3, workers=1)
    generate_catalog(big, 14, seed=3, workers=1)
    assert family_plan(12, 3)[-1][1] < family_plan(14, 3)[-1][1] or len(family_plan(14, 3)) > len(
        family_plan(12, 3)
    )
    small_rows = pq.read_table(tmp_path / "small" / MANIFEST_KEY).to_pylist()
    big_rows = pq.read_table(tmp_path / "big" / MANIFEST_KEY).to_pylist()
    assert len(small_rows) == 12 and len(big_rows) == 14
    assert big_rows[:12] == small_rows
    for row in small_rows:
        assert small.get(row["asset_uri"]) == big.get(row["asset_uri"]), row["product_id"]


def test_other_seed_other_catalog() -> None:
    a = build_family(1, 0, 2)
    b = build_family(2, 0, 2)
    assert a[0][1] != b[0][1]


def test_manifest_rows_are_real_eyewear(catalog: LocalStore) -> None:
    rows = pq.read_table(io.BytesIO(catalog.get(MANIFEST_KEY))).to_pylist()
    assert len(rows) == 40 and len({r["product_id"] for r in rows}) == 40
    for r in rows:
        assert 44 <= r["lens_width_mm"] <= 62 and 26 <= r["lens_height_mm"] <= 56
        assert 14 <= r["bridge_mm"] <= 24 and 135 <= r["temple_mm"] <= 150
        assert r["kind"] in ("optical", "sunglasses")
        assert (r["lens_policy"] == "fixed") == (r["kind"] == "sunglasses")
        assert len(r["asset_sha256"]) == 64
    families: dict[str, list[dict]] = {}
    for r in rows:
        families.setdefault(r["family_id"], []).append(r)
    sizes = [len(v) for v in families.values()]
    assert all(1 <= s <= 5 for s in sizes) and sum(s >= 2 for s in sizes) >= len(sizes) - 1
    for members in families.values():  # colourways share the shape, differ in colour
        assert len({(m["shape_family"], m["lens_width_mm"], m["bridge_mm"]) for m in members}) == 1
        assert len({m["colour_name"] for m in members}) == len(members)
        assert len({m["asset_sha256"] for m in members}) == len(members)


def test_plan_covers_every_family_and_style() -> None:
    plan = family_plan(3200, seed=0)
    assert sum(n for _, n in plan) == 3200
    designs = [
        sample_design(np.random.default_rng([0, f]), FAMILIES[f % len(FAMILIES)]) for f, _ in plan[:200]
    ]
    assert {d.family for d in designs} == set(FAMILIES)
    assert {d.rim for d in designs} == {"full", "half", "rimless"}
    assert {d.material for d in designs} == {"acetate", "metal"}
    assert {d.bridge for d in designs} == {"keyhole", "saddle", "double"}
    finishes, lenses = set(), set()
    for i, d in enumerate(designs[:80]):
        for c in sample_colourways(np.random.default_rng([0, i]), d, 3):
            finishes.add(c.finish)
            lenses.add(c.lens_style)
    assert finishes == {"solid", "translucent", "tortoise", "metal"}
    assert lenses == {"clear", "tinted", "gradient", "mirrored"}


def test_assets_follow_the_convention(catalog: LocalStore) -> None:
    for info in list(catalog.list("assets/"))[:12]:
        scene = _scene(catalog, info.key)
        roles = {part_of(n) for n in scene.graph.nodes_geometry}
        assert set(REQUIRED_PARTS) | {"temple_left", "temple_right"} <= roles
        assert None not in roles
        geoms = {n: scene.geometry[scene.graph[n][1]] for n in scene.graph.nodes_geometry}
        vertices = np.vstack([g.vertices for g in geoms.values()])
        np.testing.assert_allclose(bridge_centre(vertices), 0.0, atol=1e-6)  # origin at the bridge
        width = np.ptp(vertices[:, 0])
        assert 0.11 < width < 0.18  # metres
        lz = geoms["lens_left"].vertices[:, 2].mean()
        assert geoms["temple_left"].vertices[:, 2].min() < lz - 0.1  # temples run to -Z
        assert geoms["lens_left"].vertices[:, 0].mean() > 0 > geoms["lens_right"].vertices[:, 0].mean()
        temple = np.vstack([g.vertices for n, g in geoms.items() if part_of(n) == "temple_left"])
        assert temple[:, 1].min() < temple[:, 1].max() - 0.01  # the tip bends down behind the ear
        for node in ("lens_left", "lens_right"):
            assert geoms[node].visual.material.alphaMode == "BLEND"


@pytest.mark.parametrize("family", FAMILIES)
def test_rims_are_smooth(family: str) -> None:
    """Outline segments stay under ~2 px at 512 px and turn under 15 degrees: no visible facets."""
    design = sample_design(np.random.default_rng([5, FAMILIES.index(family)]), family)
    p = lens_outline(family, design.lens_width_mm, design.lens_height_mm, design.shape)
    seg = np.roll(p, -1, axis=0) - p
    ang = np.degrees(
        np.abs(
            np.angle(
                np.exp(
                    1j
                    * (
                        np.arctan2(seg[:, 1], seg[:, 0])
                        - np.arctan2(np.roll(seg, 1, 0)[:, 1], np.roll(seg, 1, 0)[:, 0])
                    )
                )
            )
        )
    )
    assert ang.max() < 15.0
    seg_len = np.linalg.norm(seg, axis=1)
    assert seg_len.max() < 0.75  # mm between outline points: ~2 px at 512 px


def test_build_is_pure() -> None:
    rng = np.random.default_rng([9, 3])
    d = sample_design(rng, "aviator")
    c = sample_colourways(rng, d, 2)[1]
    a, b = build_frame(d, c), build_frame(d, c)
    assert sorted(a.graph.nodes_geometry) == sorted(b.graph.nodes_geometry)
    for name in a.geometry:
        np.testing.assert_array_equal(a.geometry[name].vertices, b.geometry[name].vertices)


@pytest.mark.parametrize(
    ("family", "changes", "present", "absent"),
    [
        (
            "round",
            {"rim": "full", "material": "metal", "bridge": "double", "nose_pads": True},
            {"nose_pads", "nose_pads.arms", "temple_left.tip", "temple_right.tip"},
            {"frame.nylon", "frame.wire"},
        ),
        (
            "rectangle",
            {"rim": "half", "material": "acetate", "bridge": "keyhole", "nose_pads": False},
            {"frame.nylon"},
            {"nose_pads", "temple_left.tip", "frame.wire"},
        ),
        (
            "oval",
            {"rim": "rimless", "material": "metal", "bridge": "saddle", "nose_pads": True},
            {"nose_pads", "temple_left.tip"},
            {"frame.nylon", "frame.wire"},
        ),
        ("browline", {"nose_pads": False}, {"frame.wire"}, {"frame.nylon", "nose_pads", "temple_left.tip"}),
    ],
)
def test_each_frame_style_gets_its_parts(
    family: str, changes: dict[str, object], present: set[str], absent: set[str]
) -> None:
    """Each rim, material and pad variant adds (only) its own nodes to the asset."""
    rng = np.random.default_rng([4, FAMILIES.index(family)])
    design = dataclasses.replace(sample_design(rng, family), **changes)  # type: ignore[arg-type]
    colourway = sample_colourways(rng, design, 1)[0]
    nodes = set(build_frame(design, colourway).graph.nodes_geometry)
    assert set(REQUIRED_PARTS) | {"frame.hinge", "temple_left", "temple_right"} | present <= nodes
    assert not nodes & absent
