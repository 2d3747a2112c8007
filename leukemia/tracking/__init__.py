"""Tracking: the only package that imports mlflow. ``runs`` opens and logs a run, ``store`` prepares the store
and reads runs back, ``figures`` draws what runs log, ``cell_model`` is the model a run logs and ``registry``
registers, crowns and loads it, ``sweep`` is the Hydra callback around a sweep's jobs (it loads mlflow only when
called) and ``sweep_run`` the sweep's own run."""
