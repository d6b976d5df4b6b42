"""Appearance variety for the embedding's training: the augmentations that teach a camera's
rendering is not the frame, and the real portraits the frames are rendered onto."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glassfinder.embed.align import CropGeometry
from glassfinder.embed.augment import (
    CAMERA_AUGMENT,
    QUERY_DAMAGE,
    AugmentConfig,
    augment_crop,
    lens_glare,
    motion_blur,
    photometric,
    resolution_loss,
    tone_curve,
    vignette,
)
from glassfinder.embed.default_model import (
    PORTRAIT_BANK,
    TRAINING_PHOTO_BARE_NAME,
    photo_training_spec,
    portrait_training_spec,
    prepare_portrait_bank,
    training_spec,
)
from glassfinder.heads.portraits import is_grey, load_portraits, split_portraits
from glassfinder.layout import training_bank_prefix
from glassfinder.render.spec import OUTPUT_STORE_BANK

GEOMETRY = CropGeometry(width=256, height=128, eye_distance_frac=0.272, eye_y_frac=0.46)


def _scene(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(40, 200, 256, dtype=np.float32)[None, :, None].repeat(128, 0).repeat(3, 2)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def test_tone_curve_keeps_black_white_and_order() -> None:
    x = np.linspace(0, 1, 101, dtype=np.float32)
    for gamma, s in ((0.7, 0.3), (1.45, -0.3), (1.0, 0.0)):
        y = tone_curve(x, gamma, s)
        assert abs(float(y[0])) < 1e-6 and abs(float(y[-1]) - 1) < 1e-6
        assert np.all(np.diff(y) >= 0)
    assert np.allclose(tone_curve(x, 1.0, 0.0), x)


def test_resolution_loss_keeps_the_size_and_loses_detail() -> None:
    x = _scene().astype(np.float32) / 255
    y = resolution_loss(x, 0.3)
    assert y.shape == x.shape
    assert np.abs(np.diff(y, axis=1)).mean() < 0.5 * np.abs(np.diff(x, axis=1)).mean()


def test_lens_glare_lights_the_lenses_not_the_corners() -> None:
    image = np.full((128, 256, 3), 60, np.uint8)
    eyes = GEOMETRY.eyes()
    distance = float(np.linalg.norm(eyes[1] - eyes[0]))
    out = lens_glare(image, eyes, distance, np.random.default_rng(1), 0.35)
    near = max(int(out[int(y), int(x)].mean()) for x, y in eyes)
    assert near > 75  # at least one lens carries the reflection
    for y, x in ((0, 0), (0, 255), (127, 0), (127, 255)):
        assert abs(int(out[y, x].mean()) - 60) <= 1


def test_the_eval_damage_draws_none_of_the_training_looks() -> None:
    """Eval queries must not change when training grows new looks: QUERY_DAMAGE with the new
    draws off consumes the generator as the old config did and gives the same pixels."""
    assert QUERY_DAMAGE.gamma_p == QUERY_DAMAGE.downscale_p == QUERY_DAMAGE.glare_p == 0
    image = _scene(3)
    a = photometric(image, np.random.default_rng(5), QUERY_DAMAGE)
    other = replace(QUERY_DAMAGE, gamma=(0.1, 0.2), downscale=(0.1, 0.2))
    b = photometric(image, np.random.default_rng(5), other)
    assert np.array_equal(a, b)


def test_motion_blur_smears_along_its_direction_only() -> None:
    x = np.zeros((41, 41, 3), np.float32)
    x[20, 20] = 1.0
    across = motion_blur(x, 9.0, 0.0)  # a horizontal shake
    assert abs(float(across.sum()) - 3.0) < 1e-4  # nothing gained or lost
    assert np.count_nonzero(across[20, :, 0]) >= 9 and np.count_nonzero(across[:, 20, 0]) == 1
    down = motion_blur(x, 9.0, np.pi / 2)
    assert np.count_nonzero(down[:, 20, 0]) >= 9 and np.count_nonzero(down[20, :, 0]) == 1


def test_vignette_darkens_away_from_its_centre_and_never_brightens() -> None:
    x = np.full((128, 256, 3), 0.5, np.float32)
    y = vignette(x, 0.4, np.random.default_rng(2))
    assert y.shape == x.shape and float(y.max()) <= 0.5 + 1e-6
    assert float(y.min()) == pytest.approx(0.5 * 0.6, abs=1e-3)  # the farthest corner


def test_the_camera_draws_are_off_by_default_and_change_the_crop_when_on() -> None:
    """Adding draws must not change what the default training saw (same generator use), and the
    camera preset must actually damage: same seed, other pixels; repeated from the seed."""
    default = AugmentConfig()
    assert default.motion_p == default.vignette_p == default.sharpen_p == default.double_jpeg_p == 0
    image = _scene(6)
    off = replace(CAMERA_AUGMENT, motion_p=0.0, vignette_p=0.0, sharpen_p=0.0, double_jpeg_p=0.0)
    changed = 0
    for seed in range(8):
        plain = photometric(image, np.random.default_rng(seed), default)
        assert np.array_equal(plain, photometric(image, np.random.default_rng(seed), off))
        camera = photometric(image, np.random.default_rng(seed), CAMERA_AUGMENT)
        assert np.array_equal(camera, photometric(image, np.random.default_rng(seed), CAMERA_AUGMENT))
        changed += not np.array_equal(plain, camera)
    assert changed >= 4


def test_training_crops_vary_in_look_and_repeat_from_their_seed() -> None:
    loose = np.asarray(Image.fromarray(_scene(4)).resize((384, 192)))
    loose_geometry = CropGeometry(width=384, height=192, eye_distance_frac=0.272 * 256 / 384, eye_y_frac=0.46)
    cfg = AugmentConfig()
    one = [augment_crop(loose, loose_geometry, GEOMETRY, np.random.default_rng(s), cfg) for s in range(12)]
    two = [augment_crop(loose, loose_geometry, GEOMETRY, np.random.default_rng(s), cfg) for s in range(12)]
    assert all(np.array_equal(a, b) for a, b in zip(one, two, strict=True))
    assert all(c.shape == (128, 256, 3) for c in one)
    means = [float(c.mean()) for c in one]
    assert max(means) - min(means) > 10  # the looks differ, not only the noise


def _portrait_folder(tmp_path: Path, n: int = 40) -> Path:
    (tmp_path / "images").mkdir(parents=True)
    lines = ["id,glasses,lenses,confidence"]
    rng = np.random.default_rng(0)
    for i in range(n):
        pid = f"P{i:05d}"
        grey = rng.integers(0, 255, (50, 40), dtype=np.uint8)
        Image.fromarray(grey).convert("RGB").save(tmp_path / "images" / f"{pid}.jpg")
        glasses = "yes" if i % 5 == 0 else "no"
        lines.append(f"{pid},{glasses},{'clear' if glasses == 'yes' else ''},sure")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_the_portrait_bank_holds_only_bare_train_portraits_mostly_in_colour(tmp_path: Path) -> None:
    from glassfinder.store.local import LocalStore

    root = _portrait_folder(tmp_path / "portraits")
    store = LocalStore(tmp_path / "work" / "store")
    bank = prepare_portrait_bank(store, root)
    assert bank == training_bank_prefix(PORTRAIT_BANK)

    def bank_photos() -> dict[str, bytes]:
        return {i.key.removeprefix(bank): store.get(i.key) for i in store.list(bank)}

    split = split_portraits(load_portraits(root, corrections=None))
    bare_train = {p.id for p in split["train"] if p.glasses == "no"}
    written = bank_photos()
    assert {name.removesuffix(".png") for name in written} == bare_train
    coloured = [not is_grey(np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))) for b in written.values()]
    assert 0.4 < np.mean(coloured) < 1.0  # most colourised, some left grey
    prepare_portrait_bank(store, root)  # a rerun keeps what is there, byte for byte
    assert bank_photos() == written
    spec = portrait_training_spec(bank)
    assert spec.face_source == f"{OUTPUT_STORE_BANK}{bank}" and spec.seed == training_spec().seed
    assert spec.spec_hash != training_spec().spec_hash


def test_the_training_specs_name_no_work_folder_so_their_hashes_recur_anywhere(tmp_path: Path) -> None:
    """An absolute --work once wrote this machine's path into the specs, their hashes and the
    model card; the banks now live in the work store, named by key prefix."""
    from glassfinder.embed.default_model import prepare_photo_bank
    from glassfinder.render.spec import photo_bank_location
    from glassfinder.store.local import LocalStore

    root = _portrait_folder(tmp_path / "portraits")
    hashes = []
    for work in (tmp_path / "one", tmp_path / "elsewhere" / "two"):
        store = LocalStore(work / "store")
        specs = [
            photo_training_spec(prepare_photo_bank(store)),
            portrait_training_spec(prepare_portrait_bank(store, root)),
        ]
        assert not any(str(tmp_path) in s.canonical_json() for s in specs)
        hashes.append([s.spec_hash for s in specs])
        bank_store, prefix = photo_bank_location(specs[0].face_source, store)
        assert [i.key for i in bank_store.list(prefix)] == [f"{prefix}{TRAINING_PHOTO_BARE_NAME}"]
    assert hashes[0] == hashes[1]


def test_the_cards_retrain_line_keeps_the_recipe_and_drops_this_machines_folders() -> None:
    from glassfinder.embed.default_model import _portable_args

    argv = [
        "--work",
        "/home/me/w",
        "--epochs",
        "5",
        "--out-dir=/tmp/o",
        "--portraits",
        "none",
        "--init",
        "default",
    ]
    assert _portable_args(argv) == ["--epochs", "5", "--portraits", "none", "--init", "default"]
    assert _portable_args(["--portraits", "/data/p", "--augment", "basic"]) == ["--augment", "basic"]


def test_the_prior_keeping_flags_reach_the_training_config(tmp_path: Path) -> None:
    from glassfinder.embed.default_model import _base_config, _options, _parser
    from glassfinder.store.local import LocalStore

    def config_of(argv: list[str]) -> tuple[float, float, bool]:
        opts = _options(_parser().parse_args(["--portraits", "none", *argv]), argv)
        base, _ = _base_config(LocalStore(tmp_path / "store"), [training_spec()], opts)
        return base.trunk_lr_scale, base.distill_weight, base.imprint

    assert config_of([]) == (1.0, 0.0, False)  # off unless asked for: the packaged recipe is unchanged
    assert config_of(["--trunk-lr-scale", "0.2", "--distill", "1.5", "--imprint"]) == (0.2, 1.5, True)


def test_layers_train_the_portraits_glasses_on_new_faces_and_need_the_portraits(tmp_path: Path) -> None:
    from glassfinder.embed.default_model import _base_config, _options, _parser, main
    from glassfinder.store.local import LocalStore

    specs = [
        training_spec(),
        replace(portrait_training_spec(training_bank_prefix(PORTRAIT_BANK)), glasses_layer=True),
    ]
    argv = ["--layers", "--portraits", str(tmp_path)]
    base, _ = _base_config(LocalStore(tmp_path / "store"), specs, _options(_parser().parse_args(argv), argv))
    assert base.spec_hashes == (specs[0].spec_hash,) and base.layer_specs == (specs[1].spec_hash,)
    with pytest.raises(SystemExit):  # argparse's one-line error, before anything is rendered
        main(["--layers", "--portraits", "none", "--work", str(tmp_path / "w")])
    assert not (tmp_path / "w").exists()
