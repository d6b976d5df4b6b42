"""Face analysis on real faces: the portraits' labels and split, colour both ways, and real
portraits (a few committed under tests/data/portraits, public domain) through the query path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from glassfinder.errors import BadInputError, QueryRefusedError
from glassfinder.face.net import FaceAnalyser, packaged_analyser
from glassfinder.heads.portraits import (
    SPLIT_SEED,
    colour_swap,
    colourise,
    greyscale,
    is_grey,
    jpeg_bytes,
    load_portraits,
    read_rgb,
    split_portraits,
)
from glassfinder.search.query import check_analysis, decode_photo, find_face

COMMITTED = Path(__file__).parent / "data" / "portraits"


def _folder(tmp_path: Path, rows: list[tuple[str, str, str]]) -> Path:
    (tmp_path / "images").mkdir(parents=True, exist_ok=True)
    lines = ["id,glasses,lenses,confidence"]
    for pid, glasses, confidence in rows:
        (tmp_path / "images" / f"{pid}.jpg").write_bytes(b"")
        lines.append(f"{pid},{glasses},{'clear' if glasses == 'yes' else ''},{confidence}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def _rows(n: int, start: int = 0) -> list[tuple[str, str, str]]:
    return [(f"P{i:05d}", "yes" if i % 5 == 0 else "no", "sure") for i in range(start, start + n)]


def test_the_split_is_by_person_stratified_and_seeded(tmp_path: Path) -> None:
    portraits = load_portraits(_folder(tmp_path / "a", _rows(500)), corrections=None)
    split = split_portraits(portraits)
    ids = {name: {p.id for p in group} for name, group in split.items()}
    assert sum(len(v) for v in ids.values()) == 500
    assert not (ids["train"] & ids["calibrate"]) and not (ids["train"] & ids["test"])
    assert not (ids["calibrate"] & ids["test"])
    for name, share in (("train", 0.6), ("calibrate", 0.2), ("test", 0.2)):
        worn = sum(p.worn for p in split[name])
        assert abs(worn - 100 * share) <= 1 and abs(len(split[name]) - 500 * share) <= 2, (name, worn)
    assert split_portraits(portraits) == split  # same seed, same split
    assert split_portraits(portraits, seed=SPLIT_SEED + 1) != split
    # Same labels in another order (another folder listing): the same split.
    again = split_portraits(list(reversed(portraits)))
    assert {k: [p.id for p in v] for k, v in again.items()} == {
        k: [p.id for p in v] for k, v in split.items()
    }


def test_unsure_rows_are_left_out_and_the_projects_corrections_apply(tmp_path: Path) -> None:
    root = _folder(
        tmp_path / "p", [("A1", "yes", "sure"), ("A2", "no", "unsure"), ("A3", "forehead", "sure")]
    )
    corrections = tmp_path / "corrections.csv"
    corrections.write_text("id,glasses,lenses,confidence,why\nA1,no,,sure,frames pushed up\n")
    portraits = {p.id: p for p in load_portraits(root, corrections=corrections)}
    assert sorted(portraits) == ["A1", "A3"]
    assert not portraits["A1"].worn and not portraits["A3"].worn  # forehead: bare eyes


def test_a_labels_file_with_a_bad_value_is_refused_naming_file_and_row(tmp_path: Path) -> None:
    root = _folder(tmp_path, [("B1", "maybe", "sure")])
    with pytest.raises(BadInputError, match=r"labels.csv.*'B1'.*glasses='maybe'"):
        load_portraits(root, corrections=None)


def test_colour_swap_turns_grey_into_colour_and_colour_into_grey() -> None:
    rng = np.random.default_rng(0)
    grey = np.repeat(np.linspace(0, 255, 64 * 64).reshape(64, 64, 1).astype(np.uint8), 3, axis=2)
    coloured = colourise(grey, rng)
    assert is_grey(grey) and not is_grey(coloured)
    assert is_grey(greyscale(coloured))
    swapped = {is_grey(colour_swap(grey, rng, p=1.0)) for _ in range(5)}
    assert swapped == {False}
    assert colour_swap(grey, rng, p=0.0) is grey


def _committed() -> list[tuple[Path, bool]]:
    rows = json.loads((COMMITTED / "labels.json").read_text())
    return [(COMMITTED / f"{pid}.jpg", worn) for pid, worn in sorted(rows.items())]


def _decision(analyser: FaceAnalyser, data: bytes, name: str) -> str:
    rgb = decode_photo(data, name)
    try:
        face = find_face(rgb, name)
        check_analysis(analyser.analyse(rgb, face.box_xyxy), analyser.threshold, name, face.box_xyxy)
    except QueryRefusedError as exc:
        return exc.reason
    return "searched"


def test_real_portraits_bare_are_refused_and_real_glasses_searched_in_grey_and_in_colour() -> None:
    """Portraits of the test split (never trained or calibrated on): a bare face is refused as
    `no_glasses`, real glasses are searched, and a colour version gets the grey one's decision."""
    _, analyser = packaged_analyser()
    rng = np.random.default_rng(5)
    for path, worn in _committed():
        rgb = read_rgb(path)
        want = "searched" if worn else "no_glasses"
        assert _decision(analyser, path.read_bytes(), path.name) == want, path.name
        for k in range(2):
            coloured = jpeg_bytes(colourise(rgb, rng))
            assert _decision(analyser, coloured, f"{path.stem}-colour{k}.jpg") == want, path.name


def test_the_card_records_the_seeded_split_and_the_committed_portraits_are_in_its_test_split() -> None:
    from glassfinder.nets.packaged import read_packaged

    card = read_packaged("face-analysis").card
    split = card["evaluation"]["portraits"]["split"]
    assert split["seed"] == SPLIT_SEED
    train, calib, test = (set(split[k]["ids"]) for k in ("train", "calibrate", "test"))
    assert not (train & test) and not (calib & test) and not (train & calib)
    assert {p.stem for p, _ in _committed()} <= test
    figures = card["evaluation"]["portraits"]["test"]["all"]
    assert {"no_face", "false_refusal", "false_accept"} <= set(figures)
