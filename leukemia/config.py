"""Typed schemas for every config group, registered in Hydra's ConfigStore.

The YAML files in conf/ pick one of these schemas through their defaults list (e.g. ``- /schema_sgd@_here_``),
so a wrong type (``optim.lr=abc``) or an unknown key (``optim.lrr=0.1``) fails while Hydra composes the config.
Each field's default is written here once, with the rule its values obey (``checked``); ``check_config``
applies the rules, and refuses keys no schema knows, before any data is read or any run is opened.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from leukemia.errors import UserError


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Task(str, Enum):
    train = "train"
    eval = "eval"  # evaluate a run's (or a file's) weights on the test split, write a submission
    plot = "plot"  # compare runs: curves, confusion matrices, a summary table
    predict = "predict"  # score new cells with a logged model: a CSV of probabilities


class TTA(str, Enum):
    """Test-time augmentation: ``flips`` averages the softmax over the 4 flip combinations."""

    none = "none"
    flips = "flips"


class Balance(str, Enum):
    """How training counters the class imbalance (C-NMC: about 2 ALL cells per normal cell)."""

    none = "none"
    sampler = "sampler"  # draw training images with probability inversely proportional to their class size
    loss = "loss"  # weight the cross-entropy of each class by total / (classes * class size)


class OnBadImage(str, Enum):
    """What reading a file that is not a decodable image does: stop the run, or warn and leave it out."""

    error = "error"
    skip = "skip"


class Cache(str, Enum):
    """Where a split's decoded uint8 pixels are kept between epochs."""

    auto = "auto"  # device on CUDA when the split fits beside the model, else disk
    device = "device"  # in the training device's memory: each batch is an index gather there (on a CPU: in RAM)
    disk = "disk"  # a memory-mapped file under paths.cache_dir/decoded, read per batch
    none = "none"  # no cache: every image decoded in every epoch, in data.num_workers processes


class SplitMethod(str, Enum):
    folds = "folds"  # the published folds: data.val_fold validates, the others train
    subjects = "subjects"  # a seeded, class-stratified split of whole subjects


class CnmcTestSet(str, Enum):
    prelim = "prelim"  # validation_data/C-NMC_test_prelim_phase_data, labelled by its CSV
    final = "final"  # testing_data/C-NMC_test_final_phase_data, unlabelled
    none = "none"


class Monitor(str, Enum):
    """Validation metrics the best epoch can be chosen by (all: higher is better, except val_loss)."""

    val_accuracy = "val_accuracy"
    val_balanced_accuracy = "val_balanced_accuracy"
    val_f1_weighted = "val_f1_weighted"
    val_accuracy_normal = "val_accuracy_normal"
    val_loss = "val_loss"


@dataclass(frozen=True)
class Rule:
    """What a value must satisfy, beyond its type; ``requirement`` ends the one-line error."""

    holds: Callable[[Any], bool]
    requirement: str


def checked(default: Any = MISSING, rule: Rule | None = None, factory: Callable[[], Any] | None = None) -> Any:
    """A schema field with its default and the rule its values obey (a null, where the type allows one, is not
    checked)."""
    metadata = {"rule": rule} if rule else {}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


POSITIVE = Rule(lambda v: v > 0, "must be greater than 0")
NOT_NEGATIVE = Rule(lambda v: v >= 0, "must be 0 or more")
AT_LEAST_2 = Rule(lambda v: v >= 2, "must be at least 2")
PROBABILITY = Rule(lambda v: 0 <= v <= 1, "must be between 0 and 1")
BELOW_1 = Rule(lambda v: 0 <= v < 1, "must be in [0, 1), e.g. 0.1")
FRACTION = Rule(lambda v: 0 < v < 1, "must be between 0 and 1, both excluded (e.g. 0.2)")
SEED = Rule(lambda v: 0 <= v < 2**32, "must be between 0 and 2**32 - 1")
DEGREES = Rule(lambda v: 0 <= v <= 180, "must be between 0 and 180 (degrees either way)")
TEXT = Rule(lambda v: bool(str(v).strip()), "must not be empty")
PER_CHANNEL = Rule(
    lambda v: len(v) == 3 and all(0 <= x <= 1 for x in v), "must be 3 values in [0, 1], one per channel (RGB)"
)
PER_CHANNEL_SPREAD = Rule(
    lambda v: len(v) == 3 and all(x > 0 for x in v), "must be 3 values above 0, one per channel (RGB)"
)
RUN_IDS = Rule(lambda v: all(str(x).strip() for x in v), "must list run ids, none empty")
TRACKING_URI = Rule(
    lambda v: str(v).startswith(("sqlite:///", "http://", "https://", "postgresql", "mysql", "mssql", "databricks")),
    "must be sqlite:///<file>, http(s)://<server> or a database URI (postgresql://, mysql://, mssql://)",
)
WORKERS = Rule(lambda v: v >= 0, "must be 0 (load in the main process) or more")
WEB_ADDRESS = Rule(lambda v: str(v).startswith(("http://", "https://")), "must be an http(s):// address")


def _depths() -> tuple[int, ...]:
    from leukemia.models import ARCHITECTURES  # imported when checked: composing a config needs no torch

    return tuple(ARCHITECTURES)


@dataclass
class ModelConfig:
    name: str = checked(rule=TEXT)
    depth: int = checked(
        rule=Rule(lambda v: v in _depths(), "must be a depth leukemia.models builds (one of its ARCHITECTURES)")
    )
    num_classes: int = checked(2, AT_LEAST_2)
    # Optional path to a torchvision-format state_dict (e.g. ImageNet weights) to start from.
    weights: str | None = checked(None, TEXT)


@dataclass
class OptimConfig:
    name: str = MISSING
    lr: float = checked(rule=POSITIVE)
    weight_decay: float = checked(0.0, NOT_NEGATIVE)


@dataclass
class SGDConfig(OptimConfig):
    name: str = "sgd"
    momentum: float = checked(0.9, BELOW_1)
    nesterov: bool = False  # needs momentum > 0


@dataclass
class AdamConfig(OptimConfig):
    name: str = "adam"
    beta1: float = checked(0.9, BELOW_1)
    beta2: float = checked(0.999, BELOW_1)


@dataclass
class AdamWConfig(AdamConfig):
    name: str = "adamw"
    weight_decay: float = checked(0.01, NOT_NEGATIVE)


@dataclass
class SchedulerConfig:
    name: str = "none"


@dataclass
class StepSchedulerConfig(SchedulerConfig):
    name: str = "step"
    step_size: int = checked(30, POSITIVE)
    gamma: float = checked(0.1, POSITIVE)


@dataclass
class CosineSchedulerConfig(SchedulerConfig):
    name: str = "cosine"
    # Minimum learning rate at the last epoch; the period is trainer.epochs less the warm-up.
    eta_min: float = checked(0.0, NOT_NEGATIVE)
    # Epochs of linear warm-up to optim.lr before the decay (a high peak rate from scratch needs a gentle start);
    # cut to half of trainer.epochs in shorter runs.
    warmup_epochs: int = checked(3, NOT_NEGATIVE)


@dataclass
class AugmentationConfig:
    name: str = checked(rule=TEXT)
    rotation_degrees: float = checked(0.0, DEGREES)
    hflip_p: float = checked(0.0, PROBABILITY)
    vflip_p: float = checked(0.0, PROBABILITY)
    # Apply the transforms in a random order per image (torchvision RandomOrder), as the lab recipe does.
    random_order: bool = False
    # Zoom about the centre by a factor drawn from [1 - scale_jitter, 1 + scale_jitter], with the rotation.
    scale_jitter: float = checked(0.0, BELOW_1)
    # Colour (stain) jitter after the geometric steps: brightness, contrast and saturation factors drawn from
    # [1 - x, 1 + x], applied in that order.
    brightness: float = checked(0.0, PROBABILITY)
    contrast: float = checked(0.0, PROBABILITY)
    saturation: float = checked(0.0, PROBABILITY)


@dataclass
class DataConfig:
    """Keys every layout has; a layout's own keys live in its subclass."""

    name: str = MISSING
    root: str = checked(rule=TEXT)
    # Center crop in source pixels before resizing; null: no crop (a non-square image is padded to a square).
    crop_size: int | None = checked(rule=POSITIVE)
    image_size: int = checked(rule=POSITIVE)
    batch_size: int = checked(32, POSITIVE)
    num_workers: int = checked(0, WORKERS)
    # Per-channel normalisation of the 0..1 pixel values (ImageNet statistics, what pretrained weights expect;
    # without it BatchNorm's running statistics drift so far on these mostly-black images that evaluation-mode
    # predictions collapse to one class after a few epochs).
    mean: list[float] = checked(rule=PER_CHANNEL, factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = checked(rule=PER_CHANNEL_SPREAD, factory=lambda: [0.229, 0.224, 0.225])
    balance: Balance = Balance.none
    on_bad_image: OnBadImage = OnBadImage.error
    # Each split is decoded once into a uint8 array under paths.cache_dir/decoded, reused by later runs, and then
    # read from there (disk) or copied once into the training device's memory (device); none: decode every image
    # in every epoch (in data.num_workers processes).
    cache: Cache = Cache.auto
    # At most this many images per split (a fixed class-stratified pick), for smoke runs; null = all.
    limit: int | None = checked(None, Rule(lambda v: v >= 1, "must be at least 1 image per split (or null for all)"))
    # K-fold cross-validation: data.folds=K makes fold data.fold (0 … K-1) of the training pool (train and valid
    # together) the validation split, stratified by class, whole subjects in one fold, drawn with fold_seed.
    folds: int | None = checked(None, Rule(lambda v: v >= 2, "cross-validation needs at least 2 folds (or null)"))
    fold: int = checked(0, NOT_NEGATIVE)  # and below data.folds
    fold_seed: int = checked(II("seed"), SEED)


@dataclass
class LabDataConfig(DataConfig):
    """The course layout: ``<root>/train.csv`` and ``valid.csv`` (``Path,label``), a test CSV with ``Path`` only."""

    name: str = "lab"
    root: str = checked("${paths.lab_root}", TEXT)
    crop_size: int | None = checked(350, POSITIVE)  # C-NMC cells are 450x450
    image_size: int = checked(350, POSITIVE)  # 350: no resize, as the lab recipe
    num_workers: int = checked(2, WORKERS)
    train_csv: str = checked("train.csv", TEXT)
    valid_csv: str = checked("valid.csv", TEXT)
    test_csv: str = checked("resnet_${model.depth}_test.csv", TEXT)  # the course keeps one test CSV per depth
    # Optional ``Path,label`` CSV with the test split's labels (the demo writes test_labels.csv): test metrics.
    test_labels_csv: str | None = checked(None, TEXT)


@dataclass
class DemoDataConfig(LabDataConfig):
    """The generated demo set: written once under ``root`` in the lab layout, then read like real data."""

    name: str = "demo"
    root: str = checked(
        "${paths.cache_dir}/demo-v1/s${.seed}-a${.subjects_all}-h${.subjects_normal}-n${.images_per_subject}"
        "-px${.source_size}",
        TEXT,
    )
    crop_size: int | None = checked(100, POSITIVE)  # the lab recipe's 350/450 proportion
    image_size: int = checked(64, POSITIVE)
    num_workers: int = checked(0, WORKERS)
    test_labels_csv: str | None = checked("test_labels.csv", TEXT)  # the hidden test labels: test metrics
    seed: int = checked(0, SEED)
    subjects_all: int = checked(10, Rule(lambda v: v >= 3, "must be at least 3 (one each for train, valid, test)"))
    subjects_normal: int = checked(5, Rule(lambda v: v >= 3, "must be at least 3 (one each for train, valid, test)"))
    images_per_subject: int = checked(60, POSITIVE)
    source_size: int = checked(128, Rule(lambda v: v >= 16, "must be at least 16 (pixels)"))


@dataclass
class CsvDataConfig(DataConfig):
    """A generic manifest: ``<root>/<manifest>`` with columns path,label[,subject][,split]."""

    name: str = "csv"
    root: str = checked("${paths.csv_root}", TEXT)  # the folder holding the manifest
    crop_size: int | None = checked(None, POSITIVE)  # the whole image, padded to a square if it is not one
    image_size: int = checked(96, POSITIVE)
    num_workers: int = checked(2, WORKERS)
    manifest: str = checked("labels.csv", TEXT)


@dataclass
class CnmcDataConfig(DataConfig):
    """The C-NMC 2019 tree as published (Kaggle "C-NMC_Leukemia" or TCIA)."""

    name: str = "cnmc"
    root: str = checked("${paths.cnmc_root}", TEXT)
    crop_size: int | None = checked(350, POSITIVE)  # center crop in source pixels (cells are 450x450)
    image_size: int = checked(350, POSITIVE)
    num_workers: int = checked(2, WORKERS)
    split: SplitMethod = SplitMethod.folds
    val_fold: int = checked(2, Rule(lambda v: v in (0, 1, 2), "must be 0, 1 or 2 (the published folds)"))
    # split=subjects: the share of each class's images (whole subjects) that validates, and the split's seed.
    val_fraction: float = checked(0.2, FRACTION)
    split_seed: int = checked(0, SEED)
    test_set: CnmcTestSet = CnmcTestSet.prelim


@dataclass
class TrainerConfig:
    epochs: int = checked(10, POSITIVE)
    device: Device = Device.auto
    monitor: Monitor = Monitor.val_f1_weighted
    # Show a tqdm bar per epoch (the one-line epoch summary is always printed).
    progress: bool = True
    # On CUDA: bf16 autocast, channels-last memory layout, and optionally torch.compile (ignored on the CPU).
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    # On CUDA: compile the model with CUDA graphs (torch.compile mode reduce-overhead), replaying each step's
    # kernels at once instead of launching them one by one.
    cuda_graphs: bool = False
    # Cross-entropy with label smoothing for training (validation losses stay plain, to compare across runs).
    label_smoothing: float = checked(0.1, BELOW_1)
    # Deterministic algorithms only, cuDNN autotuning off: same seed, same numbers on CUDA too, at some speed.
    # CPU runs repeat bit for bit either way.
    deterministic: bool = False


def _is_threshold(value: Any) -> bool:
    try:
        return value == "balanced" or 0 < float(value) < 1
    except ValueError:
        return False


@dataclass
class EvalConfig:
    tta: TTA = TTA.none
    # Evaluation batches are this many times data.batch_size (no gradients, so they fit).
    batch_factor: int = checked(2, POSITIVE)
    # A cell (or a subject, by its mean) is called ALL when its calibrated probability of ALL is at least this;
    # `balanced`: the value that maximises balanced accuracy on the validation split, then fixed.
    threshold: str = checked("0.5", Rule(_is_threshold, "must be a number between 0 and 1 (e.g. 0.5) or balanced"))
    # Bootstrap draws for the test scores' 95% intervals (of subjects where known, else of cells); 0: none.
    bootstrap: int = checked(1000, NOT_NEGATIVE)


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
class RegistryConfig:
    # Register each training run's model as a new version of this registered model (a sweep's best job gets the
    # alias `champion`); null: register nothing.
    name: str | None = checked(None, TEXT)


@dataclass
class TrackingConfig:
    uri: str = checked("sqlite:///mlflow.db", TRACKING_URI)
    experiment: str = checked("leukemia", TEXT)
    # Base address of each run's printed link; null: the server at tracking.uri when it is http(s), else
    # http://127.0.0.1:5000, where `mlflow ui` listens.
    ui_url: str | None = checked(None, WEB_ADDRESS)
    # Seconds between samples of MLflow's system metrics (CPU, memory; GPU on CUDA); null: none.
    system_metrics_s: float | None = checked(2.0, POSITIVE)


@dataclass
class PathsConfig:
    # Where data=lab / cnmc / csv look unless data.root is given; set them once in conf/local/default.yaml.
    lab_root: str = checked("data/lab", TEXT)
    cnmc_root: str = checked("data/C-NMC_Leukemia", TEXT)
    csv_root: str = checked("data/cells", TEXT)
    # Where the generated demo data set and the decoded splits are cached.
    cache_dir: str = checked("${oc.env:HOME,.}/.cache/leukemia", TEXT)


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


# The schemas of each config group but data, by the option name their ``name`` field carries; the YAML options
# pick theirs in their defaults list (``- /schema_sgd@_here_``). Stored at the top level, not in the groups, so
# Hydra does not offer them as options (``model=schema_model``).
GROUPS = ("model", "optim", "scheduler", "augmentation", "data")
_GROUP_SCHEMAS: dict[str, dict[str, type]] = {
    "model": {"model": ModelConfig},
    "optim": {"sgd": SGDConfig, "adam": AdamConfig, "adamw": AdamWConfig},
    "scheduler": {"none": SchedulerConfig, "step": StepSchedulerConfig, "cosine": CosineSchedulerConfig},
    "augmentation": {"augmentation": AugmentationConfig},
}


def group_schemas(group: str) -> dict[str, type]:
    """A config group's schemas by option name; the data layouts' come from their one registry."""
    if group == "data":
        from leukemia.data.layouts import LAYOUTS  # imported when asked: the registry imports this module

        return {name: layout.schema for name, layout in LAYOUTS.items()}
    return _GROUP_SCHEMAS[group]


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


# Keys earlier versions had and this one dropped: a run that logged them is read back without them.
RETIRED_KEYS = {"data": ("pipeline",)}  # one batched augmentation replaced data.pipeline=tensor|pil
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
