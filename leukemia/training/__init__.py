"""Training in plain torch: the epoch loop and its best epoch, optimizers and schedules, checkpoints, the
device and its speed settings, stop signals. Knows no MLflow (the loop hands each epoch's metrics to a callback)."""
