"""The tracking store: checked and prepared before a task runs, writes retried while another job holds it,
and ``Store``, which reads finished runs back (config, weights, metric histories) for evaluation, resume and
reports.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.entities import LifecycleStage
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from leukemia.config import typed
from leukemia.errors import NO_SPACE, UserError

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"  # how MLflow nests a run under another in its UI
LOCAL_UI_URL = "http://127.0.0.1:5000"  # where `mlflow ui` listens by default
SQLITE = "sqlite:///"
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


T = TypeVar("T")


@contextmanager
def quiet_downloads() -> Iterator[None]:
    """While it is held, reading artifacts back (a run's config and weights, a model) draws no progress bar per
    file, unless the environment asks for one."""
    asked = os.environ.get(PROGRESS_BAR)
    os.environ[PROGRESS_BAR] = asked or "false"
    try:
        yield
    finally:
        if asked is None:
            del os.environ[PROGRESS_BAR]


LOCKED = "database is locked"
FULL = "database or disk is full"  # sqlite's words for a full disk
LOCK_PAUSES_S = (1, 2, 4, 8, 16)  # after each of sqlite's own 20-second waits (MLflow's busy_timeout)


def retry_when_locked(action: Callable[..., T]) -> Callable[..., T]:
    """Parallel sweep jobs share one sqlite file; a write that still finds it locked after sqlite's own wait is
    tried again after a growing pause instead of failing the job's run."""

    @functools.wraps(action)
    def retried(*args: Any, **kwargs: Any) -> T:
        for pause in LOCK_PAUSES_S:
            try:
                return action(*args, **kwargs)
            except OSError as error:  # an artifact copied to a full disk names the temporary file it copied
                if error.errno not in NO_SPACE:
                    raise
                where = mlflow.get_artifact_uri() if mlflow.active_run() else mlflow.get_tracking_uri()
                raise UserError(f"{where}: {error.strerror.lower()} while logging to MLflow; free space there, or "
                                f"point tracking.uri at another store") from error  # fmt: skip
            except Exception as error:  # MLflow wraps sqlite's OperationalError in some calls, not in others
                if FULL in str(error):
                    raise UserError(f"tracking.uri={mlflow.get_tracking_uri()}: {FULL}; free space for the "
                                    f"store, or point tracking.uri elsewhere") from error  # fmt: skip
                if LOCKED not in str(error):
                    raise
                log.warning("the tracking store is locked by another job; trying again in %d s", pause)
                time.sleep(pause)
        return action(*args, **kwargs)

    return retried


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def ui_base(uri: str, ui_url: str | None) -> str:
    """Where a run's link points: ``ui_url`` if given, else the tracking server itself, else `mlflow ui`."""
    return ui_url or (uri if is_server(uri) else LOCAL_UI_URL)


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, with one line, when ``uri`` names a tracking server that does not answer (MLflow's
    client would otherwise retry for minutes, after the data was read)."""
    if not is_server(uri):
        return
    health = f"{uri.rstrip('/')}/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout_s) as answer:
            reply = answer.read(64).decode(errors="replace").strip()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(
            f"tracking.uri={uri}: no MLflow server answers there ({reason}); start one (`mlflow server --host "
            f'0.0.0.0 --port 5000`, see README "Scaling out") or fix tracking.uri'
        ) from error
    if reply != "OK":
        raise UserError(f"tracking.uri={uri}: {health} answered {reply!r}, not an MLflow server's 'OK'; "
                        f"fix tracking.uri")  # fmt: skip


def located(uri: str) -> str:
    """``uri`` with a relative sqlite file made absolute (``sqlite:///mlflow.db`` in the launch folder): MLflow
    keeps one store per address for the life of the process, so a relative one would follow the first folder."""
    database = sqlite_file(uri)
    return f"{SQLITE}{database.absolute()}" if database is not None and not database.is_absolute() else uri


def client_of(uri: str) -> MlflowClient:
    """A client of the store at ``uri``."""
    return MlflowClient(tracking_uri=located(uri))


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store, None for any other."""
    return Path(uri.removeprefix(SQLITE)) if uri.startswith(SQLITE) else None


def check_writable(database: Path, uri: str) -> None:
    """The sqlite file can be created or written: else one line now, not MLflow's two minutes of retries."""
    if database.is_dir():
        raise UserError(f"tracking.uri={uri}: {database} is a folder; name a file, e.g. sqlite:///mlflow.db")
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        with open(database, "ab"):
            pass
    except OSError as error:
        raise UserError(
            f"tracking.uri={uri}: cannot write {database} ({error.strerror}); launch from a folder you can write "
            f"to, or point tracking.uri at one (sqlite:////absolute/path/mlflow.db)"
        ) from error


@contextmanager
def first_use_lock(uri: str) -> Iterator[None]:
    """Held while a process first opens a sqlite store: two processes creating a fresh store's tables at once
    would collide; the second now finds them made."""
    database = sqlite_file(uri)
    if database is None:
        yield
        return
    check_writable(database, uri)
    with open(database.with_name(f"{database.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@retry_when_locked
def ensure_experiment(uri: str, experiment: str) -> str:
    """Create ``experiment`` at ``uri`` unless it exists (creating an empty sqlite store's tables under a lock
    first), before parallel jobs would race to do it; returns its id. A deleted experiment is refused."""
    with first_use_lock(uri):
        client = client_of(uri)
        found = client.get_experiment_by_name(experiment)
    if found is not None and found.lifecycle_stage == LifecycleStage.DELETED:
        raise UserError(
            f"tracking.experiment={experiment}: deleted in {uri}; restore it (`mlflow experiments restore "
            f"--experiment-id {found.experiment_id}`) or name another tracking.experiment"
        )
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(experiment)
    except MlflowException:  # another process created it meanwhile
        return client.get_experiment_by_name(experiment).experiment_id


def prepare_store(uri: str, experiment: str) -> None:
    """Before a task reads any data: the server answers, or the sqlite file can be written and its tables
    exist; the experiment exists and is not deleted."""
    check_reachable(uri)
    ensure_experiment(uri, experiment)


@dataclass(frozen=True)
class RunRecord:
    """A logged run as read back: what evaluation and reports need of it."""

    id: str
    name: str
    experiment_id: str
    status: str
    start_time: int
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]


def _record(run: Any) -> RunRecord:
    return RunRecord(
        run.info.run_id,
        run.info.run_name,
        run.info.experiment_id,
        run.info.status,
        run.info.start_time or 0,
        dict(run.data.params),
        dict(run.data.tags),
        dict(run.data.metrics),
    )


class Store:
    """Reads runs back from the tracking store at ``uri``; every miss is a one-line UserError naming it."""

    def __init__(self, uri: str):
        self.uri = uri
        self.client = client_of(uri)

    def run(self, run_id: str, key: str = "run_id") -> RunRecord:
        """The run ``run_id``, given on the command line as ``key``."""
        try:
            return _record(self.client.get_run(run_id))
        except MlflowException as error:
            raise UserError(
                f"{key}={run_id}: no such run in {self.uri} (tracking.uri); copy the id from the run's link or "
                f"from `mlflow ui`, and launch from the folder that holds mlflow.db"
            ) from error

    def runs(self, experiment: str) -> list[RunRecord]:
        """Every run of ``experiment``, newest first (none if the experiment does not exist)."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return []
        runs = self.client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"])
        return [_record(run) for run in runs]

    @retry_when_locked
    def tag(self, run_id: str, key: str, value: str) -> None:
        self.client.set_tag(run_id, key, value)

    def history(self, run_id: str, key: str) -> list[float]:
        """A metric's values by step (epoch)."""
        points = sorted(self.client.get_metric_history(run_id, key), key=lambda point: point.step)
        return [point.value for point in points]

    def stored_config(self, run: RunRecord, why: str) -> DictConfig:
        """The run's resolved config as it logged it, typed again by the current schemas (keys added since it
        ran get their defaults): what evaluation and resume start from."""
        with tempfile.TemporaryDirectory() as scratch:
            return typed(OmegaConf.load(self.download(run, "config/config.yaml", Path(scratch), why)))

    def download(self, run: RunRecord, artifact: str, folder: Path, why: str) -> Path:
        """The artifact as a local file under ``folder``; ``why`` ends the error when the run lacks it."""
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with quiet_downloads():
                return Path(self.client.download_artifacts(run.id, artifact, str(folder)))
        except (MlflowException, OSError) as error:
            raise UserError(f"run {run.id} ({run.name}, {run.status}) has no {artifact}; {why}") from error
