"""Every setting a user can get wrong ends in one line naming the key and the fix, before anything is read or
any run opened: a table gives each field of every schema an invalid value."""

import subprocess
from dataclasses import fields
from pathlib import Path

import pytest
from hydra.errors import HydraException

from leukemia.__main__ import composition_error
from leukemia.config import GROUPS, Config, check_config, check_typed_text, group_schemas
from leukemia.errors import UserError

from conftest import compose_config, run_clis, runs_of

# field -> (the option that has it, an invalid override). Values a type rules out fail while Hydra composes;
# the others fail the field's rule in check_config.
INVALID = {
    "model.name": ("", "model.name=''"),
    "model.depth": ("", "model.depth=34"),
    "model.num_classes": ("", "model.num_classes=1"),
    "model.weights": ("", "model.weights=''"),
    "optim.name": ("", "optim.name=rmsprop"),
    "optim.lr": ("", "optim.lr=0"),
    "optim.weight_decay": ("", "optim.weight_decay=-0.1"),
    "optim.momentum": ("", "optim.momentum=1.5"),
    "optim.nesterov": ("", "optim.nesterov=maybe"),
    "optim.beta1": ("optim=adam", "optim.beta1=1.0"),
    "optim.beta2": ("optim=adamw", "optim.beta2=-0.5"),
    "scheduler.name": ("", "scheduler.name=linear"),
    "scheduler.step_size": ("scheduler=step", "scheduler.step_size=0"),
    "scheduler.gamma": ("scheduler=step", "scheduler.gamma=0"),
    "scheduler.eta_min": ("", "scheduler.eta_min=-1"),
    "scheduler.warmup_epochs": ("", "scheduler.warmup_epochs=-2"),
    "augmentation.name": ("", "augmentation.name=''"),
    "augmentation.rotation_degrees": ("", "augmentation.rotation_degrees=200"),
    "augmentation.hflip_p": ("", "augmentation.hflip_p=1.5"),
    "augmentation.vflip_p": ("", "augmentation.vflip_p=-0.1"),
    "augmentation.scale_jitter": ("", "augmentation.scale_jitter=1.0"),
    "augmentation.brightness": ("", "augmentation.brightness=2"),
    "augmentation.contrast": ("", "augmentation.contrast=-1"),
    "augmentation.saturation": ("", "augmentation.saturation=1.5"),
    "data.name": ("", "data.name=folder"),
    "data.root": ("data=lab", "data.root=''"),
    "data.crop_size": ("", "data.crop_size=0"),
    "data.image_size": ("", "data.image_size=-64"),
    "data.batch_size": ("", "data.batch_size=0"),
    "data.num_workers": ("", "data.num_workers=-1"),
    "data.mean": ("", "data.mean=[0.5,0.5]"),
    "data.std": ("", "data.std=[0.2,0,0.2]"),
    "data.balance": ("", "data.balance=oversample"),
    "data.on_bad_image": ("", "data.on_bad_image=ignore"),
    "data.cache": ("", "data.cache=true"),
    "data.limit": ("", "data.limit=0"),
    "data.folds": ("", "data.folds=1"),
    "data.fold": ("", "data.fold=-1"),
    "data.fold_seed": ("", "data.fold_seed=-1"),
    "data.train_csv": ("data=lab", "data.train_csv=''"),
    "data.valid_csv": ("data=lab", "data.valid_csv=' '"),
    "data.test_csv": ("data=lab", "data.test_csv=''"),
    "data.test_labels_csv": ("data=lab", "data.test_labels_csv=''"),
    "data.seed": ("", "data.seed=-3"),
    "data.subjects_all": ("", "data.subjects_all=2"),
    "data.subjects_normal": ("", "data.subjects_normal=0"),
    "data.images_per_subject": ("", "data.images_per_subject=0"),
    "data.source_size": ("", "data.source_size=8"),
    "data.manifest": ("data=csv", "data.manifest=''"),
    "data.split": ("data=cnmc", "data.split=random"),
    "data.val_fold": ("data=cnmc", "data.val_fold=3"),
    "data.val_fraction": ("data=cnmc", "data.val_fraction=1.0"),
    "data.split_seed": ("data=cnmc", "data.split_seed=-1"),
    "data.test_set": ("data=cnmc", "data.test_set=all"),
    "trainer.epochs": ("", "trainer.epochs=0"),
    "trainer.device": ("", "trainer.device=gpu"),
    "trainer.monitor": ("", "trainer.monitor=val_auc"),
    "trainer.progress": ("", "trainer.progress=loud"),
    "trainer.amp": ("", "trainer.amp=fp16"),
    "trainer.channels_last": ("", "trainer.channels_last=nhwc"),
    "trainer.compile": ("", "trainer.compile=max"),
    "trainer.cuda_graphs": ("", "trainer.cuda_graphs=always"),
    "trainer.label_smoothing": ("", "trainer.label_smoothing=1.0"),
    "trainer.deterministic": ("", "trainer.deterministic=mostly"),
    "eval.tta": ("", "eval.tta=rotations"),
    "eval.batch_factor": ("", "eval.batch_factor=0"),
    "eval.threshold": ("", "eval.threshold=1.5"),
    "eval.bootstrap": ("", "eval.bootstrap=-1"),
    "plot.runs": ("", "plot.runs=['']"),
    "tracking.uri": ("", "tracking.uri=mlruns"),
    "tracking.experiment": ("", "tracking.experiment=''"),
    "tracking.ui_url": ("", "tracking.ui_url=localhost:5000"),
    "paths.lab_root": ("", "paths.lab_root=''"),
    "paths.cnmc_root": ("", "paths.cnmc_root=''"),
    "paths.csv_root": ("", "paths.csv_root=''"),
    "paths.cache_dir": ("", "paths.cache_dir=''"),
    "task": ("", "task=serve"),
    "predict.model": ("", "predict.model=''"),
    "predict.input": ("", "predict.input=' '"),
    "predict.output": ("", "predict.output=''"),
    "predict.explain": ("", "predict.explain=maybe"),
    "predict.threshold": ("", "predict.threshold=1"),
    "registry.name": ("", "registry.name=''"),
    "tracking.system_metrics_s": ("", "tracking.system_metrics_s=0"),
    "seed": ("", "seed=-1"),
    "run_name": ("", f"run_name={'x' * 201}"),
    "resume": ("", "resume=''"),
    "run_id": ("", "run_id=''"),
    "weights": ("", "weights=''"),
}


def schema_fields() -> set[str]:
    """Every field of every schema, as the dotted keys a user types."""
    keys = {f.name for f in fields(Config) if f.name not in GROUPS and not hasattr(f.type, "__dataclass_fields__")}
    sections = {f.name: [f.type] for f in fields(Config) if hasattr(f.type, "__dataclass_fields__")}
    sections |= {group: list(group_schemas(group).values()) for group in GROUPS}
    for section, schemas in sections.items():
        keys |= {f"{section}.{f.name}" for schema in schemas for f in fields(schema)}
    return keys


def one_line_error(*overrides: str) -> str:
    """The one-line error the overrides give, by composition or by the schemas' rules."""
    try:
        cfg = compose_config(*overrides)
    except HydraException as error:
        return composition_error(error)
    with pytest.raises(UserError) as caught:
        check_config(cfg)
    return str(caught.value)


def test_the_table_gives_every_schema_field_an_invalid_value():
    assert set(INVALID) == schema_fields()


@pytest.mark.parametrize("key", sorted(INVALID))
def test_every_field_refuses_an_invalid_value_in_one_line_naming_it(key):
    option, override = INVALID[key]
    message = one_line_error(*filter(None, [option, override]))
    assert "\n" not in message
    assert message.startswith(key) or message.startswith(override.split("=")[0] + "="), message
    if option:  # the option alone is valid
        check_config(compose_config(option))


@pytest.mark.parametrize(
    "override,message",
    [
        ("+optim.learning_rate=0.1", "optim.learning_rate: no such key in optim (SGDConfig); its keys are name, lr"),
        ("+trainer.patience=3", "trainer.patience: no such key in trainer (TrainerConfig)"),
        ("+batch_size=8", "batch_size: no such key in the config (Config)"),
        ("++data.rooot=/data", "data.rooot: no such key in data (DemoDataConfig)"),
    ],
)
def test_keys_no_schema_knows_are_refused_however_they_were_added(override, message):
    assert one_line_error(override).startswith(message)


@pytest.mark.parametrize(
    "override,message",
    [
        ("optim.lrr=0.1", "optim.lrr: no such key in optim (SGDConfig); its keys are name, lr, weight_decay"),
        ("model=base_model", "model=base_model: no such option; choose one of resnet152, resnet18, resnet50"),
        ("model=schema_model", "model=schema_model: no such option"),
        ("optim.lr=fast", "optim.lr=fast: Value 'fast' of type 'str' could not be converted to Float"),
        ("trainer.device=gpu", "trainer.device=gpu: Invalid value 'gpu', expected one of [auto, cpu, cuda]"),
        ("optim.name=adam", "optim.name=adam: names the option optim=sgd; pick another with optim=<option>"),
    ],
)
def test_composition_errors_are_one_line_without_hydras_advice_to_append(override, message):
    line = one_line_error(override)
    assert line.startswith(message) and "+" not in line and "\n" not in line


@pytest.mark.parametrize("override", ["trainer.epochs=${oops}", "data.root=${nowhere.at_all}"])
def test_an_interpolation_to_no_key_is_named_in_one_line(override):
    key = override.split("=")[0]
    assert one_line_error(override) == f"{key}: Interpolation key '{override.split('{')[1].rstrip('}')}' not found"


def test_nesterov_without_momentum_is_refused():
    assert one_line_error("optim.momentum=0").startswith("optim.nesterov=true: Nesterov momentum needs")


CLI_CASES = [
    ("scheduler=step", "scheduler.step_size=0", "error: scheduler.step_size=0: must be greater than 0"),
    ("data.std=[0.2,0,0.2]", "", "error: data.std=[0.2, 0.0, 0.2]: must be 3 values above 0"),
    ("model.num_classes=1", "", "error: model.num_classes=1: must be at least 2"),
    ("+optim.learning_rate=0.1", "", "error: optim.learning_rate: no such key in optim (SGDConfig)"),
    ("model=base_model", "", "error: model=base_model: no such option; choose one of resnet152, resnet18, resnet50"),
    ("optim.lr=abc", "", "error: optim.lr=abc: Value 'abc' of type 'str' could not be converted to Float"),
    ("tracking.uri=ftp://host/db", "", "error: tracking.uri=ftp://host/db: must be sqlite:///<file>, http(s)://"),
    ("task=plot", "plot.runs=[0123abc]", "error: plot.runs=0123abc: no such run in sqlite:///mlflow.db"),
]


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Each case as a process of its own (its exit status is what is tested), in a folder of its own, all at
    once."""
    folders = [tmp_path_factory.mktemp("cli") for _ in CLI_CASES]
    results = run_clis([tuple(filter(None, [first, second])) for first, second, _ in CLI_CASES], folders, timeout=300)
    return {case[0]: (result, folder) for case, result, folder in zip(CLI_CASES, results, folders, strict=True)}


@pytest.mark.slow
@pytest.mark.parametrize("first,second,message", CLI_CASES, ids=[case[0] for case in CLI_CASES])
def test_the_cli_exits_1_with_the_line_and_opens_no_run(cli_results, first, second, message):
    result, tmp_path = cli_results[first]
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-2000:]
    assert runs_of(tmp_path)[1] == []


@pytest.mark.parametrize(
    ("override", "held"),
    [("registry.name=1e3", "1000.0"), ("registry.name=true", "True"), ("predict.input=1_000", "1000"),
     ("run_name=0.50", "0.5")],
)  # fmt: skip
def test_a_text_setting_hydra_would_read_as_a_number_is_refused_with_the_quoting_that_keeps_it(override, held):
    key, typed = override.split("=", 1)
    with pytest.raises(UserError) as caught:
        check_typed_text(compose_config(override), [override])
    assert str(caught.value).startswith(f"{override}: Hydra reads it as ") and f"would hold '{held}'" in str(
        caught.value
    )  # fmt: skip
    assert str(caught.value).endswith(f"quote it to keep the text: {key}='{typed}'")


@pytest.mark.parametrize("override", ["registry.name=007", "registry.name='1e3'", "optim.lr=1e-3", "seed=7",
                                      "registry.name=null", "predict.input=a b"])  # fmt: skip
def test_text_read_as_typed_and_numbers_where_numbers_are_meant_pass(override):
    check_typed_text(compose_config(override), [override])
