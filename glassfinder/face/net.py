"""Face analysis for glasses wearers: landmarks, glasses presence and the glasses' box from one network.

Built like PIPNet (Jin et al. 2021): on a low-resolution map (stride 8 of a face crop), each
landmark gets a heatmap score per cell, an in-cell offset, and offsets to its nearest neighbours
in the mean shape; a landmark's position is its own estimate averaged with its neighbours'
estimates of it, which keeps the shape consistent where one part is hidden (dark lenses hide the
pupils; the frame and the face around them still say where they are). The trunk is ImageNet
MobileNetV2 cut after its 96-channel stage, with the stride-16 features upsampled onto the
stride-8 map. A pooled head gives the glasses' box (and a presence logit that trains the trunk);
the glasses-presence decision comes from a head that reads only the eye band, sampled along the
network's own pupils (`BandPresence`).

Why one network and not dlib's 5 points plus a HOG classifier: both were made for bare faces; a
frame across the eyes moves dlib's eye corners and confuses HOG, and neither learns from the
renders whose truth is exact. Written in plain torch because torchvision does not import beside
this torch build (see nets/mobilenet.py).
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from glassfinder.errors import FaultError, PackagedModelError
from glassfinder.face.crop import INPUT_PX, crop_matrix, cut
from glassfinder.face.landmarks import FACE_LANDMARKS
from glassfinder.nets.fold import fold_batchnorm
from glassfinder.nets.mobilenet import _conv_bn_relu, mobilenet_v2_features
from glassfinder.nets.packaged import read_packaged
from glassfinder.nets.weights import load_into, read_weights

STRIDE = 8
TRUNK_DEPTH = 14  # features[:7] -> 32 channels at stride 8; features[7:14] -> 96 at stride 16
NEIGHBOURS = 4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


#: The eye band the presence decision reads, in pupil distances around the pupils' midpoint
#: (x along the eye line, y across it): a frame spans about 2.2 pupil distances and its lenses
#: about 0.7 from brow to cheek. Cells sampled on a BAND_ROWS x BAND_COLS grid.
BAND_HALF_WIDTH = 1.1
BAND_HALF_HEIGHT = 0.5
BAND_ROWS, BAND_COLS = 5, 9
#: Channels sampled there: the fused stride-8 map (128) and the upsampled stride-16 one (96).
BAND_CHANNELS = 128 + 96
BAND_REDUCED = 32


def neighbour_table(mean_shape: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """(L, k) indices of each landmark's k nearest others in the mean shape."""
    d = np.linalg.norm(mean_shape[:, None] - mean_shape[None], axis=2)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1)[:, :k]


def band_grid(pupils: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """(b, 2, 2) pupils in input pixels (subject's left first) -> (b, BAND_ROWS, BAND_COLS, 2)
    sampling points of the eye band in `F.grid_sample`'s coordinates (align_corners=False) on a
    stride-STRIDE map of grid_h x grid_w cells. The band turns and scales with the eye line."""
    left, right = pupils[:, 0], pupils[:, 1]
    centre = (left + right) / 2
    along = left - right  # image right, one pupil distance long
    across = torch.stack([-along[:, 1], along[:, 0]], dim=1)  # image down, as long
    xs = torch.linspace(-BAND_HALF_WIDTH, BAND_HALF_WIDTH, BAND_COLS)
    ys = torch.linspace(-BAND_HALF_HEIGHT, BAND_HALF_HEIGHT, BAND_ROWS)
    pts = (
        centre[:, None, None, :]
        + xs[None, None, :, None] * along[:, None, None, :]
        + ys[None, :, None, None] * across[:, None, None, :]
    )
    # Pixel centres are at integers and cell c covers pixels STRIDE*c - 0.5 ... STRIDE*(c+1) - 0.5.
    size = torch.tensor([grid_w, grid_h], dtype=pts.dtype)
    return (pts + 0.5) / STRIDE / size * 2 - 1


class BandPresence(nn.Module):
    """Glasses presence from the eye band alone. A head on the whole crop's pooled features can
    answer from anything in it (hair, skin, background), and did: real bare faces scored as
    "worn" more than rendered bare heads. The band holds what a frame is (rims, lenses, the
    bridge) and little of who wears it."""

    def __init__(self) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(BAND_CHANNELS, BAND_REDUCED, 1), nn.ReLU(inplace=True))
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(BAND_REDUCED * BAND_ROWS * BAND_COLS, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, 1),
        )

    def forward(self, band: torch.Tensor) -> torch.Tensor:
        """(b, BAND_CHANNELS, BAND_ROWS, BAND_COLS) -> (b,) presence logits."""
        return self.head(self.reduce(band))[:, 0]


class FaceNet(nn.Module):
    neighbours: torch.Tensor  # buffers, declared for the type checker
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, neighbours: np.ndarray) -> None:
        super().__init__()
        n = len(FACE_LANDMARKS)
        if neighbours.shape != (n, NEIGHBOURS):
            raise FaultError(f"neighbour table must be ({n}, {NEIGHBOURS}), got {neighbours.shape}")
        features, _ = mobilenet_v2_features(TRUNK_DEPTH)
        self.features = features  # one Sequential, so ImageNet keys load as features.N...
        self.register_buffer(
            "neighbours", torch.as_tensor(np.ascontiguousarray(neighbours), dtype=torch.long)
        )
        self.fuse = nn.Sequential(_conv_bn_relu(32 + 96, 128, 3, 1), _conv_bn_relu(128, 128, 3, 1))
        self.heat = nn.Conv2d(128, n, 1)
        self.offset = nn.Conv2d(128, 2 * n, 1)
        self.neighbour = nn.Conv2d(128, 2 * n * NEIGHBOURS, 1)
        self.pooled = nn.Sequential(nn.Linear(128 + 96, 128), nn.ReLU(inplace=True), nn.Linear(128, 5))
        self.band_presence = BandPresence()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (b, 3, H, W) float in 0..1 -> raw outputs (cells: H/8 x W/8)."""
        x = (x - self.mean) / self.std
        low = self.features[:7](x)
        high = self.features[7:](low)
        up = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        h = self.fuse(torch.cat([low, up], dim=1))
        b, _, gh, gw = h.shape
        n = len(FACE_LANDMARKS)
        pooled = torch.cat([h.mean(dim=(2, 3)), high.amax(dim=(2, 3))], dim=1)
        head = self.pooled(pooled)
        heat = self.heat(h).view(b, n, gh * gw)
        offset = self.offset(h).view(b, n, 2, gh, gw)
        pupils = own_estimates(heat[:, :2].detach(), offset[:, :2].detach(), gw)
        band = F.grid_sample(
            torch.cat([h, up], dim=1),
            band_grid(pupils, gh, gw),
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        return {
            "heat": heat,
            "offset": offset,
            "neighbour": self.neighbour(h).view(b, n, NEIGHBOURS, 2, gh, gw),
            "presence": head[:, 0],  # the pooled head's: trains the trunk (stages 1-2), decides nothing
            "presence_band": self.band_presence(band),  # the decision (face.training.presence.py fits it)
            "band": band,
            "box": head[:, 1:5],  # glasses box (x0, y0, x1, y1) in input / INPUT_PX units
            "pooled": pooled,  # what the face verifier (face/training/verify.py) reads
        }


def best_cells(heat: torch.Tensor, grid_w: int) -> tuple[torch.Tensor, ...]:
    """(b, n, cells) heat -> each landmark's best cell (cx, cy) and the (batch, landmark) index
    grids that pick its outputs there."""
    b, n, _ = heat.shape
    cell = heat.argmax(dim=2)  # (b, n)
    bi = torch.arange(b)[:, None].expand(b, n)
    li = torch.arange(n)[None, :].expand(b, n)
    return cell % grid_w, cell // grid_w, bi, li


def own_estimates(heat: torch.Tensor, off: torch.Tensor, grid_w: int) -> torch.Tensor:
    """(b, n, cells) heat and (b, n, 2, gh, gw) offsets -> (b, n, 2) each landmark's own
    estimate in input pixels: its best cell plus that cell's offset."""
    cx, cy, bi, li = best_cells(heat, grid_w)
    return (torch.stack([cx, cy], dim=-1).float() + off[bi, li, :, cy, cx]) * STRIDE


def own_and_merged(
    out: dict[str, torch.Tensor], neighbours: torch.Tensor, grid_w: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw outputs -> (b, L, 2) landmark positions in input pixels, twice: each landmark's own
    estimate, and that estimate averaged with its neighbours' votes for it (PIPNet's merge)."""
    heat, nb = out["heat"], out["neighbour"]
    b, n, _ = heat.shape
    cx, cy, bi, li = best_cells(heat, grid_w)
    base = torch.stack([cx, cy], dim=-1).float()
    own = (base + out["offset"][bi, li, :, cy, cx]) * STRIDE  # as own_estimates, cells shared
    nb_off = nb[bi, li, :, :, cy, cx]  # (b, n, K, 2): from landmark l's cell to its neighbours
    votes = (base[:, :, None, :] + nb_off) * STRIDE  # estimates of landmark neighbours[l, k]
    total = own.clone()
    count = torch.ones(b, n, 1)
    idx = neighbours.reshape(1, n * NEIGHBOURS, 1).expand(b, -1, 2)
    total = total.scatter_add(1, idx, votes.reshape(b, n * NEIGHBOURS, 2))
    count = count.scatter_add(1, idx[..., :1], torch.ones(b, n * NEIGHBOURS, 1))
    return own, total / count


def decode(
    out: dict[str, torch.Tensor], neighbours: torch.Tensor, grid_w: int, merge: torch.Tensor | None = None
) -> torch.Tensor:
    """Raw outputs -> (b, L, 2) landmark positions in input pixels.

    Landmark l is its own estimate averaged with its neighbours' votes (PIPNet's merge) where
    merge[l] (default: everywhere), else its own estimate alone: measured on held-out identities,
    the merge made the pupils worse (their neighbours, the eye corners, are less sure of them than
    they are of themselves), so the card's model says per landmark which to use."""
    return pick_merged(*own_and_merged(out, neighbours, grid_w), merge)


def pick_merged(own: torch.Tensor, merged: torch.Tensor, merge: torch.Tensor | None) -> torch.Tensor:
    """Per landmark, the merged estimate where merge[l] (everywhere when None), else its own."""
    return merged if merge is None else torch.where(merge[None, :, None], merged, own)


def shape_disagreement(own: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
    """(b,) median over landmarks of |own estimate - merged estimate|, in units of the pupil
    distance: how far the face's parts disagree about where each other are. A face holds its
    shape (renders: 99% under 0.035; real photos wearing frames: under 0.05); a false detection
    (a patch, a pattern) gives parts that do not agree."""
    ipd = (own[:, 0] - own[:, 1]).norm(dim=1).clamp_min(1e-3)
    return (own - merged).norm(dim=2).median(dim=1).values / ipd


#: Above this shape disagreement (see `shape_disagreement`) the box is refused as not a face:
#: 5x what real faces wearing frames reach, so a render-to-photo shift does not refuse them.
MAX_SHAPE_DISAGREEMENT = 0.25


#: The lowest dlib score the query path hands to the face verifier (faces behind large dark
#: lenses score this low; the verifier, not the score, decides).
VERIFIED_DETECTION_THRESHOLD = -1.0
#: Width of the pooled features the verifier reads (FaceNet.forward's "pooled").
POOLED_WIDTH = 128 + 96


@dataclass(frozen=True)
class FaceVerifier:
    """Is the box a face: standardise the pooled features, then a logistic regression (fitted by
    face/training/verify.py); a face at probability >= threshold."""

    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    threshold: float

    def probability(self, pooled: np.ndarray) -> np.ndarray:
        """(b, POOLED_WIDTH) -> (b,) probabilities that each box holds a face."""
        z = (pooled - np.asarray(self.mean)) / np.asarray(self.scale)
        logit = np.clip(z @ np.asarray(self.coef) + self.intercept, -60.0, 60.0)
        return 1.0 / (1.0 + np.exp(-logit))

    @classmethod
    def from_meta(cls, meta: Any, where: str) -> FaceVerifier:
        """The verifier of a weights file's meta, or a GlassFinderError naming the file and field."""
        try:
            verifier = cls(**meta)
            sizes = {len(verifier.mean), len(verifier.scale), len(verifier.coef)}
            ok = sizes == {POOLED_WIDTH} and 0.0 < float(verifier.threshold) <= 1.0
        except Exception as exc:  # not a dict, missing or unexpected keys
            raise PackagedModelError(
                f"face-analysis model {where}: meta.verifier is malformed ({exc})"
            ) from exc
        if not ok:
            raise PackagedModelError(
                f"face-analysis model {where}: meta.verifier has {sorted(sizes)} weights and threshold "
                f"{verifier.threshold}, expected {POOLED_WIDTH} and a threshold in (0, 1]"
            )
        return verifier


@dataclass(frozen=True)
class FaceAnalysis:
    """What the network says about one face, in the photo's own pixels."""

    landmarks_xy: np.ndarray  # (L, 2) in FACE_LANDMARKS order
    glasses_probability: float
    glasses_box_xyxy: np.ndarray  # (4,)
    shape_disagreement: float  # see `shape_disagreement`
    #: The face verifier's probability that the box holds a face (face/training/verify.py), and
    #: the threshold its card set; 1.0 and 0.0 for a model without a verifier.
    face_probability: float = 1.0
    face_threshold: float = 0.0

    @property
    def holds_a_face_shape(self) -> bool:
        return self.shape_disagreement <= MAX_SHAPE_DISAGREEMENT

    @property
    def verified_as_face(self) -> bool:
        return self.face_probability >= self.face_threshold

    @property
    def looks_like_a_face(self) -> bool:
        return self.holds_a_face_shape and self.verified_as_face

    @property
    def eyes_xy(self) -> np.ndarray:
        """(2, 2): the subject's left eye centre, then the right (what `align_crop` takes)."""
        return self.landmarks_xy[0:2]


class FaceAnalyser:
    """A loaded network and the threshold its card calibrated for glasses presence.

    Runs a BatchNorm-folded copy of `net`: the query path analyses one face at a time on CPU,
    where BatchNorm's separate pass over every activation costs a quarter to a third of the
    forward (landmarks equal to 1e-4 px, presence to 1e-5). The copy is a snapshot, so build a new
    analyzer after changing the weights.
    """

    def __init__(
        self,
        net: FaceNet,
        threshold: float,
        merge: list[bool] | None = None,
        verifier: FaceVerifier | None = None,
    ) -> None:
        self.net = net.eval()
        self._folded = fold_batchnorm(self.net)
        self.threshold = float(threshold)
        self.merge = None if merge is None else torch.tensor(merge, dtype=torch.bool)
        self.verifier = verifier  # None while training: every box is taken for a face

    @torch.inference_mode()
    def analyse_crops(
        self, crops: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(b, INPUT_PX, INPUT_PX, 3) uint8 -> landmarks (b, L, 2) and boxes (b, 4) in crop pixels,
        glasses probabilities (b,), shape disagreements (b,), face probabilities (b,)."""
        x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255.0
        out = self._folded(x)
        grid_w = crops.shape[2] // STRIDE
        own, merged = own_and_merged(out, self.net.neighbours, grid_w)
        lm = pick_merged(own, merged, self.merge)
        box = (out["box"] * INPUT_PX).numpy()
        disagreement = shape_disagreement(own, merged).numpy()
        pooled = out["pooled"].numpy().astype(np.float64)
        p_face = np.ones(len(crops)) if self.verifier is None else self.verifier.probability(pooled)
        return lm.numpy(), box, torch.sigmoid(out["presence_band"]).numpy(), disagreement, p_face

    def analyse(self, rgb: np.ndarray, face_box_xyxy: tuple[int, int, int, int] | np.ndarray) -> FaceAnalysis:
        m = crop_matrix(np.asarray(face_box_xyxy, np.float32))
        crop = cut(rgb, m)
        lm, box, p, disagreement, p_face = self.analyse_crops(crop[None])
        inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
        to_image = lambda pts: pts @ inv[:, :2].T + inv[:, 2]  # noqa: E731
        return FaceAnalysis(
            landmarks_xy=to_image(lm[0]).astype(np.float32),
            glasses_probability=float(p[0]),
            glasses_box_xyxy=to_image(box[0].reshape(2, 2)).reshape(4).astype(np.float32),
            shape_disagreement=float(disagreement[0]),
            face_probability=float(p_face[0]),
            face_threshold=0.0 if self.verifier is None else self.verifier.threshold,
        )


def save_weights(net: FaceNet, meta: dict[str, Any]) -> bytes:
    """Weights file: state dict plus plain-data meta (loadable with weights_only=True)."""
    buf = io.BytesIO()
    torch.save({"state_dict": net.state_dict(), "meta": meta}, buf)
    return buf.getvalue()


def load_weights(
    data: bytes, where: str, *, allow_missing_prefix: str | None = None
) -> tuple[FaceNet, dict[str, Any]]:
    """Rebuild the network from a weights file, strictly (never unpickles code). Weights whose
    names start with `allow_missing_prefix` may be missing: see `load_trunk`."""
    blob = read_weights(data, where, "face-analysis weights")
    try:
        state, meta = blob["state_dict"], blob["meta"]
        net = FaceNet(np.asarray(meta["neighbours"], np.int64))
    except (TypeError, KeyError, ValueError) as exc:
        raise FaultError(
            f"face-analysis weights {where} cannot be loaded ({type(exc).__name__}: {exc})"
        ) from exc
    load_into(net, state, where, "face-analysis weights", allow_missing_prefix=allow_missing_prefix)
    return net, meta


def load_trunk(data: bytes, where: str) -> tuple[FaceNet, dict[str, Any]]:
    """A weights file's network for further training (face.training.train --init packaged): every weight
    loaded strictly except the band presence head, which files from before it lack and which
    stage 3 (face/training/presence.py) fits afresh anyway."""
    return load_weights(data, where, allow_missing_prefix="band_presence.")


PACKAGED_NAME = "face-analysis"


@functools.lru_cache(maxsize=2)
def packaged_analyser(models_dir: Path | None = None) -> tuple[str, FaceAnalyser]:
    """(model sha, analyzer) of the face-analysis model shipped in the package (sha256 checked
    against its card; a mismatch is refused)."""
    packaged = read_packaged(PACKAGED_NAME, models_dir)
    net, meta = load_weights(packaged.weights, str(packaged.path))
    if list(meta.get("landmarks", [])) != list(FACE_LANDMARKS) or int(meta.get("input_px", 0)) != INPUT_PX:
        raise PackagedModelError(
            f"face-analysis model {packaged.path} predicts {meta.get('landmarks')} at "
            f"{meta.get('input_px')} px, expected {list(FACE_LANDMARKS)} at {INPUT_PX} px: "
            "retrain it (python -m glassfinder.face.training.train)"
        )
    if "verifier" not in meta:  # the query path searches weak detections only behind a verifier
        raise PackagedModelError(
            f"face-analysis model {packaged.path} has no meta.verifier: fit it "
            "(python -m glassfinder.face.training.verify --work DIR)"
        )
    verifier = FaceVerifier.from_meta(meta["verifier"], str(packaged.path))
    return packaged.sha, FaceAnalyser(net, float(meta["threshold"]), meta.get("merge_votes"), verifier)
