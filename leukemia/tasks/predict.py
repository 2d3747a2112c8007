"""task=predict: score new cells with a logged model.

``python run.py task=predict predict.model=models:/<name>@champion predict.input=<folder or CSV>
predict.output=<file.csv>`` writes ``path,probability_all,label`` (and ``subject``, when the CSV has one;
``skipped`` under ``data.on_bad_image=skip``) per input image, one row each in the input's order, in batches on
the GPU when there is one, as one MLflow run of kind "predict" that records the concrete model version an alias
resolved to. The model decodes and scores the images exactly as it does when served (calibrated
probabilities, its own threshold unless ``predict.threshold`` is set). With subjects, ``<name>_subjects.csv``
beside the CSV diagnoses each subject; ``predict.explain=true`` writes a Grad-CAM overlay per image into
``<name>_gradcam/``. Every output is checked before the run opens: none may be an input, each can be written.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from leukemia.config import Config
from leukemia.data.decoding import decoding, read_image
from leukemia.data.loading import SkippedImage as Skipped
from leukemia.data.loading import make_loader
from leukemia.data.manifest import Manifest, first_few, resolved
from leukemia.data.new_cells import read_new_cells
from leukemia.data.schema import OnBadImage
from leukemia.errors import UserError
from leukemia.evaluation.decision import Decision
from leukemia.evaluation.explain import explained
from leukemia.evaluation.subjects import subject_table
from leukemia.tasks.context import launch_context, output_dir, sweep_job_number, sweep_run_id
from leukemia.tracking.cell_model import BATCH, LABEL, PROBABILITY, CellModel, outputs
from leukemia.tracking.registry import load
from leukemia.tracking.runs import tracked_run
from leukemia.tracking.store import sqlite_file
from leukemia.training.engine import predict
from leukemia.training.runtime import resolve_device

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.csv"
SUBJECTS, GRADCAM = "_subjects.csv", "_gradcam"  # beside the predictions: <stem>_subjects.csv, <stem>_gradcam/
SUBJECT, SKIPPED = "subject", "skipped"  # the output's columns after path, probability_all, label


def score(model: CellModel, cells: Manifest, cfg: Config, decision: Decision) -> tuple[pd.DataFrame, list[Skipped]]:
    """One row per input cell, in the input's order: its path, the model's output at ``decision`` and its subject
    (blank where unknown). Each row's numbers are its own file's, placed by the row index its pixels carried.
    Under ``data.on_bad_image=skip`` an unreadable file keeps its row, with no numbers and the reason in
    ``skipped``; otherwise the first stops the run, named."""
    skip = OnBadImage(cfg.data.on_bad_image) == OnBadImage.skip
    spec = model.spec
    loader = make_loader(cells, decoding(spec.crop_size, spec.image_size), cfg.data.batch_size * cfg.eval.batch_factor,
                         cfg.data.num_workers, shuffle=False, seed=cfg.seed, skip_bad=skip)  # fmt: skip
    raw = predict(model.network, loader, model.device, decision.flips, "predict", cfg.trainer.progress,
                  model.normalise)  # fmt: skip
    scored = outputs(decision, raw.log_probabilities.reshape(len(raw.rows), spec.num_classes))
    scored = scored.set_index(pd.Index(raw.rows)).reindex(range(len(cells)))
    rows = pd.DataFrame({"path": cells.identifiers(), PROBABILITY: scored[PROBABILITY],
                         LABEL: scored[LABEL].astype("Int64")})  # fmt: skip
    if cells.subjects is not None:
        rows[SUBJECT] = cells.subjects
    if skip:
        reasons = {item.row: item.reason for item in raw.skipped}
        rows[SKIPPED] = [reasons.get(row, "") for row in range(len(cells))]
    return rows, raw.skipped


def explain(model: CellModel, cells: Manifest, rows: pd.DataFrame, folder: Path) -> list[str]:
    """One Grad-CAM overlay per scored image, for its label, as ``<folder>/<row>_<file stem>.png``; returns
    their names in ``folder`` by row ("" for a skipped one)."""
    folder.mkdir(parents=True, exist_ok=True)
    scored, names = rows.index[rows[LABEL].notna()].tolist(), [""] * len(rows)
    for start in range(0, len(scored), BATCH):
        chunk = scored[start : start + BATCH]
        pixels = torch.stack([model.pixels(read_image(cells.paths[row])) for row in chunk])
        overlays = explained(model.network, pixels, model.normalise, rows.loc[chunk, LABEL].to_numpy(np.int64))
        for row, overlaid in zip(chunk, overlays, strict=True):
            names[row] = f"{row:05d}_{cells.paths[row].stem}.png"
            Image.fromarray(overlaid).save(folder / names[row])
    return names


def beside(output: Path, suffix: str) -> Path:
    """``<folder>/<stem><suffix>`` next to the predictions CSV."""
    return output.with_name(output.stem + suffix)


def _outputs(cfg: Config, cells: Manifest) -> Path:
    """``predict.output`` (by default predictions.csv in the job's output folder), checked before any run opens
    or image is scored: nothing it writes (the CSV, the subject table, the Grad-CAM folder) is one of the inputs
    or would be read as one, and its folder can be written."""
    output = Path(cfg.predict.output).expanduser() if cfg.predict.output else output_dir() / PREDICTIONS
    key = f"predict.output={cfg.predict.output or output}"
    if output.is_dir():
        raise UserError(f"{key}: is a folder; name the CSV file to write (e.g. {PREDICTIONS})")
    source, store = resolved(Path(cfg.predict.input).expanduser()), sqlite_file(cfg.tracking.uri)
    inputs = {source, *(resolved(path) for path in cells.paths), *([resolved(store)] if store else [])}
    written = [output, beside(output, SUBJECTS)] + [beside(output, GRADCAM)] * cfg.predict.explain
    for path in written:
        if resolved(path) in inputs:
            raise UserError(f"{key}: would overwrite {path}, one of the inputs (predict.input={cfg.predict.input}, "
                            f"tracking.uri={cfg.tracking.uri}); name an output file that is not an input")  # fmt: skip
    overlays = resolved(beside(output, GRADCAM))
    if cfg.predict.explain and (overlays.is_relative_to(source) or any(p.is_relative_to(overlays) for p in inputs)):
        raise UserError(f"{key}: the Grad-CAM overlays would go to {overlays}, among the input images; name an "
                        f"output outside predict.input={cfg.predict.input}")  # fmt: skip
    for path in written[:2]:
        _check_writable(path, key)
    return output


def _check_writable(path: Path, key: str) -> None:
    """``path``'s folder made, and a file there can be written (a probe file, removed); an existing ``path`` is
    said to be replaced."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path.parent).close()
    except OSError as error:
        raise UserError(f"{key}: cannot write in {path.parent} ({error.strerror}); name an output in a folder you "
                        f"can write to") from error  # fmt: skip
    if path.exists():
        if not os.access(path, os.W_OK):
            raise UserError(f"{key}: {path} exists and cannot be written; name another output")
        log.info("%s exists: it will be replaced", path)


def _diagnose(predictions: pd.DataFrame, decision: Decision, path: Path) -> None:
    """The subject table: per subject its scored cells, the fraction called ALL, the mean probability and the
    label (at the model's subject threshold). Cells whose subject is unknown, or which were skipped, are in no
    subject."""
    known = predictions[predictions[SUBJECT].notna() & predictions[PROBABILITY].notna()]
    left_out = len(predictions) - len(known)
    if left_out:
        log.info("%d of %d cells are in no subject's diagnosis (subject blank in the CSV, or the file skipped)",
                 left_out, len(predictions))  # fmt: skip
    subjects = subject_table(known[PROBABILITY].to_numpy(), known[SUBJECT].tolist(), decision.threshold,
                             subject_threshold=decision.subject_cutoff)  # fmt: skip
    subjects.to_csv(path, index=False)
    for row in subjects.itertuples():
        called = ("normal", "ALL")[row.predicted_label]
        log.info("subject %s: %d cells, %.0f%% called ALL, mean probability of ALL %.3f -> %s", row.subject,
                 row.cells, 100 * row.fraction_all, row.mean_probability_all, called)  # fmt: skip


def predict_cells(composed: DictConfig) -> dict[str, float]:
    """Score ``predict.input``'s images with ``predict.model``; returns nothing to optimise (an empty dict)."""
    cfg: Config = OmegaConf.to_object(composed)
    for key in ("model", "input"):
        if not getattr(cfg.predict, key):
            raise UserError(f"predict.{key}: not set; task=predict needs predict.model=<model> and "
                            f"predict.input=<folder or CSV>")  # fmt: skip
    cells = read_new_cells(cfg.predict.input)
    output = _outputs(cfg, cells)
    loaded = load(cfg.tracking.uri, cfg.predict.model)
    model = loaded.model.to(resolve_device(cfg.trainer.device, sweep_job_number()))
    _, tags = launch_context(cfg)
    tags = {key: value for key, value in tags.items() if key not in ("model", "data")} | loaded.record
    with tracked_run(cfg.tracking, f"predict-{Path(cfg.predict.input).name}", tags, sweep_run_id()) as run:
        log.info("predicting %d images (%s) with %s (predict.model=%s) on %s: MLflow run %s", len(cells),
                 cells.source, loaded.uri, cfg.predict.model, model.device, run.link)  # fmt: skip
        run.log_params({"predict.model": cfg.predict.model, "predict.input": cfg.predict.input,
                        "predict.output": str(output), "image_count": len(cells)} | loaded.record)  # fmt: skip
        decision = model.spec.decision
        if cfg.predict.threshold is not None:
            decision = replace(decision, threshold=cfg.predict.threshold)
        run.log_params({"threshold": decision.threshold, "temperature": decision.temperature,
                        "subject_threshold": decision.subject_cutoff, "flips": decision.flips})  # fmt: skip
        started = time.perf_counter()
        predictions, skipped = score(model, cells, cfg, decision)
        rate = len(cells) / (time.perf_counter() - started)
        if cfg.predict.explain:
            predictions["gradcam"] = explain(model, cells, predictions, beside(output, GRADCAM))
            log.info("Grad-CAM overlays -> %s", beside(output, GRADCAM))
        predictions.to_csv(output, index=False)
        run.log_artifact(output)
        if SUBJECT in predictions:
            _diagnose(predictions, decision, beside(output, SUBJECTS))
            run.log_artifact(beside(output, SUBJECTS))
        scored = int(predictions[PROBABILITY].notna().sum())
        run.log_metrics({"images_scored": scored, "images_skipped": len(skipped), "images_per_s": rate})
        if skipped:
            run.log_text("".join(f"{item.description}\n" for item in skipped), "data/skipped_images.txt")
            log.warning("%d unreadable images kept as rows without numbers (data.on_bad_image=skip): %s",
                        len(skipped), first_few([item.description for item in skipped]))  # fmt: skip
        log.info("%d of %d images scored (%.1f images/s, decoding included) -> %s", scored, len(cells), rate, output)
    return {}
