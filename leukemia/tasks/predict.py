"""task=predict: score new cells with a logged model.

``python run.py task=predict predict.model=models:/<name>@champion predict.input=<folder or CSV>
predict.output=<file.csv>`` writes ``path,probability_all,label`` (and ``subject``, when the CSV has one) per
image, in batches on the GPU when there is one, as one MLflow run of kind "predict". The model decodes and
scores the images exactly as it does when served (calibrated probabilities, its own threshold unless
``predict.threshold`` is set). With subjects, ``<name>_subjects.csv`` beside the CSV diagnoses each subject;
``predict.explain=true`` writes a Grad-CAM overlay per image into ``<name>_gradcam/``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm import tqdm

from leukemia.config import Config
from leukemia.data.decoding import decoding, read_image
from leukemia.data.loading import make_loader
from leukemia.data.manifest import Manifest
from leukemia.data.new_cells import read_new_cells
from leukemia.data.schema import OnBadImage
from leukemia.errors import UserError
from leukemia.evaluation.decision import Decision
from leukemia.evaluation.explain import explained
from leukemia.evaluation.subjects import subject_table
from leukemia.tasks.context import launch_context, output_dir, sweep_job_number, sweep_run_id
from leukemia.tracking.cell_model import BATCH, CellModel, outputs
from leukemia.tracking.registry import load
from leukemia.tracking.runs import tracked_run
from leukemia.training.runtime import resolve_device

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.csv"


def score(model: CellModel, cells: Manifest, cfg: Config, decision: Decision) -> tuple[pd.DataFrame, list[str]]:
    """The model's output at ``decision`` for each readable image (in order), and the unreadable ones left out
    under ``data.on_bad_image=skip`` (otherwise the first stops the run, named)."""
    skip = OnBadImage(cfg.data.on_bad_image) == OnBadImage.skip
    spec = model.spec
    loader = make_loader(cells, decoding(spec.crop_size, spec.image_size), cfg.data.batch_size * cfg.eval.batch_factor,
                         cfg.data.num_workers, shuffle=False, seed=cfg.seed, skip_bad=skip)  # fmt: skip
    log_probabilities, skipped = [], []
    for batch in tqdm(loader, desc="predict", leave=False, disable=not cfg.trainer.progress, unit="batch"):
        skipped += batch.skipped
        if len(batch.labels):
            log_probabilities.append(model.log_probabilities(batch.images))
    scored = outputs(decision, np.concatenate(log_probabilities) if log_probabilities else
                     np.empty((0, spec.num_classes)))  # fmt: skip
    kept = [i for i, path in enumerate(cells.paths) if not any(note.startswith(f"{path} (") for note in skipped)]
    names = cells.identifiers()
    rows = pd.concat([pd.DataFrame({"path": [names[i] for i in kept]}), scored], axis=1)
    if cells.subjects is not None:
        rows["subject"] = [cells.subjects[i] for i in kept]
    return rows, skipped


def explain(model: CellModel, cells: Manifest, rows: pd.DataFrame, folder: Path) -> list[str]:
    """One Grad-CAM overlay per scored image, for its label, as ``<folder>/<row>_<file stem>.png``; returns
    their names in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, names = dict(zip(cells.identifiers(), cells.paths, strict=True)), []
    for start in range(0, len(rows), BATCH):
        chunk = rows.iloc[start : start + BATCH]
        pixels = torch.stack([model.pixels(read_image(paths[name])) for name in chunk["path"]])
        overlays = explained(model.network, pixels, model.normalise, chunk["label"].to_numpy())
        for k, (name, overlaid) in enumerate(zip(chunk["path"], overlays, strict=True)):
            names.append(f"{start + k:05d}_{Path(name).stem}.png")
            Image.fromarray(overlaid).save(folder / names[-1])
    return names


def beside(output: Path, suffix: str) -> Path:
    """``<folder>/<stem><suffix>`` next to the predictions CSV."""
    return output.with_name(output.stem + suffix)


def _output(cfg: Config) -> Path:
    """``predict.output``, its folder made; by default predictions.csv in the job's output folder."""
    output = Path(cfg.predict.output).expanduser() if cfg.predict.output else output_dir() / PREDICTIONS
    if output.is_dir():
        raise UserError(f"predict.output={output}: is a folder; name the CSV file to write (e.g. {PREDICTIONS})")
    output.parent.mkdir(parents=True, exist_ok=True)
    return output


def _diagnose(predictions: pd.DataFrame, decision: Decision, path: Path) -> None:
    """The subject table: per subject its cells, the fraction called ALL, the mean probability and the label
    (at the model's subject threshold)."""
    subjects = subject_table(predictions["probability_all"], predictions["subject"], decision.threshold,
                             subject_threshold=decision.subject_cutoff)  # fmt: skip
    subjects.to_csv(path, index=False)
    for row in subjects.itertuples():
        called = ("normal", "ALL")[row.predicted_label]
        log.info("subject %s: %d cells, %.0f%% called ALL, mean probability of ALL %.3f -> %s", row.subject,
                 row.cells, 100 * row.fraction_all, row.mean_probability_all, called)  # fmt: skip


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
        decision = model.spec.decision
        if cfg.predict.threshold is not None:
            decision = replace(decision, threshold=cfg.predict.threshold)
        run.log_params({"threshold": decision.threshold, "temperature": decision.temperature,
                        "subject_threshold": decision.subject_cutoff, "flips": decision.flips})  # fmt: skip
        started = time.perf_counter()
        predictions, skipped = score(model, cells, cfg, decision)
        rate = len(cells) / (time.perf_counter() - started)
        if cfg.predict.explain:
            predictions["gradcam"] = explain(model, cells, predictions, beside(output, "_gradcam"))
            log.info("Grad-CAM overlays -> %s", beside(output, "_gradcam"))
        predictions.to_csv(output, index=False)
        run.log_artifact(output)
        if "subject" in predictions:
            _diagnose(predictions, decision, beside(output, "_subjects.csv"))
            run.log_artifact(beside(output, "_subjects.csv"))
        run.log_metrics({"images_scored": len(predictions), "images_skipped": len(skipped), "images_per_s": rate})
        if skipped:
            run.log_text("\n".join(skipped) + "\n", "data/skipped_images.txt")
            log.warning("%d unreadable images left out (data.on_bad_image=skip): %s", len(skipped), skipped[:3])
        log.info("%d predictions (%.1f images/s, decoding included) -> %s", len(predictions), rate, output)
    return {}
