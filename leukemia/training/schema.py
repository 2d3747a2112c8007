"""The training package's settings: the ``model``, ``optim`` and ``scheduler`` groups (each with its registry of
options, which the YAML files of conf/ pick by name) and ``trainer``."""

from dataclasses import dataclass
from enum import Enum

from omegaconf import MISSING

from leukemia.schema import AT_LEAST_2, BELOW_1, NOT_NEGATIVE, POSITIVE, TEXT, Rule, checked


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Monitor(str, Enum):
    """Validation metrics the best epoch can be chosen by (all: higher is better, except val_loss)."""

    val_accuracy = "val_accuracy"
    val_balanced_accuracy = "val_balanced_accuracy"
    val_f1_weighted = "val_f1_weighted"
    val_accuracy_normal = "val_accuracy_normal"
    val_loss = "val_loss"

    @property
    def direction(self) -> str:
        """Which way a search must push it: what task=train returns, and what a sweep's best job has most of."""
        return "minimize" if self == Monitor.val_loss else "maximize"


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


# Each group's schemas by the option name their ``name`` field carries.
MODELS: dict[str, type] = {"model": ModelConfig}
OPTIMIZERS: dict[str, type] = {"sgd": SGDConfig, "adam": AdamConfig, "adamw": AdamWConfig}
SCHEDULERS: dict[str, type] = {"none": SchedulerConfig, "step": StepSchedulerConfig, "cosine": CosineSchedulerConfig}
