"""The tracking package's settings: where runs go (``tracking``) and which registered model they add to
(``registry``)."""

from dataclasses import dataclass

from leukemia.schema import POSITIVE, TRACKING_URI, WEB_ADDRESS, Rule, checked


def mlflow_accepts(validator: str, name: object) -> bool:
    """Whether MLflow's own rule ``mlflow.utils.validation.<validator>`` accepts ``name`` (MLflow is loaded only
    when such a name is set)."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils import validation

    try:
        getattr(validation, validator)(str(name))
    except MlflowException:
        return False
    return True


# A registered model's name must also be free of the '@' that would end it in a models:/<name>@<alias> reference.
REGISTRY_NAME = Rule(
    lambda v: mlflow_accepts("_validate_model_name", v) and "@" not in str(v),
    "must be a name MLflow registers: not blank, no '/', ':' or '@', not a path like '..'",
)
EXPERIMENT_NAME = Rule(
    lambda v: mlflow_accepts("_validate_experiment_name", v),
    "must be a name MLflow accepts for an experiment: not blank, at most 500 characters",
)


@dataclass
class RegistryConfig:
    # Register each training run's model as a new version of this registered model (a sweep's best job gets the
    # alias `champion`); null: register nothing.
    name: str | None = checked(None, REGISTRY_NAME)


@dataclass
class TrackingConfig:
    uri: str = checked("sqlite:///mlflow.db", TRACKING_URI)
    experiment: str = checked("leukemia", EXPERIMENT_NAME)
    # Base address of each run's printed link; null: the server at tracking.uri when it is http(s), else
    # http://127.0.0.1:5000, where `mlflow ui` listens.
    ui_url: str | None = checked(None, WEB_ADDRESS)
    # Seconds between samples of MLflow's system metrics (CPU, memory; GPU on CUDA); null: none.
    system_metrics_s: float | None = checked(2.0, POSITIVE)
