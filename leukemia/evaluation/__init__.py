"""Numbers from predictions: metrics, the operating point, calibration, per-subject diagnosis, intervals that
hold their level, paired comparisons, the decision curve, Grad-CAM. Plain numpy, scipy, scikit-learn,
statsmodels and torch; knows no MLflow, no config and no data layout."""
