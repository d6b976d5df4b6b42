"""`glassfinder presence`: the glasses-presence check that refuses bare faces."""

from __future__ import annotations

import argparse
import json

from glassfinder.cli.common import SubParsers, add, open_args_store


def cmd_presence_train(args: argparse.Namespace) -> int:
    # torch: imported on use, keeping --help fast
    from glassfinder.embed.presence import PresenceTrainConfig, train_and_publish_presence

    config = PresenceTrainConfig(pairs=args.pairs, photo_pairs=args.photo_pairs, seed=args.seed)
    sha, report = train_and_publish_presence(open_args_store(args), config, photo_bank=args.photo_bank)
    print(json.dumps({"sha": sha, **report}, indent=2))
    return 0


def register(sub: SubParsers) -> None:
    presence = sub.add_parser(
        "presence", help="the glasses-presence check that refuses bare faces"
    ).add_subparsers(dest="presence_command", required=True)
    p = add(presence, "train", cmd_presence_train, "train, calibrate and publish the glasses-presence model")
    p.add_argument(
        "--pairs", type=int, default=600, help="render pairs (with/without glasses) on procedural heads"
    )
    p.add_argument(
        "--photo-bank", default=None, help="store URI of a folder of photos of faces without glasses"
    )
    p.add_argument("--photo-pairs", type=int, default=80, help="render pairs on the photo bank's faces")
    p.add_argument("--seed", type=int, default=0)
