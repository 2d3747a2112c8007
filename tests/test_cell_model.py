"""The logged cell model on its own: image bytes of any format to the probabilities an independent computation
(torchvision's transforms and the bare network) gives; the inputs task=predict reads; model references."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from PIL import Image
from torchvision import transforms

from leukemia.data.new_cells import read_new_cells
from leukemia.errors import UserError
from leukemia.evaluation.decision import Decision
from leukemia.models import build_model
from leukemia.tracking.cell_model import DECISION_KEYS, Preprocessing, log_cell_model
from leukemia.tracking.registry import model_uri

from conftest import separable_cell

SPEC = Preprocessing(depth=18, num_classes=2, crop_size=36, image_size=32, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])


def file_bytes(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A ResNet18 with seeded random weights logged as a run's model in a fresh sqlite store."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    network = build_model(18).eval()
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    example = file_bytes(Image.fromarray(separable_cell(np.random.default_rng(0), 40, 1)), "PNG")
    run_id = new_run("cells", folder)
    return network, log_cell_model(MlflowClient(), run_id, network.state_dict(), SPEC, example), run_id


def new_run(experiment: str, folder) -> str:
    """A run of a new experiment (artifacts under ``folder``) in the store mlflow.set_tracking_uri named."""
    client = MlflowClient()
    return client.create_run(client.create_experiment(experiment, str(folder / "mlruns"))).info.run_id


def reference_probabilities(network: torch.nn.Module, images: list[Image.Image], temperature=1.0) -> np.ndarray:
    """torchvision's CenterCrop, Resize and Normalize, then the network, the temperature and a softmax."""
    steps = transforms.Compose([transforms.CenterCrop(SPEC.crop_size), transforms.Resize(SPEC.image_size),
                                transforms.ToTensor(), transforms.Normalize(SPEC.mean, SPEC.std)])  # fmt: skip
    with torch.no_grad():
        logits = network(torch.stack([steps(image.convert("RGB")) for image in images]))
    return (logits / temperature).softmax(1)[:, 1].numpy()


def test_any_image_format_and_mode_gives_the_probability_an_independent_computation_gives(logged):
    network, uri, run_id = logged
    rng = np.random.default_rng(1)
    cells = [Image.fromarray(separable_cell(rng, 40 + 4 * k, k % 2)) for k in range(6)]
    images = [cells[0], cells[1].convert("L"), cells[2], cells[3].convert("P"), cells[4], cells[5]]
    formats = ["BMP", "PNG", "JPEG", "PNG", "TIFF", "BMP"]
    encoded = [file_bytes(image, format) for image, format in zip(images, formats, strict=True)]
    # What the model reads is the file as written (JPEG is lossy): the reference decodes the same bytes.
    decoded = [Image.open(io.BytesIO(data)) for data in encoded]
    frame = pd.DataFrame({"image": [base64.b64encode(data).decode() for data in encoded]})
    for reference in (uri, f"runs:/{run_id}/model"):
        out = mlflow.pyfunc.load_model(reference).predict(frame)
        assert list(out.columns) == ["probability_all", "label"]
        expected = reference_probabilities(network, decoded)
        np.testing.assert_allclose(out["probability_all"], expected, atol=1e-5)
        assert list(out["label"]) == [int(p > 0.5) for p in expected]


def test_a_request_row_that_is_not_a_base64_image_is_named(logged):
    _, uri, _ = logged
    good = base64.b64encode(file_bytes(Image.new("RGB", (40, 40)), "PNG")).decode()
    model = mlflow.pyfunc.load_model(uri)
    for bad in ("not base64!", base64.b64encode(b"plain text, no image").decode()):
        with pytest.raises(MlflowException, match="row 1: 'image' is not a base64-encoded image file"):
            model.predict(pd.DataFrame({"image": [good, bad]}))
    with pytest.raises(MlflowException, match="image"):
        model.predict(pd.DataFrame({"picture": [good]}))
    for blank in ("", " ", "7", "007", "Zoë"):  # blank, numeric-looking, unicode: named, never scored as a cell
        with pytest.raises(MlflowException, match="row 0: 'image' is not a base64-encoded image file"):
            model.predict(pd.DataFrame({"image": [blank, good]}))


def test_each_answer_row_keeps_its_request_rows_index_and_numbers(logged):
    network, uri, _ = logged
    rng = np.random.default_rng(3)
    cells = [Image.fromarray(separable_cell(rng, 40, k % 2)) for k in range(4)]
    encoded = [base64.b64encode(file_bytes(cell, "PNG")).decode() for cell in cells]
    frame = pd.DataFrame({"image": [encoded[2], encoded[0], encoded[2], encoded[3]]}, index=[30, 10, 31, 7])
    out = mlflow.pyfunc.load_model(uri).predict(frame)
    assert out.index.tolist() == [30, 10, 31, 7]  # a caller joining on its index finds each row's own numbers
    expected = reference_probabilities(network, [cells[2], cells[0], cells[2], cells[3]])
    np.testing.assert_allclose(out["probability_all"], expected, atol=1e-5)
    assert out["probability_all"].iloc[0] == out["probability_all"].iloc[2]  # a duplicate row, the same answer
    assert len(mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"image": []}, dtype=str))) == 0


def test_the_model_records_its_preprocessing_signature_and_example(logged):
    _, uri, _ = logged
    info = mlflow.models.get_model_info(uri)
    assert info.signature.inputs.input_names() == ["image"]
    assert [spec.name for spec in info.signature.outputs] == ["probability_all", "label"]
    folder = Path(mlflow.artifacts.download_artifacts(uri))
    stored = json.loads((folder / "artifacts" / "preprocessing.json").read_text())
    assert stored == {"depth": 18, "num_classes": 2, "crop_size": 36, "image_size": 32, "mean": [0.5, 0.4, 0.3],
                      "std": [0.2, 0.25, 0.3], "temperature": 1.0, "threshold": 0.5, "flips": False,
                      "subject_threshold": None}  # fmt: skip
    assert Preprocessing.from_json(json.dumps(stored)) == SPEC
    older = {key: value for key, value in stored.items() if key not in DECISION_KEYS}
    assert Preprocessing.from_json(json.dumps(older)).decision == Decision(1.0, 0.5, flips=False)
    assert (folder / "code" / "leukemia" / "models.py").is_file()  # the model carries the code that built it


def test_the_model_applies_its_temperature_and_threshold(logged, tmp_path):
    network, _, _ = logged
    rng = np.random.default_rng(2)
    images = [Image.fromarray(separable_cell(rng, 40, k % 2)) for k in range(8)]
    frame = pd.DataFrame({"image": [base64.b64encode(file_bytes(image, "PNG")).decode() for image in images]})
    spec = replace(SPEC, decision=Decision(temperature=3.0, threshold=0.4))
    run_id = new_run("calibrated", tmp_path)
    uri = log_cell_model(MlflowClient(), run_id, network.state_dict(), spec, file_bytes(images[0], "PNG"))
    out = mlflow.pyfunc.load_model(uri).predict(frame)
    expected = reference_probabilities(network, images, temperature=3.0)
    np.testing.assert_allclose(out["probability_all"], expected, atol=1e-5)
    assert list(out["label"]) == [int(p >= 0.4) for p in expected]
    assert not np.allclose(expected, reference_probabilities(network, images))  # the temperature changed them


def test_a_model_evaluated_with_flips_scores_the_mean_of_the_four_flips(logged, tmp_path):
    network, _, _ = logged
    rng = np.random.default_rng(3)
    images = [Image.fromarray(separable_cell(rng, 40, k % 2)) for k in range(6)]
    frame = pd.DataFrame({"image": [base64.b64encode(file_bytes(image, "PNG")).decode() for image in images]})
    spec = replace(SPEC, decision=Decision(temperature=2.0, threshold=0.5, flips=True))
    uri = log_cell_model(MlflowClient(), new_run("flips", tmp_path), network.state_dict(), spec,
                         file_bytes(images[0], "PNG"))  # fmt: skip
    out = mlflow.pyfunc.load_model(uri).predict(frame)
    steps = transforms.Compose([transforms.CenterCrop(SPEC.crop_size), transforms.Resize(SPEC.image_size),
                                transforms.ToTensor(), transforms.Normalize(SPEC.mean, SPEC.std)])  # fmt: skip
    inputs = torch.stack([steps(image.convert("RGB")) for image in images])
    with torch.no_grad():  # the mean softmax of the flipped views, then the temperature on its log
        views = [inputs, inputs.flip(-1), inputs.flip(-2), inputs.flip(-2).flip(-1)]
        mean = torch.stack([network(view).softmax(1) for view in views]).mean(0)
    expected = (mean.log() / 2.0).softmax(1)[:, 1].numpy()
    np.testing.assert_allclose(out["probability_all"], expected, atol=1e-5)
    one_view = (network(inputs).log_softmax(1) / 2.0).softmax(1)[:, 1].detach().numpy()
    assert np.abs(one_view - expected).max() > 1e-4  # the flips change the probabilities


def write_cells(folder, names):
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(path)


def test_a_folder_gives_every_image_under_it_in_sorted_path_order(tmp_path):
    write_cells(tmp_path, ["b.bmp", "a/z.PNG", "a/c.jpg", "10.tif", "2.tiff"])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "labels.csv").write_text("path\n")
    (tmp_path / ".hidden.bmp").write_bytes(b"")
    cells = read_new_cells(str(tmp_path))
    assert cells.identifiers() == ["10.tif", "2.tiff", "a/c.jpg", "a/z.PNG", "b.bmp"]
    assert cells.paths == [tmp_path / name for name in cells.identifiers()]
    assert cells.labels is None and cells.subjects is None


def test_a_csv_gives_its_paths_in_its_order_with_subjects(tmp_path):
    write_cells(tmp_path / "images", ["x.bmp", "y.bmp"])
    pd.DataFrame({"path": ["images/y.bmp", "images/x.bmp"], "subject": ["P2", "P1"]}).to_csv(tmp_path / "cells.csv")
    cells = read_new_cells(str(tmp_path / "cells.csv"))
    assert cells.identifiers() == ["images/y.bmp", "images/x.bmp"]
    assert cells.paths == [(tmp_path / "images" / name).resolve() for name in ("y.bmp", "x.bmp")]
    assert cells.subjects == ["P2", "P1"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root / "nowhere", "nowhere: does not exist; give a folder of cell images or a CSV"),
        (lambda root: (root / "notes.txt").write_text("x") and root / "notes.txt", "is not a folder or a .csv file"),
        (lambda root: root, "no image files (.bmp .png .jpg .jpeg .tif .tiff) under this folder"),
        (
            lambda root: pd.DataFrame({"file": ["a.bmp"]}).to_csv(root / "c.csv") or root / "c.csv",
            "missing column(s) ['path']",
        ),  # fmt: skip
        (
            lambda root: pd.DataFrame({"path": ["gone.bmp"]}).to_csv(root / "c.csv") or root / "c.csv",
            "1 of 1 image files do not exist",
        ),  # fmt: skip
    ],
    ids=["missing", "not-a-csv", "no-images", "no-path-column", "missing-file"],
)
def test_bad_inputs_are_named(tmp_path, make, message):
    (tmp_path / "empty").mkdir()
    source = make(tmp_path / "empty")
    with pytest.raises(UserError) as error:
        read_new_cells(str(source))
    assert message in str(error.value)


def test_model_references_in_every_form():
    run_id = "0123456789abcdef0123456789abcdef"
    assert model_uri(run_id) == f"runs:/{run_id}/model"
    for uri in (f"runs:/{run_id}/model", "models:/cells@champion", "models:/cells/3"):
        assert model_uri(uri) == uri
    with pytest.raises(UserError, match="predict.model=cells: not a model reference; give models:/<name>@<alias>"):
        model_uri("cells")
