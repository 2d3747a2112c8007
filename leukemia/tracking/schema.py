"""The tracking package's settings: where runs go (``tracking``) and which registered model they add to
(``registry``)."""

from dataclasses import dataclass

from leukemia.schema import POSITIVE, TEXT, TRACKING_URI, WEB_ADDRESS, checked


@dataclass
class RegistryConfig:
    # Register each training run's model as a new version of this registered model (a sweep's best job gets the
    # alias `champion`); null: register nothing.
    name: str | None = checked(None, TEXT)


@dataclass
class TrackingConfig:
    uri: str = checked("sqlite:///mlflow.db", TRACKING_URI)
    experiment: str = checked("leukemia", TEXT)
    # Base address of each run's printed link; null: the server at tracking.uri when it is http(s), else
    # http://127.0.0.1:5000, where `mlflow ui` listens.
    ui_url: str | None = checked(None, WEB_ADDRESS)
    # Seconds between samples of MLflow's system metrics (CPU, memory; GPU on CUDA); null: none.
    system_metrics_s: float | None = checked(2.0, POSITIVE)
