"""The champion rule: which registered version holds ``@champion``, the alias task=predict and serving use.

A sweep with ``registry.name`` offers its best job's version, the best of those that may hold it at all (below).
It takes the alias only if it beats the version that holds it now on the sweep's ``trainer.monitor``, compared as
``best_<monitor>`` of the two versions' runs (lower for val_loss, higher for the scores); a tie keeps the holder.
So a later sweep, or a sweep of another recipe registering under the same name, never hands the alias to a worse
model. A version may not hold it when its run's best epoch
- has no finite ``best_<monitor>`` (a diverged run's NaN or infinity),
- called every validation cell of a class the other class (``best_val_accuracy_normal`` or
  ``best_val_accuracy_all`` is 0: a split called one class), or
- with ``trainer.monitor=val_loss``, has a validation loss of at least ln 2, the loss of calling every cell
  P(ALL) = 0.5 (a diverged run's 9e11 included); with a score, a value outside [0, 1].
A holder that may not hold it (or whose run is gone) is beaten by any version that may. The decision is logged,
and kept as the tag ``champion_decision`` on the offered version and on the sweep's run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from leukemia.errors import UserError
from leukemia.names import CLASS_ACCURACIES, VAL, best, of
from leukemia.tracking.registry import CHAMPION, Version, search_versions
from leukemia.tracking.store import client_of, retry_when_locked
from leukemia.training.schema import Monitor

LOSS_BOUND = math.log(2)  # the cross-entropy of P(ALL) = 0.5 for every cell
DECISION_TAG = "champion_decision"


def unfit(metrics: dict[str, float], monitor: Monitor) -> str:
    """Why a run with these metrics may not hold ``@champion`` ("" when it may)."""
    key = best(monitor.value)
    value = metrics.get(key)
    if value is None or not math.isfinite(value):
        return f"{key} is {value}, not a finite number"
    for recall in (best(of(VAL, name)) for name in CLASS_ACCURACIES):
        if metrics.get(recall) == 0:
            return f"{recall} is 0: its best epoch called a whole class of the validation split the other class"
    if monitor == Monitor.val_loss and value >= LOSS_BOUND:
        return f"{key} {shown(value)} is no lower than ln 2 = {LOSS_BOUND:.4f}, the loss of P(ALL) = 0.5 for every cell"
    if monitor != Monitor.val_loss and not 0 <= value <= 1:
        return f"{key} {shown(value)} is not a score between 0 and 1"  # MLflow stores an infinity as the largest float
    return ""


def shown(value: float) -> str:
    """A metric in a decision's line: four decimals, or four digits where it has diverged."""
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"


@dataclass(frozen=True)
class Decision:
    """What the rule decided for a version offered: the champion afterwards (None: the alias did not move) and
    why, in one line."""

    champion: Version | None
    why: str


def _metrics(client: MlflowClient, run_id: str) -> dict[str, float]:
    try:
        return dict(client.get_run(run_id).data.metrics)
    except MlflowException:  # the holder's run was deleted
        return {}


def _challenge(client: MlflowClient, name: str, offered: Version, monitor: Monitor) -> tuple[bool, str]:
    """Whether ``offered`` takes the alias from its holder (none holds it, the holder may not hold it, or
    ``offered`` is strictly better), and the comparison in words."""
    holder_version = client.get_registered_model(name).aliases.get(CHAMPION)
    if holder_version is None or str(holder_version) == offered.version:
        return True, "no other version held it"
    holder = client.get_model_version(name, str(holder_version))
    key = best(monitor.value)
    theirs, ours = _metrics(client, holder.run_id), _metrics(client, offered.run_id)[key]
    why = unfit(theirs, monitor)
    if why:
        return True, f"version {holder_version}, which held it, may not: {why}"
    better = ours < theirs[key] if monitor.direction == "minimize" else ours > theirs[key]
    verb = "beats" if better else "does not beat"
    return better, f"it {verb} version {holder_version}, the champion ({key} {shown(theirs[key])})"


@retry_when_locked
def offer(uri: str, name: str, run_id: str, monitor: Monitor) -> Decision:
    """Offer the newest version of ``name`` that run ``run_id`` registered the alias, by the rule above."""
    client = client_of(uri)
    mine = search_versions(client, lambda version: version.name == name and version.run_id == run_id)
    if not mine:
        raise UserError(f"registry.name={name}: run {run_id} registered no version of it; nothing to crown")
    offered = Version(name, str(mine[-1].version), run_id)
    key, metrics = best(monitor.value), _metrics(client, run_id)
    what = f"version {offered.version} ({key} {shown(metrics.get(key, math.nan))})"
    why = unfit(metrics, monitor)
    takes, comparison = (False, why) if why else _challenge(client, name, offered, monitor)
    if not takes:
        decision = Decision(None, f"{what} does not take @{CHAMPION}: {comparison}")
    else:
        client.set_registered_model_alias(name, CHAMPION, offered.version)
        crowned = Version(name, offered.version, run_id, champion=True)
        decision = Decision(crowned, f"{what} takes @{CHAMPION} ({comparison}): {crowned}")
    client.set_model_version_tag(name, offered.version, DECISION_TAG, decision.why)
    return decision
