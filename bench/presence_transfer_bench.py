"""Does glasses presence learnt on renders carry over to a real face? The pooled head against the eye band.

Trains the face network's first stage (procedural renders only, face.training.fit.train: the recipe's own
stage 1, same seed, checkpointed in --work) so that no real face has been seen by any weight, then
fits the eye-band presence head on the same renders (face_presence, real uploads left out). Both
presence heads get their threshold from the held-out calibration identities, as the packaged
model's does, and are then asked about damaged uploads of Grace Hopper's photo, a real face
neither has seen: bare (her frames inpainted), in her own frames, and wearing rendered catalogue
frames. The astronaut is not used (she is the unseen test face of bench/face_bench.py).

    .venv/bin/python bench/presence_transfer_bench.py --work .glassfinder/face-train [--uploads 80]

Needs the render shards of `python -m glassfinder.face.training.train --work DIR --stage render`.
Stage 1 takes ~15 min on two idle cores, the band features ~3 min.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def head_analyser_class() -> Any:
    """FaceAnalyser whose glasses probability comes from the named output (the pooled head's
    "presence" or the eye band's "presence_band", which the packaged analyser reads)."""
    import torch

    from glassfinder.face.net import FaceAnalyser

    class HeadAnalyser(FaceAnalyser):
        def __init__(self, net: Any, threshold: float, *, head: str) -> None:
            super().__init__(net, threshold)
            self.head = head

        def analyse_crops(self, crops: np.ndarray) -> Any:
            lm, box, _, disagreement, p_face = super().analyse_crops(crops)
            with torch.inference_mode():
                x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255.0
                p = torch.sigmoid(self._folded(x)[self.head]).numpy()
            return lm, box, p, disagreement, p_face

    return HeadAnalyser


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--work", type=Path, default=Path(".glassfinder/face-train"))
    parser.add_argument("--shards", type=int, default=30)
    parser.add_argument("--uploads", type=int, default=80, help="damaged uploads per kind of photo")
    args = parser.parse_args()
    import torch

    from glassfinder.face.training.data import load_shards, training_assets
    from glassfinder.face.training.fit import FitConfig, calibrate, calibration_half, predict, train
    from glassfinder.face.training.photo_data import training_photo_wearing
    from glassfinder.face.training.presence import (
        BandSet,
        PresenceConfig,
        build_band_set,
        fit_head,
        upload_crops,
    )
    from glassfinder.heads.training_photo import training_photo, training_photo_bare

    torch.set_num_threads(2)
    HeadAnalyser = head_analyser_class()
    data = load_shards(args.work / "shards", range(args.shards))
    net, seconds = train(data, args.work, FitConfig())
    print(f"stage 1 (renders only): {seconds:.0f} s of training")
    cfg = PresenceConfig()
    bands = build_band_set(net, data, training_assets(args.work), args.work, cfg)
    renders = ~bands.real
    fit_head(net.band_presence, BandSet(bands.band[renders], bands.worn[renders], bands.real[renders]), cfg)
    net.eval()

    held = data.subset(data.held_out)
    calib = held.subset(calibration_half(held))
    rng = np.random.default_rng([cfg.seed, 9])
    wearing = training_photo_wearing(training_assets(args.work), 30)
    kinds = {
        "bare": ([training_photo_bare()], False),
        "own_frames": ([training_photo()], True),
        "rendered_frames": (wearing, True),
    }
    crops = {k: np.stack(upload_crops(photos, args.uploads, rng, k)) for k, (photos, _) in kinds.items()}
    report: dict[str, Any] = {"uploads_per_kind": args.uploads}
    for head in ("presence", "presence_band"):
        p = predict(HeadAnalyser(net, 0.5, head=head), calib)["p"]
        threshold = calibrate(p[calib.worn], p[~calib.worn])
        analyser = HeadAnalyser(net, threshold, head=head)
        entry: dict[str, Any] = {"threshold": round(threshold, 4)}
        for kind, (_, worn) in kinds.items():
            probs = analyser.analyse_crops(crops[kind])[2]
            wrong = probs < threshold if worn else probs >= threshold
            entry[kind] = {
                "refused" if worn else "accepted": f"{int(wrong.sum())}/{len(probs)}",
                "p_median": round(float(np.median(probs)), 4),
                "p_max" if not worn else "p_min": round(float(probs.max() if not worn else probs.min()), 4),
            }
        report["pooled head" if head == "presence" else "eye band"] = entry
    print(json.dumps(report, indent=2))
    (args.work / "presence-transfer.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
