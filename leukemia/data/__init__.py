"""Data: the four layouts read into subject-aware manifests, subject-disjoint splits and K folds, decoding, the
decode cache and device-resident splits, and the feed that hands the model ready batches. Knows no MLflow and no
training."""
