"""Typed schemas for every config group, registered in Hydra's ConfigStore.

The YAML files in conf/ pick one of these schemas through their defaults list (e.g. ``- base_sgd``), so a
wrong type (``optim.lr=abc``) or an unknown key (``optim.lrr=0.1``) fails while Hydra composes the config,
before any data is read or any run is opened.
"""

from dataclasses import dataclass, field
from enum import Enum

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Task(str, Enum):
    train = "train"
    eval = "eval"  # evaluate a run's (or a file's) weights on the test split, write a submission
    plot = "plot"  # compare runs: curves, confusion matrices, a summary table


class TTA(str, Enum):
    """Test-time augmentation: ``flips`` averages the softmax over the 4 flip combinations."""

    none = "none"
    flips = "flips"


class Balance(str, Enum):
    """How training counters the class imbalance (C-NMC: about 2 ALL cells per normal cell)."""

    none = "none"
    sampler = "sampler"  # draw training images with probability inversely proportional to their class size
    loss = "loss"  # weight the cross-entropy of each class by total / (classes * class size)


class Pipeline(str, Enum):
    """How images reach the model."""

    pil = "pil"  # per image with PIL in the loader: decode, crop, resize, augment, to float (the seed's way)
    tensor = "tensor"  # uint8 batches (decoded once when data.cache), augmented and normalised per batch (default)


class OnBadImage(str, Enum):
    """What reading a file that is not a decodable image does: stop the run, or warn and leave it out."""

    error = "error"
    skip = "skip"


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


@dataclass
class ModelConfig:
    name: str = MISSING
    depth: int = MISSING
    num_classes: int = 2
    # Optional path to a torchvision-format state_dict (e.g. ImageNet weights) to start from.
    weights: str | None = None


@dataclass
class OptimConfig:
    name: str = MISSING
    lr: float = MISSING
    weight_decay: float = 0.0


@dataclass
class SGDConfig(OptimConfig):
    name: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False


@dataclass
class AdamConfig(OptimConfig):
    name: str = "adam"
    beta1: float = 0.9
    beta2: float = 0.999


@dataclass
class AdamWConfig(AdamConfig):
    name: str = "adamw"
    weight_decay: float = 0.01


@dataclass
class SchedulerConfig:
    name: str = "none"


@dataclass
class StepSchedulerConfig(SchedulerConfig):
    name: str = "step"
    step_size: int = 30
    gamma: float = 0.1


@dataclass
class CosineSchedulerConfig(SchedulerConfig):
    name: str = "cosine"
    # Minimum learning rate at the last epoch; the period is trainer.epochs less the warm-up.
    eta_min: float = 0.0
    # Epochs of linear warm-up to optim.lr before the decay (a high peak rate from scratch needs a gentle start);
    # cut to half of trainer.epochs in shorter runs.
    warmup_epochs: int = 0


@dataclass
class AugmentationConfig:
    name: str = MISSING
    rotation_degrees: float = 0.0
    hflip_p: float = 0.0
    vflip_p: float = 0.0
    # Apply the transforms in a random order per image (torchvision RandomOrder), as the lab recipe does.
    random_order: bool = False
    # Zoom about the centre by a factor drawn from [1 - scale_jitter, 1 + scale_jitter], with the rotation.
    scale_jitter: float = 0.0
    # Colour (stain) jitter after the geometric steps: brightness, contrast and saturation factors drawn from
    # [1 - x, 1 + x], applied in that order.
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0


@dataclass
class DataConfig:
    """Keys every layout has; a layout's own keys live in its subclass."""

    name: str = MISSING
    root: str = MISSING
    # Center crop in source pixels before resizing; null: no crop (a non-square image is padded to a square).
    crop_size: int | None = MISSING
    image_size: int = MISSING
    batch_size: int = 32
    num_workers: int = 0
    # Per-channel normalisation after ToTensor (ImageNet statistics, what pretrained weights expect).
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    balance: Balance = Balance.none
    on_bad_image: OnBadImage = OnBadImage.error
    pipeline: Pipeline = Pipeline.tensor
    # tensor pipeline: decode each split once into a uint8 array under paths.cache_dir/decoded, reused by later runs.
    cache: bool = True
    # At most this many images per split (a fixed class-stratified pick), for smoke runs; null = all.
    limit: int | None = None
    # K-fold cross-validation: data.folds=K makes fold data.fold (0 … K-1) of the training pool (train and valid
    # together) the validation split, stratified by class, whole subjects in one fold, drawn with fold_seed.
    folds: int | None = None
    fold: int = 0
    fold_seed: int = II("seed")


@dataclass
class LabDataConfig(DataConfig):
    train_csv: str = "train.csv"
    valid_csv: str = "valid.csv"
    test_csv: str = "resnet_18_test.csv"
    # Optional ``Path,label`` CSV with the test split's labels (the demo writes test_labels.csv): test metrics.
    test_labels_csv: str | None = None


@dataclass
class DemoDataConfig(LabDataConfig):
    """The generated demo set: written once under ``root`` in the lab layout, then read like real data."""

    seed: int = 0
    subjects_all: int = 10
    subjects_normal: int = 5
    images_per_subject: int = 60
    source_size: int = 128


@dataclass
class CsvDataConfig(DataConfig):
    """A generic manifest: ``<root>/<manifest>`` with columns path,label[,subject][,split]."""

    manifest: str = "labels.csv"


@dataclass
class CnmcDataConfig(DataConfig):
    """The C-NMC 2019 tree as published (Kaggle "C-NMC_Leukemia" or TCIA)."""

    split: SplitMethod = SplitMethod.folds
    val_fold: int = 2
    # split=subjects: the share of each class's images (whole subjects) that validates, and the split's seed.
    val_fraction: float = 0.2
    split_seed: int = 0
    test_set: CnmcTestSet = CnmcTestSet.prelim


@dataclass
class TrainerConfig:
    epochs: int = 10
    device: Device = Device.auto
    monitor: Monitor = Monitor.val_f1_weighted
    # Show a tqdm bar per epoch (the one-line epoch summary is always printed).
    progress: bool = True
    # On CUDA: bf16 autocast, channels-last memory layout, and optionally torch.compile (ignored on the CPU).
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    # Cross-entropy with label smoothing for training (validation losses stay plain, to compare across runs).
    label_smoothing: float = 0.0
    # Deterministic algorithms only, cuDNN autotuning off: same seed, same numbers on CUDA too, at some speed.
    # CPU runs repeat bit for bit either way.
    deterministic: bool = False


@dataclass
class EvalConfig:
    tta: TTA = TTA.none
    # Evaluation batches are this many times data.batch_size (no gradients, so they fit).
    batch_factor: int = 2


@dataclass
class PlotConfig:
    # Run ids to compare; empty means the runs of the latest sweep in tracking.experiment.
    runs: list[str] = field(default_factory=list)


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "leukemia"
    # Base address of each run's printed link; null: the server at tracking.uri when it is http(s), else
    # http://127.0.0.1:5000, where `mlflow ui` listens.
    ui_url: str | None = None


@dataclass
class PathsConfig:
    # Where data=lab / cnmc / csv look unless data.root is given; set them once in conf/local/default.yaml.
    lab_root: str = "data/lab"
    cnmc_root: str = "data/C-NMC_Leukemia"
    csv_root: str = "data/cells"
    # Where the generated demo data set is cached.
    cache_dir: str = MISSING


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
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    task: Task = Task.train
    seed: int = 42
    # A short free-text run name; empty means "<model>-<optim>-lr<lr>".
    run_name: str = ""
    # task=train: continue this MLflow run from its last checkpoint, with its own config.
    resume: str | None = None
    # task=eval: the MLflow run whose config and best weights to evaluate, or a local state_dict file instead.
    run_id: str | None = None
    weights: str | None = None


# The schema of each data option, by its ``data.name``: how a stored config is typed again (task=eval).
DATA_SCHEMAS: dict[str, type[DataConfig]] = {
    "lab": LabDataConfig, "demo": DemoDataConfig, "cnmc": CnmcDataConfig, "csv": CsvDataConfig,
}  # fmt: skip


def register_configs() -> None:
    """Store the schemas under the names the YAML defaults lists refer to."""
    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    store.store(group="model", name="base_model", node=ModelConfig)
    store.store(group="optim", name="base_sgd", node=SGDConfig)
    store.store(group="optim", name="base_adam", node=AdamConfig)
    store.store(group="optim", name="base_adamw", node=AdamWConfig)
    store.store(group="scheduler", name="base_none", node=SchedulerConfig)
    store.store(group="scheduler", name="base_step", node=StepSchedulerConfig)
    store.store(group="scheduler", name="base_cosine", node=CosineSchedulerConfig)
    store.store(group="augmentation", name="base_augmentation", node=AugmentationConfig)
    store.store(group="data", name="base_lab", node=LabDataConfig)
    store.store(group="data", name="base_demo", node=DemoDataConfig)
    store.store(group="data", name="base_cnmc", node=CnmcDataConfig)
    store.store(group="data", name="base_csv", node=CsvDataConfig)
