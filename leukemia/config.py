"""The whole config: ``Config``, whose sections are the packages' schemas (each beside what it configures:
``data/schema.py`` and the layouts, ``training/schema.py``, ``tracking/schema.py``) and the tasks' own settings
(``eval``, ``plot``, ``predict``, here); the registry of each config group, stored in Hydra's ConfigStore.

The YAML files in conf/ pick a schema through their defaults list (e.g. ``- /schema_sgd@_here_``), so a
wrong type (``optim.lr=abc``) or an unknown key (``optim.lrr=0.1``) fails while Hydra composes the config. Each
field's default is written once, in its schema, with the rule its values obey (``leukemia.schema.checked``);
``check_config`` applies the rules, and refuses keys no schema knows, before any data is read or any run is
opened.
"""

import os
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from leukemia.data.layouts import LAYOUTS
from leukemia.data.schema import AUGMENTATIONS, AugmentationConfig, Cache, DataConfig, PathsConfig
from leukemia.errors import UserError
from leukemia.schema import FRACTION, POSITIVE, RUN_IDS, SEED, TEXT, Rule, checked
from leukemia.tracking.schema import RegistryConfig, TrackingConfig
from leukemia.training.schema import (
    MODELS,
    OPTIMIZERS,
    SCHEDULERS,
    ModelConfig,
    OptimConfig,
    SchedulerConfig,
    TrainerConfig,
)


class Task(str, Enum):
    train = "train"
    eval = "eval"  # evaluate a run's (or a file's) weights on the test split, write a submission
    plot = "plot"  # compare runs: curves, confusion matrices, a summary table
    predict = "predict"  # score new cells with a logged model: a CSV of probabilities


class TTA(str, Enum):
    """Test-time augmentation: ``flips`` averages the softmax over the 4 flip combinations."""

    none = "none"
    flips = "flips"


def _is_threshold(value: Any) -> bool:
    try:
        return value == "balanced" or 0 < float(value) < 1
    except ValueError:
        return False


MIN_RESAMPLES = 200  # bootstrap draws: fewer leave an interval's bounds to chance


@dataclass
class EvalConfig:
    tta: TTA = TTA.none
    # Evaluation batches are this many times data.batch_size (no gradients, so they fit).
    batch_factor: int = checked(2, POSITIVE)
    # A cell is called ALL when its calibrated probability of ALL is at least this; `balanced`: the value that
    # maximises balanced accuracy on the validation split, then fixed. (A subject's threshold, on its mean, is
    # chosen on the validation subjects.)
    threshold: str = checked("0.5", Rule(_is_threshold, "must be a number between 0 and 1 (e.g. 0.5) or balanced"))
    # Bootstrap draws for the test scores' 95% intervals (of subjects where known, else of cells).
    bootstrap: int = checked(1000, Rule(lambda v: v >= MIN_RESAMPLES, f"must be at least {MIN_RESAMPLES} (fewer "
                                        f"draws leave the interval's bounds to chance)"))  # fmt: skip


@dataclass
class PlotConfig:
    # Run ids to compare; empty means the runs of the latest sweep in tracking.experiment.
    runs: list[str] = checked(rule=RUN_IDS, factory=list)


@dataclass
class PredictConfig:
    # The model: models:/<name>@<alias>, models:/<name>/<version>, runs:/<run id>/model, or a run id.
    model: str | None = checked(None, TEXT)
    # A folder (every image file under it) or a CSV with a `path` column (and an optional `subject` column).
    input: str | None = checked(None, TEXT)
    # The CSV written (path,probability_all,label[,subject]); null: predictions.csv in the job's output folder.
    # Where subjects are known, <name>_subjects.csv beside it holds the subject-level diagnosis.
    output: str | None = checked(None, TEXT)
    # Also write a Grad-CAM overlay per image, into <name>_gradcam/ beside the CSV.
    explain: bool = False
    # The threshold labels are decided by; null: the model's own (its training run's eval.threshold).
    threshold: float | None = checked(None, FRACTION)


@dataclass
class Config:
    model: ModelConfig = MISSING
    optim: OptimConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    augmentation: AugmentationConfig = MISSING
    data: DataConfig = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    plot: PlotConfig = field(default_factory=PlotConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    task: Task = Task.train
    seed: int = checked(42, SEED)
    # A short free-text run name; empty means "<model>-<optim>-lr<lr>".
    run_name: str = checked(
        "", Rule(lambda v: len(v) <= 200 and "\n" not in v, "must be one line of at most 200 characters")
    )
    # task=train: continue this MLflow run from its last checkpoint, with its own config.
    resume: str | None = checked(None, TEXT)
    # task=eval: the MLflow run whose config and best weights to evaluate, or a local state_dict file instead.
    run_id: str | None = checked(None, TEXT)
    weights: str | None = checked(None, TEXT)


# Each config group's one registry (beside its schemas) of schemas by the option name their ``name`` field
# carries; the YAML options pick theirs in their defaults list (``- /schema_sgd@_here_``). Stored at the top
# level, not in the groups, so Hydra does not offer them as options (``model=schema_model``).
GROUPS = ("model", "optim", "scheduler", "augmentation", "data")


def group_schemas(group: str) -> dict[str, type]:
    """A config group's schemas by option name."""
    if group == "data":
        return {name: layout.schema for name, layout in LAYOUTS.items()}
    return {"model": MODELS, "optim": OPTIMIZERS, "scheduler": SCHEDULERS, "augmentation": AUGMENTATIONS}[group]


def register_configs() -> None:
    """Store the schemas under the names the YAML defaults lists refer to; ``${pid:}`` (the process id) keeps
    the output folders of runs started in the same second apart."""
    OmegaConf.register_new_resolver("pid", os.getpid, replace=True, use_cache=True)
    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    for group in GROUPS:
        for name, schema in group_schemas(group).items():
            store.store(name=f"schema_{name}", node=schema)


def schema_of(section: str, node: DictConfig) -> type:
    """The dataclass a config section follows: a group's by its option (the node's own type once composed, else
    its ``name``), any other section's by its field in ``Config``."""
    if section not in GROUPS:
        return next(f.type for f in fields(Config) if f.name == section)
    schemas = group_schemas(section)
    if len(schemas) == 1:
        return next(iter(schemas.values()))
    own = next((name for name, schema in schemas.items() if schema is OmegaConf.get_type(node)), None)
    name = node.get("name")
    if own is not None and name != own:
        raise UserError(
            f"{section}.name={name}: names the option {section}={own}; pick another with {section}=<option>"
        )
    if name not in schemas:
        raise UserError(f"{section}.name={name}: not a {section} option; choose {section}=<{'|'.join(schemas)}>")
    return schemas[name]


def _value_error(path: str, value: Any, requirement: str) -> UserError:
    shown = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
    return UserError(f"{path}={shown}: {requirement}")


def _check_section(node: DictConfig, schema: type, prefix: str) -> None:
    """Each key of ``node`` is a field of ``schema`` and obeys its rule; nested sections after the plain values
    (an interpolation such as data.fold_seed=${seed} is then blamed on the key it copies)."""
    known = {f.name: f for f in sorted(fields(schema), key=lambda f: f.name in GROUPS or is_dataclass(f.type))}
    unknown = [key for key in node if key not in known]
    if unknown:
        raise UserError(
            f"{prefix}{unknown[0]}: no such key in {prefix.rstrip('.') or 'the config'} ({schema.__name__}); "
            f"its keys are {', '.join(known)}"
        )
    for key, spec in known.items():
        path = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            raise UserError(f"{path}: has no value; set it on the command line ({path}=…) or in a config file")
        try:
            value = node[key]
        except OmegaConfBaseException as error:
            raise UserError(f"{path}: {str(error).splitlines()[0]}") from error
        if isinstance(value, DictConfig):
            _check_section(value, schema_of(key, value), f"{path}.")
            continue
        rule = spec.metadata.get("rule")
        if rule is not None and value is not None and not rule.holds(value):
            raise _value_error(path, value, rule.requirement)


def check_config(cfg: DictConfig) -> None:
    """Every value within its schema's rule and no key the schemas lack (also one added with Hydra's ``+``),
    checked before anything is read or opened; each failure is a one-line UserError naming the key."""
    _check_section(cfg, Config, "")
    if cfg.optim.get("nesterov") and cfg.optim.momentum == 0:
        raise UserError("optim.nesterov=true: Nesterov momentum needs optim.momentum above 0 (e.g. 0.9)")


def check_typed_text(cfg: DictConfig, overrides: list[str]) -> None:
    """A text setting holds what the command line typed: Hydra reads an unquoted ``1e3``, ``true`` or ``1_000``
    as a number or a boolean, which a text field would hold as ``1000.0``, ``True`` or ``1000`` (a name or a path
    rewritten). Such a value is refused, with the quoting that keeps it."""
    parser = OverridesParser.create()
    for override in overrides:
        try:
            parsed = parser.parse_override(override)
        except HydraException:  # Hydra already refused or accepted it as it composed
            continue
        key, typed_text, value = parsed.key_or_group, override.split("=", 1)[1], parsed.value()
        if not isinstance(value, bool | int | float) or parsed.is_sweep_override():
            continue
        held = OmegaConf.select(cfg, key, default=None)
        if isinstance(held, str) and held != typed_text:
            raise UserError(f"{key}={typed_text}: Hydra reads it as {value!r} and this setting would hold '{held}'; "
                            f"quote it to keep the text: {key}='{typed_text}'")  # fmt: skip


# Keys earlier versions had and this one dropped: a run that logged them is read back without them.
RETIRED_KEYS = {
    "data": ("pipeline",),  # one batched augmentation replaced data.pipeline=tensor|pil
    "augmentation": ("random_order",),  # one fixed order of rotation and flips has the random order's distribution
}
# Values earlier versions stored that this one reads as another: data.cache was true or false.
RENAMED_VALUES = {("data", "cache"): {True: Cache.auto.value, False: Cache.none.value}}


def _renamed(section: str, key: str, value: Any) -> Any:
    renamed = RENAMED_VALUES.get((section, key))
    return renamed.get(value, value) if renamed and isinstance(value, bool) else value


def typed(stored: DictConfig) -> DictConfig:
    """A run's stored, resolved config typed again by the current schemas, so that keys added since it ran get
    their defaults, retired ones are dropped, and the same rules apply (what task=eval and resume read back)."""
    merged = OmegaConf.structured(Config)
    try:
        for key in stored:
            value = stored[key]
            if isinstance(value, DictConfig):
                kept = {k: _renamed(key, k, v) for k, v in value.items_ex(resolve=False)
                        if k not in RETIRED_KEYS.get(key, ())}  # fmt: skip
                value = OmegaConf.merge(OmegaConf.structured(schema_of(key, value)), kept)
            merged[key] = value
    except OmegaConfBaseException as error:
        raise UserError(f"the stored config does not fit this version's schema ({str(error).splitlines()[0]}); "
                        f"start a new run") from error  # fmt: skip
    return merged
