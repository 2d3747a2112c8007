"""Numbers from predictions: metrics, the operating point, calibration, per-subject diagnosis, bootstrap
intervals, Grad-CAM. Plain numpy, scikit-learn and torch; knows no MLflow, no config and no data layout."""
