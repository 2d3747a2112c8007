"""The code MLflow runs to build the logged model when it loads it ("models from code"): no pickled object is
read back. The model's ``code`` folder carries the package this imports."""

import mlflow

from leukemia.tracking.cell_model import CellModel

mlflow.models.set_model(CellModel())
