"""Tracking: the only package that imports mlflow. ``runs`` opens and logs a run, ``store`` prepares the store
and reads runs back, ``figures`` draws what runs log, ``sweep`` is the Hydra callback around a sweep's jobs."""

from leukemia.tracking.runs import Run, flatten, run_link, tracked_run
from leukemia.tracking.store import RunRecord, Store, prepare_store

__all__ = ["Run", "RunRecord", "Store", "flatten", "prepare_store", "run_link", "tracked_run"]
