"""Names written once that more than one package writes or reads back: the classes, and the names of the metrics
a run logs (what training and evaluation log, task=plot and the sweep read, the description shows)."""

CLASS_NAMES = ("normal", "all")  # label 0 = normal (C-NMC "hem"), label 1 = ALL blast

# A split's metrics start with its name: train_loss, val_accuracy, test_roc_auc.
TRAIN, VAL, TEST = "train", "val", "test"
# What a split is scored by: classification_metrics at the threshold (accuracy_<class> is a class's recall),
# the loss, the ROC AUC of P(ALL), the calibration error, and per subject where subjects are known.
ACCURACY, BALANCED_ACCURACY, F1_WEIGHTED = "accuracy", "balanced_accuracy", "f1_weighted"
LOSS, ROC_AUC = "loss", "roc_auc"
CLASS_ACCURACIES = tuple(f"{ACCURACY}_{name}" for name in CLASS_NAMES)
ECE, ECE_CALIBRATED = "ece", "ece_calibrated"
# The logistic recalibration of P(ALL) (0 and 1 when calibrated).
CALIBRATION_INTERCEPT, CALIBRATION_SLOPE = "calibration_intercept", "calibration_slope"
SUBJECT, SUBJECTS = "subject", "subjects"  # subject_<score>: over subjects; <split>_subjects: their number
SUBJECT_ACCURACY, SUBJECT_BALANCED_ACCURACY = "subject_accuracy", "subject_balanced_accuracy"
SUBJECT_ROC_AUC = "subject_roc_auc"
# Per cell (or subject) with ALL the positive class: the recalls of ALL and normal, the predictive values.
SENSITIVITY, SPECIFICITY, PPV, NPV = "sensitivity", "specificity", "ppv", "npv"
RATES = (SENSITIVITY, SPECIFICITY, PPV, NPV)
INTERVAL_SCORES = (ACCURACY, BALANCED_ACCURACY, F1_WEIGHTED, ROC_AUC, *RATES)  # test scores with intervals
CHALLENGE = F1_WEIGHTED  # the C-NMC 2019 challenge's metric
# The decision fixed on validation, and the best epoch.
TEMPERATURE, THRESHOLD, BEST_EPOCH = "temperature", "threshold", "best_epoch"
SUBJECT_THRESHOLD = "subject_threshold"  # a metric, and a tag saying how it was chosen
TEMPERATURE_AT_BOUND = "temperature_at_bound"  # a tag: "false", or "true: …" when the fit hit its range's end


def of(split: str, score: str) -> str:
    """``val_accuracy``: a split's score."""
    return f"{split}_{score}"


def best(metric: str) -> str:
    """``best_val_accuracy``: a validation metric at the best epoch."""
    return f"best_{metric}"


def final(metric: str) -> str:
    """``final_val_accuracy``: a validation metric at the last epoch (what cross-validation reports)."""
    return f"final_{metric}"


def interval(metric: str) -> tuple[str, str]:
    """``test_accuracy_ci_low``, ``test_accuracy_ci_high``: the bounds of a metric's 95% interval."""
    return f"{metric}_ci_low", f"{metric}_ci_high"
