"""The model registry: each training run's model as a version of ``registry.name``, a sweep's best version as
its ``champion`` (an alias; stages are deprecated), and the model a user names (``predict.model``) found, checked
and loaded, with one line for each way it can be missing."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from leukemia.errors import UserError
from leukemia.tracking.cell_model import MODEL_NAME, CellModel
from leukemia.tracking.store import Store, client_of, located, quiet_downloads, retry_when_locked

CHAMPION = "champion"
RUN_ID = re.compile(r"[0-9a-f]{32}")
REGISTERED = re.compile(r"models:/(?P<name>[^@/]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))?")
PAGE = 1000  # model versions per search page
FORMS = "models:/<name>@<alias>, models:/<name>/<version>, runs:/<run id>/model or a bare run id"


@retry_when_locked
def register(model_uri: str, name: str, tags: Mapping[str, str]) -> ModelVersion:
    """A new version of the registered model ``name`` (created if need be) for the logged model ``model_uri``."""
    return mlflow.register_model(model_uri, name, tags=dict(tags))


@dataclass(frozen=True)
class Version:
    """A registered model version, the run that trained it, and whether it holds the ``champion`` alias."""

    name: str
    version: str
    run_id: str
    champion: bool = False

    def __str__(self) -> str:
        where = f"models:/{self.name}@{CHAMPION}" if self.champion else f"models:/{self.name}/{self.version}"
        return f"{where} (version {self.version}, run {self.run_id})"


def search_versions(client: MlflowClient, keep: Callable[[ModelVersion], bool]) -> list[ModelVersion]:
    """The registry's versions that ``keep`` accepts, oldest first. No filter string: a name or id is compared
    here, never pasted into MLflow's query syntax (which a quote in a name would break)."""
    found, token = [], None
    while True:
        page = client.search_model_versions(max_results=PAGE, page_token=token)
        found += [version for version in page if keep(version)]
        token = page.token
        if not token:
            return sorted(found, key=lambda version: (version.name, int(version.version)))


def versions_of(uri: str, run_ids: list[str]) -> list[Version]:
    """The versions the runs ``run_ids`` registered (of any registered model), champions marked."""
    if not run_ids:
        return []
    client, wanted = client_of(uri), set(run_ids)
    found = search_versions(client, lambda version: version.run_id in wanted)
    # Search results carry no aliases: the registered model holds them.
    crowned = {name: str(client.get_registered_model(name).aliases.get(CHAMPION)) for name in {v.name for v in found}}
    return [Version(v.name, str(v.version), v.run_id, crowned[v.name] == str(v.version)) for v in found]


def model_uri(reference: str) -> str:
    """``predict.model`` as an MLflow model URI: a bare run id names that run's ``model``."""
    if RUN_ID.fullmatch(reference):
        return f"runs:/{reference}/{MODEL_NAME}"
    if reference.startswith(("models:/", "runs:/")):
        return reference
    raise UserError(f"predict.model={reference}: not a model reference; give {FORMS}")


def _registered(client: MlflowClient, uri: str, reference: str) -> ModelVersion | None:
    """The version ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` names, checked to exist (None for a
    logged model's own ``models:/m-<id>``, left to the loader)."""
    found = REGISTERED.fullmatch(reference)
    if found is None:
        raise UserError(f"predict.model={reference}: not a model reference; give {FORMS}")
    name, alias, version = found.group("name", "alias", "version")
    if alias is None and version is None:
        if name.startswith("m-"):  # a logged model's own id
            return None
        raise UserError(f"predict.model={reference}: names no version; add @<alias> or /<version> (e.g. "
                        f"models:/{name}@{CHAMPION})")  # fmt: skip
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        known = ", ".join(model.name for model in client.search_registered_models()) or "none"
        raise UserError(f"predict.model={reference}: no registered model '{name}' in {uri} (registered: {known}); "
                        f"register one with registry.name=<name> when training") from error  # fmt: skip
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as error:
        aliases = client.get_registered_model(name).aliases  # search results carry none
        versions = [int(v.version) for v in search_versions(client, lambda v: v.name == name)]
        listed = ", ".join(str(v) + "".join(f" @{a}" for a, of in aliases.items() if int(of) == v) for v in versions)
        what = f"alias @{alias}" if alias else f"version {version}"
        raise UserError(f"predict.model={reference}: '{name}' has no {what} (versions: {listed})") from error


@dataclass(frozen=True)
class Loaded:
    """The model ``predict.model`` named, the URI it was loaded from (an alias resolved to its version, once, so
    the model used is the one recorded) and what that is: ``model_uri``, ``model_version``, ``model_run_id``."""

    model: CellModel
    uri: str
    record: dict[str, str]


def load(uri: str, reference: str) -> Loaded:
    """The cell model ``predict.model`` names (see ``FORMS``) from the store at ``uri``."""
    resolved = model_uri(reference)
    client = client_of(uri)
    record = {"model_uri": resolved}
    if resolved.startswith("runs:/"):
        run = Store(uri).run(resolved.split("/")[1], key="predict.model")
        missing = f"run {run.id} ({run.name}, {run.status}) has no logged model '{MODEL_NAME}'"
        record["model_run_id"] = run.id
    else:
        version = _registered(client, uri, resolved)
        if version is not None:
            resolved = f"models:/{version.name}/{version.version}"
            record = {"model_uri": resolved, "model_version": str(version.version), "model_run_id": version.run_id}
        missing = f"predict.model={reference}: no model found there"
    mlflow.set_tracking_uri(located(uri))
    try:
        with quiet_downloads():
            loaded = mlflow.pyfunc.load_model(resolved)
    except (MlflowException, OSError) as error:
        raise UserError(f"{missing}; train it again (task=train logs one at its best epoch) or pick "
                        f"another model") from error  # fmt: skip
    model = loaded.unwrap_python_model()
    if not isinstance(model, CellModel):
        raise UserError(f"predict.model={reference}: a {type(model).__name__}, not a model task=train logged")
    return Loaded(model, resolved, record)
