"""The product path's inputs, each with its table of awkward cases: a new patient's folder or CSV (row identity
from file to output, identifiers as written, unknown subjects), the output path (never an input, writable,
checked before anything is scored), and the settings the data can refuse before training."""

from __future__ import annotations

import io
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from leukemia.config import Config
from leukemia.data.manifest import Manifest, Splits, image_files_in, read_csv_columns, subject_column
from leukemia.data.new_cells import read_new_cells
from leukemia.errors import UserError
from leukemia.evaluation.decision import Decision
from leukemia.models import build_model
from leukemia.tasks.context import check_fits_data
from leukemia.tasks.predict import _diagnose, _outputs, score
from leukemia.tracking.cell_model import CellModel, Preprocessing, encode

from conftest import compose_config, separable_cell

NAMES = ["cell.png", "cell.png (2).png", "good.png", "zz.png", "007.png", "7.png", "Zoë cell.bmp", "o'brien.png",
         'quote".png', "a b/c.jpg", "sub/x.bmp", "sub/y.tif"]  # fmt: skip
BROKEN = {"text": b"not an image", "empty": b"", "truncated": None}


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(separable_cell(np.random.default_rng(seed), 40, seed % 2)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model() -> CellModel:
    """A logged model's Python side, built directly: a ResNet18 with seeded random weights and its preprocessing."""
    torch.manual_seed(0)
    cell_model = CellModel()
    cell_model.spec = Preprocessing(depth=18, num_classes=2, crop_size=None, image_size=32, mean=[0.5] * 3,
                                    std=[0.25] * 3, decision=Decision(temperature=0.7, threshold=0.4))  # fmt: skip
    cell_model.network = build_model(18)
    return cell_model.to(torch.device("cpu"))


def predict_config(*overrides: str) -> Config:
    return OmegaConf.to_object(compose_config("task=predict", "trainer.progress=false", *overrides))


def served(model: CellModel, data: bytes) -> float:
    """One image file scored alone, as the served model scores a request of one row."""
    return float(model.predict(None, pd.DataFrame({"image": [encode(data)]}))["probability_all"].iloc[0])


@pytest.mark.parametrize("seed", range(4))
def test_every_written_probability_is_that_files_own_whatever_is_unreadable_around_it(tmp_path, model, seed):
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(NAMES, size=rng.integers(4, len(NAMES)), replace=False).tolist())
    broken = set(rng.choice(chosen, size=rng.integers(1, len(chosen) - 1), replace=False).tolist())
    contents = {}
    for index, name in enumerate(chosen):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        kind = list(BROKEN)[index % len(BROKEN)]
        contents[name] = (
            (BROKEN[kind] if BROKEN[kind] is not None else png(index)[:60]) if name in broken else png(index)
        )
        (tmp_path / name).write_bytes(contents[name])
    (tmp_path / ".hidden.png").write_bytes(png(99))
    batch = int(rng.integers(1, 4))
    cfg = predict_config("data.on_bad_image=skip", f"data.batch_size={batch}", "eval.batch_factor=1",
                         f"data.num_workers={seed % 2}")  # fmt: skip
    rows, skipped = score(model, read_new_cells(str(tmp_path)), cfg, model.spec.decision)
    assert rows["path"].tolist() == chosen  # every file keeps its row, in order; the hidden one is not a cell
    assert sorted(item.path.rsplit("/", 1)[-1] for item in skipped) == sorted(n.rsplit("/", 1)[-1] for n in broken)
    for name, row in zip(chosen, rows.itertuples(), strict=True):
        if name in broken:
            assert np.isnan(row.probability_all) and pd.isna(row.label) and row.skipped, name
        else:
            assert row.probability_all == pytest.approx(served(model, contents[name]), abs=1e-5), name
            assert row.label == int(row.probability_all >= 0.4) and row.skipped == ""


def test_without_skipping_the_first_unreadable_file_stops_the_run_naming_it(tmp_path, model):
    (tmp_path / "a.png").write_bytes(png(0))
    (tmp_path / "b.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"b.png: cannot be read as an image"):
        score(model, read_new_cells(str(tmp_path)), predict_config(), model.spec.decision)


SUBJECTS = ["7", "007", "", " ", "Zoë", "o'brien", 'say "hi"', "P/1", "7"]


def test_a_csvs_identifiers_are_read_as_written_and_a_blank_subject_is_unknown(tmp_path):
    for index in range(len(SUBJECTS)):
        (tmp_path / f"{index:03d}.png").write_bytes(png(index))
    lines = ["path,subject,comment"] + [f'{index:03d}.png,"{s}",x' for index, s in enumerate(SUBJECTS)]
    lines[7] = '006.png,"say ""hi""",x'
    (tmp_path / "cells.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cells = read_new_cells(str(tmp_path / "cells.csv"))
    assert cells.identifiers() == [f"{index:03d}.png" for index in range(len(SUBJECTS))]  # "000.png", not "0.png"
    assert cells.subjects == ["7", "007", None, None, "Zoë", "o'brien", 'say "hi"', "P/1", "7"]
    assert cells.subject_set() == {"7", "007", "Zoë", "o'brien", 'say "hi"', "P/1"}


@pytest.mark.parametrize(
    ("column", "expected"),
    [(["", " ", ""], None), (["a"], ["a"]), (["01", "1", "1.0"], ["01", "1", "1.0"]), (["x", ""], ["x", None])],
    ids=["all-blank", "one-item", "numeric-looking", "some-blank"],
)
def test_one_reader_gives_the_subject_column_of_every_layout(tmp_path, column, expected):
    pd.DataFrame({"path": [f"{k}.png" for k in range(len(column))], "subject": column}).to_csv(tmp_path / "m.csv")
    table = read_csv_columns(tmp_path / "m.csv", ["path"], "predict")
    assert subject_column(table, "m.csv", unknown_allowed=True) == expected
    if expected is not None and None in expected:  # a training split's subjects are all named, or none are
        with pytest.raises(UserError, match=r"m.csv: 'subject' is blank in 1 of 2 rows \(row 3\)"):
            subject_column(table, "m.csv", unknown_allowed=False)


def test_a_patient_is_never_invented_from_cells_whose_subject_is_unknown(tmp_path):
    predictions = pd.DataFrame({"path": list("abcdef"), "probability_all": [0.9, 0.8, 0.1, 0.2, 0.7, np.nan],
                                "subject": ["7", "7", "007", None, None, "007"]})  # fmt: skip
    _diagnose(predictions, Decision(), tmp_path / "subjects.csv")
    table = pd.read_csv(tmp_path / "subjects.csv", dtype={"subject": str})
    assert table["subject"].tolist() == ["007", "7"]  # no "nan", no "7.0"; the skipped cell (NaN) in none
    assert table["cells"].tolist() == [1, 2] and table["predicted_label"].tolist() == [0, 1]


def test_a_spreadsheets_byte_order_mark_does_not_hide_the_path_column(tmp_path):
    (tmp_path / "a.png").write_bytes(png(0))
    (tmp_path / "excel.csv").write_bytes("path,subject\na.png,007\n".encode("utf-8-sig"))
    cells = read_new_cells(str(tmp_path / "excel.csv"))
    assert cells.identifiers() == ["a.png"] and cells.subjects == ["007"]


def test_duplicate_rows_and_duplicate_columns_of_a_predict_csv_are_refused(tmp_path):
    (tmp_path / "a.png").write_bytes(png(0))
    (tmp_path / "twice.csv").write_text("path\na.png\n./a.png\n")
    with pytest.raises(UserError, match=r"twice.csv: 1 image paths are listed more than once"):
        read_new_cells(str(tmp_path / "twice.csv"))
    (tmp_path / "columns.csv").write_text("path,subject,subject\na.png,1,2\n")
    with pytest.raises(UserError, match=r"columns.csv: the column\(s\) \['subject'\] appear more than once"):
        read_new_cells(str(tmp_path / "columns.csv"))


def test_links_that_lead_nowhere_are_left_out_of_a_folder_walk_with_a_warning(tmp_path, caplog):
    (tmp_path / "a.png").write_bytes(png(0))
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "b.png").write_bytes(png(1))
    assert image_files_in(tmp_path, recursive=True) == [tmp_path / "a.png"]
    assert "2 image names are no file to read" in caplog.text
    (tmp_path / "cells.csv").write_text("path\na.png\nloop.png\n")
    with pytest.raises(UserError, match=r"cells.csv: 1 of 2 image files do not exist \(first: .*loop.png\)"):
        read_new_cells(str(tmp_path / "cells.csv"))


def cells_in(folder, names: list[str]) -> Manifest:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(png(0))
    return read_new_cells(str(folder))


OUTPUT_CASES = {
    "the input CSV": ("cells.csv", "cells.csv", "would overwrite"),
    "an input image": ("cells.csv", "img/a.png", "would overwrite"),
    "the subject table onto the input CSV": ("p_subjects.csv", "p.csv", "would overwrite"),
    "the input folder": ("img", "img", "is a folder"),
    "the overlays among the input images": ("img", "img/out.csv", "Grad-CAM overlays would go to"),
    "a folder that is a file": ("cells.csv", "img/a.png/out.csv", "cannot write in"),
    "the tracking store": ("img", "mlflow.db", "would overwrite"),
}


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_an_output_that_is_an_input_or_unwritable_is_refused_before_anything_is_scored(tmp_path, case):
    source, output, message = OUTPUT_CASES[case]
    cells_in(tmp_path / "img", ["a.png", "b.png"])
    if source.endswith(".csv"):
        (tmp_path / source).write_text("path,label,comment\nimg/a.png,1,kept\nimg/b.png,0,'as is'\n")
    (tmp_path / "mlflow.db").write_bytes(b"the registry")
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    cfg = predict_config(f"predict.input={tmp_path / source}", f"predict.output={tmp_path / output}",
                         "predict.model=models:/cells/1", "predict.explain=true",
                         f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}")  # fmt: skip
    with pytest.raises(UserError, match=message) as error:
        _outputs(cfg, read_new_cells(cfg.predict.input))
    assert str(error.value).startswith(f"predict.output={tmp_path / output}") and "\n" not in str(error.value)
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before  # nothing touched


def test_an_output_elsewhere_is_accepted_and_its_replacement_said(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    cells = cells_in(tmp_path / "img", ["a.png"])
    (tmp_path / "out" / "p.csv").parent.mkdir()
    (tmp_path / "out" / "p.csv").write_text("old")
    cfg = predict_config(f"predict.input={tmp_path / 'img'}", f"predict.output={tmp_path / 'out' / 'p.csv'}")
    assert _outputs(cfg, cells) == tmp_path / "out" / "p.csv"
    assert f"{tmp_path / 'out' / 'p.csv'} exists: it will be replaced" in caplog.text
    nested = predict_config(
        f"predict.input={tmp_path / 'img'}", f"predict.output={tmp_path / 'new' / 'deep' / 'p.csv'}"
    )
    assert _outputs(nested, cells).parent.is_dir()


def splits_with_validation(labels: list[int]) -> Splits:
    train = Manifest("train", [], [0, 1])
    return Splits(train, Manifest("valid", [], labels, source="valid.csv"), None)


@pytest.mark.parametrize(
    ("overrides", "labels", "message"),
    [
        (("eval.threshold=balanced",), [1, 1, 1], "eval.threshold=balanced: the validation split holds one class"),
        (("eval.threshold=balanced",), [0], "eval.threshold=balanced: the validation split holds one class"),
        (("trainer.monitor=val_accuracy_normal",), [1, 1], "trainer.monitor=val_accuracy_normal: the validation"),
    ],
    ids=["balanced-one-class", "balanced-one-item", "monitor-undefined"],
)
def test_settings_the_validation_split_cannot_support_are_refused_before_training(overrides, labels, message):
    cfg: Config = OmegaConf.to_object(compose_config(*overrides))
    with pytest.raises(UserError, match=message):
        check_fits_data(cfg, splits_with_validation(labels))
    check_fits_data(cfg, splits_with_validation([0, 1]))  # both classes: accepted
