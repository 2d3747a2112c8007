"""``python -m leukemia.bench [--study]``: the options of both benchmarks; see ``pipeline`` and ``study``."""

from __future__ import annotations

import argparse

from leukemia.bench.pipeline import pipeline
from leukemia.bench.study import CNMC_CELLS, COURSE_BATCH, COURSE_EPOCHS, study
from leukemia.data.schema import Cache

PIPELINE_IMAGES = 256


def depths(text: str) -> list[int]:
    """``--depths``: comma-separated depths of the course's study."""
    chosen = [int(depth) for depth in text.split(",") if depth.strip().isdigit()]
    if not chosen or len(chosen) != len(text.split(",")) or not set(chosen) <= set(COURSE_EPOCHS):
        raise argparse.ArgumentTypeError(f"{text!r}: give depths among {','.join(map(str, COURSE_EPOCHS))}")
    return chosen


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m leukemia.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--study", action="store_true", help="time the course's three-model study (see study.py)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--depth", type=int, default=18, choices=[18, 50, 152], help="the pipeline benchmark's")
    parser.add_argument("--image-size", type=int, default=350)
    parser.add_argument("--images", type=int, help="generated cells (default: 256; --study: 10,661 as C-NMC)")
    parser.add_argument("--batch-size", type=int, default=COURSE_BATCH)
    parser.add_argument("--workers", type=int, default=2, help="loader and decoding processes")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per model or batch size")
    parser.add_argument("--no-amp", action="store_true", help="CUDA: train in float32 instead of bf16 autocast")
    study_options = parser.add_argument_group("--study only")
    study_options.add_argument("--depths", type=depths, default="18,50,152", help="the depths timed (and projected)")
    study_options.add_argument("--max-batch", type=int, default=512, help="largest batch size tried")
    study_options.add_argument("--epochs", type=int, default=1, help="timed epochs per batch size, after a warm-up")
    study_options.add_argument("--cache", default=Cache.auto.value, choices=[cache.value for cache in Cache])
    study_options.add_argument("--compile", default="none", choices=["none", "default", "reduce-overhead"],
                               help="torch.compile mode (reduce-overhead: CUDA graphs)")  # fmt: skip
    args = parser.parse_args(argv)
    args.images = args.images or (CNMC_CELLS if args.study else PIPELINE_IMAGES)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    return study(args) if args.study else pipeline(args)


if __name__ == "__main__":
    main()
