"""Benchmarks, on generated C-NMC-like cells: ``python -m leukemia.bench`` (the input pipeline and the model
step, ``pipeline``) and ``python -m leukemia.bench --study`` (the course's three-model study timed, ``study``)."""
