"""ImageNet backbone and packaged models: strict weight loading, integrity checks, registry fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from glassfinder.embed import packaged
from glassfinder.embed.mobilenet import (
    FULL_DEPTH,
    PretrainedWeightsError,
    load_features,
    mobilenet_v2_features,
)
from glassfinder.embed.model import (
    ARCHITECTURE,
    MOBILENET,
    ModelConfig,
    build_model,
    mobilenet_config,
    model_sha,
    weights_bytes,
)
from glassfinder.embed.registry import current_sha, load_model, publish_model, published_sha
from glassfinder.errors import GlassFinderError
from glassfinder.store.local import LocalStore

SMALL = mobilenet_config(depth=5, dim=32, crop=ModelConfig().crop)


def _torchvision_like_state(depth: int = FULL_DEPTH) -> dict[str, torch.Tensor]:
    """A state dict in torchvision's mobilenet_v2 layout (random values): features + classifier."""
    features, _ = mobilenet_v2_features(FULL_DEPTH)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(1000, 1280)
    state["classifier.1.bias"] = torch.zeros(1000)
    return state


def test_mobilenet_layout_matches_torchvision_key_count_and_loads_strictly() -> None:
    state = _torchvision_like_state()
    assert len(state) == 314  # what torchvision's mobilenet_v2-b0353104.pth holds
    features, channels = mobilenet_v2_features(17)
    load_features(features, state, 17, "test")  # deeper layers and the classifier are dropped
    assert channels == 160
    assert torch.equal(features.state_dict()["16.conv.3.weight"], state["features.16.conv.3.weight"])


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("missing", r"missing key 'features\.3\.conv\.1\.1\.weight'"),
        ("unexpected", r"unexpected key 'backbone\.extra'"),
        ("shape", r"key 'features\.2\.conv\.0\.0\.weight' has shape \(1, 2\), expected \(96, 16, 1, 1\)"),
    ],
)
def test_wrong_keys_or_shapes_fail_naming_the_key(damage: str, match: str) -> None:
    state = _torchvision_like_state()
    if damage == "missing":
        del state["features.3.conv.1.1.weight"]
    elif damage == "unexpected":
        state["backbone.extra"] = torch.zeros(1)
    else:
        state["features.2.conv.0.0.weight"] = torch.zeros(1, 2)
    features, _ = mobilenet_v2_features(FULL_DEPTH)
    with pytest.raises(PretrainedWeightsError, match=match):
        load_features(features, state, FULL_DEPTH, "test.pth")
    assert isinstance(PretrainedWeightsError("x"), GlassFinderError)


def test_imagenet_weights_load_when_installed() -> None:
    from glassfinder.embed.imagenet import load_mobilenet_v2_state

    try:
        state, where = load_mobilenet_v2_state()
    except PretrainedWeightsError as exc:
        pytest.skip(f"ImageNet weights not downloaded here: {exc}")
    assert len(state) == 314 and "mobilenet_v2-b0353104" in where
    model = build_model(mobilenet_config(depth=FULL_DEPTH), seed=0)
    assert torch.equal(model.state_dict()["features.18.0.weight"], state["features.18.0.weight"])


def test_old_resnet_cards_still_load_and_configs_validate() -> None:
    old = {
        "dim": 64,
        "widths": [16, 32, 64, 96],
        "blocks": [1, 1, 1, 1],
        "crop": {"width": 128, "height": 64, "eye_distance_frac": 0.34, "eye_y_frac": 0.45},
        "architecture": ARCHITECTURE,
    }  # a card written before the MobileNet backbone existed
    config = ModelConfig.from_dict(old)
    assert config.architecture == ARCHITECTURE and config.pooling == "meanmax"
    assert ModelConfig.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(GlassFinderError, match="architecture must be one of"):
        ModelConfig(architecture="vgg")
    with pytest.raises(GlassFinderError, match=r"depth must be 2\.\.19, got 0"):
        ModelConfig(architecture=MOBILENET)
    with pytest.raises(GlassFinderError, match="pooling must be one of"):
        mobilenet_config(pooling="median")


def _package(tmp_path: Path, seed: int = 0) -> tuple[Path, str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    model = build_model(SMALL, seed=seed, pretrained=False).eval()
    weights = weights_bytes(model)
    import hashlib

    sha = model_sha(weights)
    card = {
        "name": "glasses",
        "model_sha": sha,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "config": SMALL.to_dict(),
    }
    (tmp_path / "glasses.pt").write_bytes(weights)
    (tmp_path / "glasses.card.json").write_text(json.dumps(card))
    return tmp_path, sha


def test_packaged_model_with_a_flipped_byte_is_refused(tmp_path: Path) -> None:
    models, sha = _package(tmp_path)
    assert packaged.read_packaged("glasses", models).sha == sha
    data = bytearray((models / "glasses.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (models / "glasses.pt").write_bytes(bytes(data))
    with pytest.raises(packaged.PackagedModelError, match="does not match its card"):
        packaged.read_packaged("glasses", models)


def test_a_store_without_the_model_uses_the_packaged_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models, sha = _package(tmp_path / "models")
    monkeypatch.setattr(packaged, "MODELS_DIR", models)
    store = LocalStore(tmp_path / "store")
    assert current_sha(store, "glasses") == (sha, None) and published_sha(store, "glasses") == (None, None)
    loaded = load_model(store, "glasses")
    assert loaded.sha == sha and loaded.model.config == SMALL
    assert load_model(store, f"glasses@{sha}").sha == sha
    with pytest.raises(GlassFinderError, match="no model named 'other'"):
        load_model(store, "other")
    # Publishing one in the store takes over; the packaged one stays reachable by its sha.
    own = publish_model(store, "glasses", build_model(SMALL, seed=9, pretrained=False), {})
    assert current_sha(store, "glasses")[0] == own != sha
    assert load_model(store, f"glasses@{sha}").sha == sha
    # A corrupted packaged file is refused through the registry too.
    (models / "glasses.pt").write_bytes(b"not weights")
    with pytest.raises(GlassFinderError, match="does not match its card"):
        load_model(store, f"glasses@{sha}")


def test_shipped_default_model_matches_its_card() -> None:
    if not packaged.available("glasses"):
        pytest.skip("no packaged default model in this checkout")
    model = packaged.read_packaged("glasses")
    assert model.sha == model.card["model_sha"]
    assert len(model.weights) <= 25 * 1024 * 1024
    assert "MIT" in model.card["pretrained"]["licence"]
    assert model.card["training_data"]["catalogue_seed"] not in (0, 1, 5, 7, 11, 99)


def test_packaged_face_analysis_model_is_verified_and_loaded_strictly(tmp_path: Path) -> None:
    """The shipped face-analysis weights load against their card; a flipped byte is refused, and
    a weights file with a key the network does not have never half-loads."""
    import io
    import shutil

    from glassfinder.embed import face_net

    models = tmp_path / "models"
    models.mkdir()
    for name in (f"{face_net.PACKAGED_NAME}.pt", f"{face_net.PACKAGED_NAME}.card.json"):
        shutil.copy(packaged.MODELS_DIR / name, models)
    card = json.loads((models / f"{face_net.PACKAGED_NAME}.card.json").read_text())
    sha, analyzer = face_net.packaged_analyzer(models)
    assert sha == card["model_sha"] and 0.0 < analyzer.threshold < 1.0
    assert (models / f"{face_net.PACKAGED_NAME}.pt").stat().st_size <= 25 * 1024 * 1024
    assert "MIT" in card["imagenet"]["licence"] and "astronaut" in card["data"]["faces"]

    weights = models / f"{face_net.PACKAGED_NAME}.pt"
    original = weights.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    weights.write_bytes(bytes(flipped))
    face_net.packaged_analyzer.cache_clear()
    with pytest.raises(packaged.PackagedModelError, match="does not match its card"):
        face_net.packaged_analyzer(models)

    net, meta = face_net.load_weights(original, "the shipped file")
    state = net.state_dict()
    state["fuse.9.weight"] = torch.zeros(1)
    blob = io.BytesIO()
    torch.save({"state_dict": state, "meta": meta}, blob)
    with pytest.raises(
        GlassFinderError, match=r"(?s)face-analysis weights x\.pt cannot be loaded .*fuse\.9\.weight"
    ):
        face_net.load_weights(blob.getvalue(), "x.pt")
