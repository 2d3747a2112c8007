"""The champion rule on a real sqlite registry: a version takes @champion only if it may hold it and beats the
holder on the monitored metric; names with quotes and unicode never reach MLflow's query syntax; a name MLflow
would refuse is refused when the config is checked."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from leukemia.config import check_config
from leukemia.errors import UserError
from leukemia.tracking.champion import DECISION_TAG, offer, unfit
from leukemia.tracking.registry import CHAMPION, versions_of
from leukemia.training.schema import Monitor

from conftest import compose_config

FIT = {"best_val_accuracy_normal": 0.8, "best_val_accuracy_all": 0.9}


class Registry:
    """A fresh sqlite store whose runs each register one version of a model."""

    def __init__(self, folder: Path):
        self.uri = f"sqlite:///{folder / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment = self.client.create_experiment("champions", artifact_location=str(folder / "mlruns"))

    def version(self, name: str, **metrics: float) -> str:
        """A run with ``metrics`` registering a new version of ``name``; returns the run's id."""
        run_id = self.client.create_run(self.experiment).info.run_id
        for key, value in metrics.items():
            self.client.log_metric(run_id, key, value)
        if name not in {model.name for model in self.client.search_registered_models()}:
            self.client.create_registered_model(name)
        self.client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id)
        return run_id

    def champion(self, name: str) -> str | None:
        version = self.client.get_registered_model(name).aliases.get(CHAMPION)
        return None if version is None else str(version)


@pytest.fixture
def registry(tmp_path) -> Registry:
    return Registry(tmp_path)


NAMES = ["cells", "o'brien", 'say "hi"', "both'\"", "Zoë's cells", "7", "007", "a b", "100%_x"]


@pytest.mark.parametrize("name", NAMES)
def test_a_better_version_takes_the_alias_and_a_worse_one_never_does(registry, name):
    first = registry.version(name, best_val_loss=0.648, **FIT)
    assert offer(registry.uri, name, first, Monitor.val_loss).champion is not None
    assert registry.champion(name) == "1"
    worse = registry.version(name, best_val_loss=0.65, **FIT)
    decision = offer(registry.uri, name, worse, Monitor.val_loss)
    assert decision.champion is None and registry.champion(name) == "1"
    assert decision.why == ("version 2 (best_val_loss 0.6500) does not take @champion: it does not beat version 1, "
                            "the champion (best_val_loss 0.6480)")  # fmt: skip
    assert registry.client.get_model_version(name, "2").tags[DECISION_TAG] == decision.why
    tie = registry.version(name, best_val_loss=0.648, **FIT)
    assert offer(registry.uri, name, tie, Monitor.val_loss).champion is None and registry.champion(name) == "1"
    better = registry.version(name, best_val_loss=0.3, **FIT)
    decision = offer(registry.uri, name, better, Monitor.val_loss)
    assert str(decision.champion) == f"models:/{name}@champion (version 4, run {better})"
    assert decision.why == (f"version 4 (best_val_loss 0.3000) takes @champion (it beats version 1, the champion "
                            f"(best_val_loss 0.6480)): {decision.champion}")  # fmt: skip
    assert registry.champion(name) == "4"
    found = versions_of(registry.uri, [first, better])
    assert sorted((v.version, v.champion) for v in found) == [("1", False), ("4", True)]


@pytest.mark.parametrize(
    ("monitor", "metrics", "reason"),
    [
        (Monitor.val_loss, {"best_val_loss": 9.3e11} | FIT, "is no lower than ln 2"),
        (Monitor.val_loss, {"best_val_loss": math.nan} | FIT, "best_val_loss is nan, not a finite number"),
        (Monitor.val_loss, FIT, "best_val_loss is None, not a finite number"),
        (Monitor.val_loss, {"best_val_loss": math.inf} | FIT, "is no lower than ln 2"),  # stored as 1.8e308
        (Monitor.val_f1_weighted, {"best_val_f1_weighted": 1.5} | FIT, "is not a score between 0 and 1"),
        (
            Monitor.val_f1_weighted,
            {"best_val_f1_weighted": 0.33, "best_val_accuracy_normal": 0.0, "best_val_accuracy_all": 1.0},
            "best_val_accuracy_normal is 0",
        ),  # fmt: skip
        (
            Monitor.val_accuracy,
            {"best_val_accuracy": 0.6, "best_val_accuracy_normal": 1.0, "best_val_accuracy_all": 0.0},
            "best_val_accuracy_all is 0",
        ),  # fmt: skip
    ],
    ids=["diverged-loss", "nan", "missing", "infinite", "out-of-range", "all-called-ALL", "all-called-normal"],
)
def test_a_version_that_may_not_hold_the_alias_never_takes_it_even_with_none_held(registry, monitor, metrics, reason):
    run_id = registry.version("cells", **metrics)
    decision = offer(registry.uri, "cells", run_id, monitor)
    assert decision.champion is None and registry.champion("cells") is None
    assert reason in decision.why and unfit(metrics, monitor)


def test_a_holder_that_may_not_hold_the_alias_is_beaten_by_any_that_may(registry):
    diverged = registry.version("cells", best_val_f1_weighted=0.9, best_val_accuracy_normal=0.0,
                                best_val_accuracy_all=1.0)  # fmt: skip
    registry.client.set_registered_model_alias("cells", CHAMPION, "1")  # held before the rule, or set by hand
    fit = registry.version("cells", best_val_f1_weighted=0.7, **FIT)
    decision = offer(registry.uri, "cells", fit, Monitor.val_f1_weighted)
    assert decision.champion is not None and "version 1, which held it, may not: best_val_accuracy_normal" in (
        decision.why
    )  # fmt: skip
    assert registry.champion("cells") == "2" and diverged


def test_a_run_that_registered_no_version_is_named(registry):
    other = registry.version("other", best_val_loss=0.1, **FIT)
    registry.version("cells", best_val_loss=0.1, **FIT)
    with pytest.raises(UserError, match=f"registry.name=cells: run {other} registered no version of it"):
        offer(registry.uri, "cells", other, Monitor.val_loss)


@pytest.mark.parametrize("name", ["", " ", "a/b", "a:b", "cells@best", "..", "."])
def test_a_registry_name_mlflow_would_refuse_is_refused_when_the_config_is_checked(name):
    with pytest.raises(UserError, match=r"registry.name=.*: must be a name MLflow registers"):
        check_config(compose_config(f"registry.name='{name}'"))


@pytest.mark.parametrize("name", NAMES)
def test_names_with_quotes_unicode_and_digits_are_accepted(name):
    quoted = name.replace("\\", "\\\\").replace("'", "\\'")
    check_config(compose_config(f"registry.name='{quoted}'"))


def test_no_user_string_is_pasted_into_an_mlflow_filter():
    """A filter string built from values (an f-string or a format) anywhere in the package would let a name's
    quote break the query: none is."""
    package = Path(__file__).resolve().parents[1] / "leukemia"
    offending = [f"{path.name}:{number}" for path in package.rglob("*.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if ("filter_string" in line or "search_" in line) and ('f"' in line or "format(" in line)]  # fmt: skip
    assert offending == []
