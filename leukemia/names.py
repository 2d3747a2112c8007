"""Names shared across the packages, written once: the classes, and the metric and artifact names a run logs
that more than one module writes or reads back."""

CLASS_NAMES = ("normal", "all")  # label 0 = normal (C-NMC "hem"), label 1 = ALL blast
