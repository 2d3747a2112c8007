"""task=predict: score new cells with a logged model.

``python run.py task=predict predict.model=models:/<name>@champion predict.input=<folder or CSV>
predict.output=<file.csv>`` writes ``path,probability_all,label`` (and ``subject``, when the CSV has one) per
image, in batches on the GPU when there is one, as one MLflow run of kind "predict". The model decodes and
scores the images exactly as it does when served.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from leukemia.config import Config, OnBadImage
from leukemia.data.decoding import decoding
from leukemia.data.loading import make_loader
from leukemia.data.manifest import Manifest
from leukemia.data.new_cells import read_new_cells
from leukemia.errors import UserError
from leukemia.tasks.context import launch_context, output_dir, sweep_job_number, sweep_run_id
from leukemia.tracking.cell_model import CellModel, table
from leukemia.tracking.registry import load
from leukemia.tracking.runs import tracked_run
from leukemia.training.runtime import resolve_device

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.csv"


def score(model: CellModel, cells: Manifest, cfg: Config) -> tuple[pd.DataFrame, list[str]]:
    """The model's output for each readable image (in order), and the unreadable ones left out under
    ``data.on_bad_image=skip`` (otherwise the first stops the run, named)."""
    skip = OnBadImage(cfg.data.on_bad_image) == OnBadImage.skip
    spec = model.spec
    loader = make_loader(cells, decoding(spec.crop_size, spec.image_size), cfg.data.batch_size * cfg.eval.batch_factor,
                         cfg.data.num_workers, shuffle=False, seed=cfg.seed, skip_bad=skip)  # fmt: skip
    probabilities, skipped = [], []
    for batch in tqdm(loader, desc="predict", leave=False, disable=not cfg.trainer.progress, unit="batch"):
        skipped += batch.skipped
        if len(batch.labels):
            probabilities.append(model.probabilities(batch.images))
    scored = table(np.concatenate(probabilities) if probabilities else np.empty((0, spec.num_classes)))
    kept = [i for i, path in enumerate(cells.paths) if not any(note.startswith(f"{path} (") for note in skipped)]
    names = cells.identifiers()
    rows = pd.concat([pd.DataFrame({"path": [names[i] for i in kept]}), scored], axis=1)
    if cells.subjects is not None:
        rows["subject"] = [cells.subjects[i] for i in kept]
    return rows, skipped


def _output(cfg: Config) -> Path:
    """``predict.output``, its folder made; by default predictions.csv in the job's output folder."""
    output = Path(cfg.predict.output).expanduser() if cfg.predict.output else output_dir() / PREDICTIONS
    if output.is_dir():
        raise UserError(f"predict.output={output}: is a folder; name the CSV file to write (e.g. {PREDICTIONS})")
    output.parent.mkdir(parents=True, exist_ok=True)
    return output


def predict(composed: DictConfig) -> dict[str, float]:
    """Score ``predict.input``'s images with ``predict.model``; returns nothing to optimise (an empty dict)."""
    cfg: Config = OmegaConf.to_object(composed)
    for key in ("model", "input"):
        if not getattr(cfg.predict, key):
            raise UserError(f"predict.{key}: not set; task=predict needs predict.model=<model> and "
                            f"predict.input=<folder or CSV>")  # fmt: skip
    cells = read_new_cells(cfg.predict.input)
    output = _output(cfg)
    model, uri = load(cfg.tracking.uri, cfg.predict.model)
    model.to(resolve_device(cfg.trainer.device, sweep_job_number()))
    _, tags = launch_context(cfg)
    tags = {key: value for key, value in tags.items() if key not in ("model", "data")} | {"model_uri": uri}
    with tracked_run(cfg.tracking, f"predict-{Path(cfg.predict.input).name}", tags, sweep_run_id()) as run:
        log.info("predicting %d images (%s) with %s on %s: MLflow run %s", len(cells), cells.source, uri,
                 model.device, run.link)  # fmt: skip
        run.log_params({"predict.model": cfg.predict.model, "predict.input": cfg.predict.input,
                        "predict.output": str(output), "model_uri": uri, "image_count": len(cells)})  # fmt: skip
        started = time.perf_counter()
        predictions, skipped = score(model, cells, cfg)
        rate = len(cells) / (time.perf_counter() - started)
        predictions.to_csv(output, index=False)
        run.log_artifact(output)
        run.log_metrics({"images_scored": len(predictions), "images_skipped": len(skipped), "images_per_s": rate})
        if skipped:
            run.log_text("\n".join(skipped) + "\n", "data/skipped_images.txt")
            log.warning("%d unreadable images left out (data.on_bad_image=skip): %s", len(skipped), skipped[:3])
        log.info("%d predictions (%.1f images/s, decoding included) -> %s", len(predictions), rate, output)
    return {}
