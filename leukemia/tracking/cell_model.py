"""The MLflow Model a training run leaves: a pyfunc that goes from image files' bytes to the probability that
each cell is an ALL blast, carrying all it needs (crop, resize, normalisation, the architecture and the best
epoch's weights) and the code that trained it, so that a plain Python session, `mlflow models serve` or
``task=predict`` use it without Hydra, the project's config or the training data.

Input: a DataFrame with a column ``image`` of base64-encoded image files (any format and mode PIL reads).
Output: a DataFrame with ``probability_all`` (class 1, calibrated by the training run's temperature) and
``label`` (0 normal, 1 ALL: the probability at or above the training run's threshold) per row; with the
training run's ``eval.tta=flips``, from the mean of each image's four flips, as the evaluation scored it.
"""

from __future__ import annotations

import base64
import binascii
import json
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import PIL
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

from leukemia.data.decoding import UNREADABLE, Normalisation, decode_pixels, read_image
from leukemia.evaluation.decision import Decision, log_probabilities
from leukemia.models import build_model

MODEL_NAME = "model"  # runs:/<run id>/model
DECISION_KEYS = ("temperature", "threshold", "flips", "subject_threshold")  # preprocessing.json's decision
INPUT_COLUMN = "image"
PROBABILITY, LABEL = "probability_all", "label"
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", INPUT_COLUMN)]),
    outputs=Schema([ColSpec("double", PROBABILITY), ColSpec("long", LABEL)]),
)
BATCH = 64  # images per forward pass of a request
PACKAGE = Path(__file__).resolve().parents[1]  # the project's code, carried in the model
MODEL_CODE = Path(__file__).with_name("cell_model_code.py")  # what builds the model when it is loaded


@dataclass(frozen=True)
class Preprocessing:
    """What turns an image file into the model's input, which network reads it, and the decision fixed on the
    training run's validation split (temperature and threshold)."""

    depth: int
    num_classes: int
    crop_size: int | None
    image_size: int
    mean: list[float]
    std: list[float]
    decision: Decision = field(default_factory=Decision)

    def to_json(self) -> str:
        """``preprocessing.json``: one flat object, the decision's temperature, threshold and flips beside the
        rest."""
        return json.dumps({**{k: v for k, v in asdict(self).items() if k != "decision"}, **asdict(self.decision)})

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        """A model's ``preprocessing.json``; one logged before the decision was stored reads as T = 1, 0.5, and
        one logged before the flips were stored as without them."""
        fields = json.loads(text)
        decision = Decision(**{key: fields.pop(key) for key in DECISION_KEYS if key in fields})
        return cls(**fields, decision=decision)


def encode(image_file: bytes) -> str:
    """An image file's bytes as the model's input column holds them."""
    return base64.b64encode(image_file).decode("ascii")


class CellModel(mlflow.pyfunc.PythonModel):
    """The network with its preprocessing, on the GPU when there is one."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Build the network from the artifacts, and say which logged model (of which training run) this is:
        what a served ``models:/<name>@champion`` resolved to when the server started."""
        spec = Preprocessing.from_json(Path(context.artifacts["preprocessing"]).read_text())
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.spec = spec
        self.network = build_model(spec.depth, spec.num_classes)
        self.network.load_state_dict(state)
        self.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        logged = Model.load(Path(context.artifacts["weights"]).parents[1] / "MLmodel")  # <model>/artifacts/weights.pt
        print(f"cell model: logged model {logged.model_id} of training run {logged.run_id}", file=sys.stderr)

    def to(self, device: torch.device) -> CellModel:
        self.device = device
        self.network = self.network.to(device).eval()
        self.normalise = Normalisation(self.spec.mean, self.spec.std, device)
        return self

    def pixels(self, image: PIL.Image.Image) -> torch.Tensor:
        """An RGB image cropped and resized as in training: uint8 (3, size, size)."""
        return decode_pixels(image, self.spec.crop_size, self.spec.image_size)

    @torch.inference_mode()
    def log_probabilities(self, pixels: torch.Tensor) -> np.ndarray:
        """Each uint8 image's class log-probabilities, (N, classes), as the evaluation computed them (averaged over
        the four flips where it used them)."""
        inputs = self.normalise(pixels.to(self.device, non_blocking=True))
        return log_probabilities(self.network, inputs, self.spec.decision.flips).cpu().numpy()

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params=None
    ) -> pd.DataFrame:
        """``probability_all`` and ``label`` per row of base64-encoded image files, with the input's own index (a
        row's numbers are its own, however the caller numbered its rows)."""
        images = [self.pixels(_decoded(row, value)) for row, value in enumerate(model_input[INPUT_COLUMN])]
        batches = [self.log_probabilities(torch.stack(images[i : i + BATCH])) for i in range(0, len(images), BATCH)]
        scored = outputs(
            self.spec.decision, np.concatenate(batches) if batches else np.empty((0, self.spec.num_classes))
        )
        return scored.set_index(model_input.index)


def outputs(decision: Decision, log_probabilities: np.ndarray) -> pd.DataFrame:
    """The model's output columns for (N, classes) log-probabilities: the calibrated probability of ALL, and the
    label at the threshold."""
    probability = decision.probability_all(log_probabilities)  # float64
    return pd.DataFrame({PROBABILITY: probability, LABEL: decision.labels(probability)})


def _decoded(row: int, value: object) -> PIL.Image.Image:
    """Row ``row``'s image, or an error the server answers with 400, naming the row."""
    try:
        return read_image(base64.b64decode(str(value), validate=True))
    except (binascii.Error, *UNREADABLE) as error:
        reason = str(error).split(" <")[0]  # PIL names the in-memory buffer it read
        raise MlflowException(
            f"row {row}: '{INPUT_COLUMN}' is not a base64-encoded image file ({reason}); send each image file's "
            f"bytes, base64-encoded (BMP, PNG, JPEG, TIFF)",
            error_code=INVALID_PARAMETER_VALUE,
        ) from error


def _requirements() -> list[str]:
    """What loading the model needs besides MLflow (which adds itself): the versions that trained it."""
    import importlib.metadata as metadata

    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in ("torch", "pillow", "numpy", "pandas")]


def log_cell_model(client: MlflowClient, run_id: str, state: dict[str, torch.Tensor], spec: Preprocessing,
                   example: bytes) -> str:  # fmt: skip
    """Log the pyfunc as the run ``run_id``'s ``model`` (a logged model of the run's experiment, carrying the
    run's params, as ``mlflow.pyfunc.log_model`` makes it for an active run); returns its ``models:/m-…`` URI.
    ``example``: an image file's bytes for the input example."""
    run = client.get_run(run_id)
    model = client.create_logged_model(run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                       params=run.data.params)  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        torch.save(dict(state), folder / "weights.pt")
        (folder / "preprocessing.json").write_text(spec.to_json())
        code = shutil.copytree(PACKAGE, folder / "code" / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__"))
        info = Model.log(  # what mlflow.pyfunc.log_model does, for that logged model and run
            artifact_path=None,
            name=MODEL_NAME,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=model.model_id,
            python_model=str(MODEL_CODE),
            artifacts={"weights": str(folder / "weights.pt"), "preprocessing": str(folder / "preprocessing.json")},
            code_paths=[str(code)],
            signature=SIGNATURE,
            input_example=pd.DataFrame({INPUT_COLUMN: [encode(example)]}),
            pip_requirements=_requirements(),
        )
    return info.model_uri
