"""`spanpref pairs FOLDER`: preference pairs and SFT examples cut from chains and comparisons."""

from __future__ import annotations

from dataclasses import dataclass

from spanpref.commands.base import command, option
from spanpref.pairs import PairConfig


@dataclass(kw_only=True)
class PairsOptions:
    folder: str = option("dataset repo folder with chains (and comparisons for A/B pairs)", positional=True)
    train: float = option("share of queries in the train split", default=0.8)
    validation: float = option("share of queries in the validation split", default=0.1)
    test: float = option("share of queries in the test split", default=0.1)


@command("pairs", "cut preference pairs and SFT examples from chains and comparisons", PairsOptions, PairConfig)
def pairs(args: PairsOptions, cfg: PairConfig) -> None:
    from dataclasses import replace

    from spanpref.pairs import build_pairs

    splits = {k: v for k, v in (("train", args.train), ("validation", args.validation), ("test", args.test)) if v}
    print(build_pairs(args.folder, replace(cfg, splits=splits)).summary())


COMMANDS = [pairs]
