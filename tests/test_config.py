import shutil
from pathlib import Path

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from leukemia.__main__ import config_dir, local_search_path
from leukemia.config import group_schemas, typed
from leukemia.data.schema import Cache
from leukemia.errors import UserError

from conftest import CONF, REPO, compose_config

GROUPS = ["model", "optim", "scheduler", "augmentation", "data", "experiment", "hparams_search"]
PRESETS = ("experiment", "hparams_search")  # groups that set keys of other groups, with no node of their own


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_resolves(group, option):
    cfg = compose_config(f"{group}={option}")
    if group not in PRESETS:
        assert cfg[group].name == option
    # Every interpolation resolves (e.g. data.root from paths.*).
    assert cfg.data.root and "${" not in str(cfg.data.root)
    assert isinstance(cfg.optim.lr, float) and cfg.trainer.epochs > 0


def test_group_options_are_the_documented_ones():
    assert options("model") == ["resnet152", "resnet18", "resnet50"]
    assert options("optim") == ["adam", "adamw", "sgd"]
    assert options("scheduler") == ["cosine", "none", "step"]
    assert options("augmentation") == ["lab", "none"]
    assert options("data") == ["cnmc", "csv", "demo", "lab"]
    assert options("experiment") == ["allidb2_cv", "lab3_base", "lab3_resnet152", "lab3_resnet18", "lab3_resnet50"]


def test_defaults_run_the_demo_with_the_measured_recipe():
    cfg = compose_config()
    assert (cfg.model.name, cfg.data.name, cfg.augmentation.name, cfg.task) == (
        "resnet18",
        "demo",
        "lab",
        "train",
    )
    assert cfg.tracking.uri == "sqlite:///mlflow.db" and cfg.tracking.experiment == "leukemia"
    assert cfg.trainer.device == "auto"
    optim = cfg.optim
    assert (optim.name, optim.lr, optim.momentum, optim.nesterov, optim.weight_decay) == ("sgd", 0.05, 0.9, True, 5e-4)
    assert (cfg.scheduler.name, cfg.scheduler.warmup_epochs, cfg.scheduler.eta_min) == ("cosine", 3, 0.0)
    assert cfg.trainer.label_smoothing == 0.1


@pytest.mark.parametrize("depth", [18, 50, 152])
def test_experiment_presets_hold_the_seed_recipe(depth):
    cfg = compose_config(f"experiment=lab3_resnet{depth}")
    assert cfg.model.depth == depth and cfg.data.name == "lab"
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.nesterov) == (
        "sgd",
        1e-3,
        0.9,
        1e-5,
        False,
    )
    assert (cfg.scheduler.name, cfg.trainer.label_smoothing) == ("none", 0.0)
    assert (cfg.data.batch_size, cfg.trainer.epochs, cfg.data.crop_size) == (32, 40 if depth == 152 else 120, 350)
    assert cfg.data.test_csv == f"resnet_{depth}_test.csv"


def schema_defaults(schema: type) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(schema))


@pytest.mark.parametrize("group", ["model", "optim", "scheduler", "augmentation", "data"])
def test_option_files_hold_only_what_differs_from_their_schema(group):
    """Each default is written once, in the schema: an option file that repeats one fails here."""
    schemas = group_schemas(group)
    for path in (CONF / group).glob("*.yaml"):
        written = yaml.safe_load(path.read_text())
        schema = next(schemas[name] for name in schemas if written["defaults"] == [f"/schema_{name}@_here_"])
        defaults = schema_defaults(schema)
        for key, value in written.items():
            assert key == "defaults" or value != defaults[key], f"{path.name}: {key}: {value} is the schema's default"


def choices(defaults: list) -> list[str]:
    """An experiment's group choices as overrides: ``override /data: csv`` -> ``data=csv``."""
    entries = [entry for entry in defaults if isinstance(entry, dict)]
    return [f"{key.removeprefix('override /')}={value}" for entry in entries for key, value in entry.items()]


def test_the_primary_config_and_the_presets_repeat_no_default():
    primary = yaml.safe_load((CONF / "config.yaml").read_text())
    assert set(primary) == {"defaults", "hydra"}, "config.yaml: values belong in the schemas"
    for path in (CONF / "experiment").glob("*.yaml"):
        written = yaml.safe_load(path.read_text())
        picked = choices(written["defaults"])
        # without this file's own values: its groups chosen (a lab3 model preset: on top of lab3_base)
        without = compose_config(*(["experiment=lab3_base"] if "lab3_base" in written["defaults"] else []), *picked)
        for section, values in written.items():
            for key, value in values.items() if section != "defaults" else ():
                assert without[section][key] != value, f"{path.name}: {section}.{key}: {value} changes nothing"


def test_a_stored_config_is_typed_again_with_new_defaults_and_without_retired_keys():
    stored = OmegaConf.create(OmegaConf.to_container(compose_config("data=lab"), resolve=True, enum_to_str=True))
    del stored.trainer.cuda_graphs  # a key added since the run
    stored.data.pipeline = "pil"  # keys dropped since
    stored.augmentation.random_order = True
    again = typed(stored)
    assert again.trainer.cuda_graphs is False and "pipeline" not in again.data
    assert "random_order" not in again.augmentation and again.augmentation.rotation_degrees == 20
    assert OmegaConf.get_type(again.data).__name__ == "LabDataConfig" and again.optim.lr == 0.05
    stored.data.batch_size = "many"
    with pytest.raises(UserError, match="does not fit this version's schema"):
        typed(stored)


@pytest.mark.parametrize(("stored_value", "read_as"), [(True, Cache.auto), (False, Cache.none), ("disk", Cache.disk)])
def test_a_stored_data_cache_of_an_earlier_version_reads_as_its_mode(stored_value, read_as):
    stored = OmegaConf.create(OmegaConf.to_container(compose_config(), resolve=True, enum_to_str=True))
    stored.data.cache = stored_value  # true/false before the cache had modes
    assert typed(stored).data.cache == read_as


def test_command_line_overrides_reach_the_typed_fields():
    cfg = compose_config("model=resnet50", "optim=adamw", "optim.lr=0.01", "scheduler=step", "scheduler.gamma=0.5")
    assert (cfg.model.depth, cfg.optim.name, cfg.optim.lr, cfg.scheduler.gamma) == (50, "adamw", 0.01, 0.5)


def test_lab_root_follows_paths_lab_root():
    assert compose_config("data=lab", "paths.lab_root=/data/cells").data.root == "/data/cells"


@pytest.mark.parametrize(
    "override,culprit",
    [
        ("optim.lr=abc", "optim.lr"),
        ("trainer.epochs=many", "trainer.epochs"),
        ("trainer.device=gpu", "trainer.device"),
        ("trainer.monitor=val_auc", "trainer.monitor"),
        ("data.batch_size=1.5", "data.batch_size"),
    ],
)
def test_wrong_types_fail_at_composition(override, culprit):
    with pytest.raises((ConfigCompositionException, ValidationError), match=culprit.split(".")[-1]):
        compose_config(override)


@pytest.mark.parametrize(
    "override",
    ["optim.lrr=0.1", "optim.momentum=0.5 optim=adam", "model.dropout=0.1", "augmentation.random_order=true"],
)
def test_unknown_keys_fail_at_composition(override):
    """A key the schemas do not know (or no longer know, as ``augmentation.random_order``) fails."""
    with pytest.raises(ConfigCompositionException):
        compose_config(*override.split())


def test_a_local_config_in_the_launch_folder_sets_the_lab_root_for_this_machine(tmp_path, monkeypatch):
    (tmp_path / "conf" / "local").mkdir(parents=True)
    (tmp_path / "conf" / "local" / "default.yaml").write_text(
        "# @package _global_\npaths:\n  lab_root: /data/cnmc-lab\n"
    )
    monkeypatch.chdir(tmp_path)
    assert compose_config("data=lab", *local_search_path()).data.root == "/data/cnmc-lab"
    assert compose_config("experiment=lab3_resnet50", *local_search_path()).data.root == "/data/cnmc-lab"
    assert compose_config("data=lab", "data.root=/elsewhere", *local_search_path()).data.root == "/elsewhere"
    monkeypatch.chdir(tmp_path / "conf")  # launched elsewhere: the schema's default
    assert local_search_path() == []
    assert compose_config("data=lab").data.root == "data/lab"


def test_in_a_checkout_conf_local_beside_the_groups_is_read_without_a_search_path(tmp_path, monkeypatch):
    groups = shutil.copytree(CONF, tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    (groups / "local").mkdir()
    (groups / "local" / "default.yaml").write_text("# @package _global_\npaths:\n  lab_root: /data/here\n")
    assert compose_config("data=lab", config_dir=groups).data.root == "/data/here"
    monkeypatch.chdir(REPO)  # the checkout's root: its conf/ is the groups' own, searched once
    assert Path(config_dir()) == CONF and local_search_path() == []


def test_local_config_is_git_ignored():
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "conf/local/" in ignored


@pytest.mark.parametrize("draws,refused", [(0, True), (1, True), (199, True), (200, False), (1000, False)])
def test_fewer_than_200_bootstrap_draws_are_refused_in_one_line(draws, refused):
    from leukemia.config import check_config

    cfg = compose_config(f"eval.bootstrap={draws}")
    if not refused:
        check_config(cfg)
        return
    with pytest.raises(UserError, match=f"eval.bootstrap={draws}: must be at least 200") as error:
        check_config(cfg)
    assert "\n" not in str(error.value)
