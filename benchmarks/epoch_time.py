"""Seconds per training epoch of ResNet18/50/152 on the demo set, as the default run does it.

    python benchmarks/epoch_time.py [data.image_size=64] [data.batch_size=32] ...

Prints one line per depth: training-epoch seconds, images per second and the share of the epoch spent waiting for
data (the epoch of median time of --repeats epochs after one warm-up epoch), plus the validation pass. Numbers
depend on the machine: compare them as ratios within a run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from leukemia.config import Config, register_configs
from leukemia.data.layouts import load_splits
from leukemia.models import build_model
from leukemia.training.engine import EpochResult, run_epoch
from leukemia.training.loop import build_feeds
from leukemia.training.optim import build_optimizer

CONF = Path(__file__).resolve().parents[1] / "leukemia" / "conf"


def timed_epoch(*args, **kwargs) -> EpochResult:
    return run_epoch(*args, progress=False, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.image_size=64")
    parser.add_argument("--depths", default="18,50,152")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg: Config = OmegaConf.to_object(compose(config_name="config", overrides=args.overrides))
    torch.manual_seed(cfg.seed)
    splits = load_splits(cfg.data)
    device = torch.device("cpu")
    train_feed, val_feed = build_feeds(cfg, splits, device)
    print(
        f"data={cfg.data.name} image_size={cfg.data.image_size} batch={cfg.data.batch_size} "
        f"train={len(splits.train)} valid={len(splits.valid)} threads={torch.get_num_threads()} "
        f"torch={torch.__version__}"
    )
    criterion = nn.CrossEntropyLoss()
    for depth in map(int, args.depths.split(",")):
        model = build_model(depth, cfg.model.num_classes).to(device)
        optimizer = build_optimizer(cfg.optim, model.parameters())
        timed_epoch(model, train_feed.loader, criterion, device, optimizer, prepare=train_feed.prepare)  # warm-up
        epochs = sorted(
            (timed_epoch(model, train_feed.loader, criterion, device, optimizer, prepare=train_feed.prepare)
             for _ in range(args.repeats)), key=lambda epoch: epoch.seconds
        )  # fmt: skip
        train = epochs[len(epochs) // 2]
        val = timed_epoch(model, val_feed.loader, criterion, device, prepare=val_feed.prepare)
        print(
            f"resnet{depth:<4d} train epoch {train.seconds:7.1f} s ({train.timing['images_per_s']:6.1f} img/s, "
            f"data wait {train.timing['data_wait_fraction']:.1%})   valid {val.seconds:6.1f} s "
            f"({val.timing['images_per_s']:6.1f} img/s)"
        )


if __name__ == "__main__":
    main()
