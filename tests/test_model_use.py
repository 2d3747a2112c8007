"""Trained models leave the lab, through the real CLI, a real sqlite store and a real `mlflow models serve`: the
run page's model, datasets, description and system metrics; the model loaded in a bare Python process;
task=predict on folders and CSVs; the registry and a sweep's champion; serving; each bad input."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import FAST, client_for, free_port, run_cli, run_cli_process, run_clis, runs_of, write_lab_layout

pytestmark = pytest.mark.slow  # end-to-end: every test here runs the real CLI


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One training run registered as version 1 of "cells", on a lab set with labelled test images, evaluated on
    the mean of four flips (eval.tta=flips): its model and task=predict must score the same way."""
    folder = tmp_path_factory.mktemp("trained")
    root = write_lab_layout(folder / "lab", {"train": 48, "valid": 16, "test": 12})
    test = pd.read_csv(root / "resnet_18_test.csv")
    test.assign(label=[index % 2 for index in range(len(test))]).to_csv(root / "test_labels.csv", index=False)
    result = run_cli(*FAST, f"data.root={root}", "data.test_labels_csv=test_labels.csv", "trainer.epochs=2",
                     "registry.name=cells", "eval.tta=flips", cwd=folder)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs_of(folder, kind="train")[1]
    return folder, root, run


def predictions_of_training(run) -> pd.DataFrame:
    """The test predictions the training run's own evaluation wrote (its feed, not the logged model)."""
    table = pd.read_csv(Path(run.data.tags["output_dir"]) / "predictions.csv")
    return table.assign(path=table["ID"])


def test_the_run_page_shows_the_model_datasets_description_and_system_metrics(trained):
    folder, root, run = trained
    client = client_for(folder)
    (output,) = run.outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert model.name == "model" and model.source_run_id == run.info.run_id
    inputs = {item.dataset.name: item for item in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "valid", "test"}
    train_tags = {tag.key: tag.value for tag in inputs["train"].tags}
    assert (train_tags["images"], train_tags["normal"], train_tags["all"]) == ("48", "24", "24")
    assert json.loads(inputs["train"].dataset.source) == {"uri": str(root / "train.csv")}
    assert len({item.dataset.digest for item in inputs.values()}) == 3
    description = run.data.tags["mlflow.note.content"]
    best = int(run.data.metrics["best_epoch"])
    assert f"best epoch: {best}, by val_f1_weighted {run.data.metrics['best_val_f1_weighted']:.4f}" in description
    metrics = run.data.metrics
    low, high = metrics.get("test_accuracy_ci_low"), metrics.get("test_accuracy_ci_high")
    interval = "" if low is None else f" [{low:.4f}, {high:.4f}]"  # none where every draw is alike
    assert f"- test: accuracy {metrics['test_accuracy']:.4f}{interval}" in description
    assert f"- test intervals: {run.data.tags['test_ci']}" in description
    assert "calibrated on validation on the mean of four flips (eval.tta=flips)" in description
    assert f"temperature {metrics['temperature']:.3f}, threshold 0.500 (eval.threshold=0.5)" in description
    assert f"ECE {metrics['test_ece']:.4f} as trained, {metrics['test_ece_calibrated']:.4f} calibrated" in description
    for figure in (
        "confusion_matrix",
        "test_roc",
        "test_reliability",
        "test_reliability_all",
        "test_decision_curve",
        "gradcam",
    ):
        assert f"artifactPath/figures/{figure}.png" in description
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert "system/system_memory_usage_megabytes" in run.data.metrics
    (version,) = client.search_model_versions("name = 'cells'")
    assert (str(version.version), version.run_id) == ("1", run.info.run_id)
    assert version.tags["depth"] == "18" and version.tags["data"] == "lab"
    assert float(version.tags["val_f1_weighted"]) == pytest.approx(run.data.metrics["best_val_f1_weighted"], 1e-5)


BARE_SESSION = """
import base64, json, sys
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
images = [base64.b64encode(open(path, "rb").read()).decode() for path in sys.argv[3:]]
out = model.predict(pd.DataFrame({"image": images}))
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("hydra", "omegaconf", "leukemia"))
print(json.dumps({"probability_all": out["probability_all"].tolist(), "label": out["label"].tolist(),
                  "modules": loaded}))
"""


def test_the_model_loads_and_predicts_in_a_bare_python_process(trained, tmp_path):
    folder, root, run = trained
    paths = [str(root / "test" / f"{index}.bmp") for index in range(12)]
    script = tmp_path / "bare.py"
    script.write_text(textwrap.dedent(BARE_SESSION))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    result = subprocess.run([sys.executable, str(script), uri, f"runs:/{run.info.run_id}/model", *paths],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert not [name for name in out["modules"] if name.startswith(("hydra", "omegaconf", "leukemia.training",
                                                                     "leukemia.config", "leukemia.tasks"))]  # fmt: skip
    expected = predictions_of_training(run)
    np.testing.assert_allclose(out["probability_all"], expected["probability_all"], atol=1e-5)
    assert out["label"] == expected["label"].tolist()


def test_predict_on_a_folder_scores_every_image_under_it_as_one_run(trained, tmp_path):
    folder, root, run = trained
    cells = tmp_path / "patient"
    for index in range(12):
        name = f"{index}.bmp" if index < 8 else f"later/{index}.png"  # a subfolder, and another format
        (cells / name).parent.mkdir(parents=True, exist_ok=True)
        Image.open(root / "test" / f"{index}.bmp").save(cells / name)
    (cells / "README.txt").write_text("not an image")
    output = tmp_path / "scores" / "out.csv"
    result = run_cli("task=predict", "predict.model=models:/cells@champion", f"predict.input={cells}", cwd=folder)
    assert "models:/cells@champion: 'cells' has no alias @champion (versions: 1)" in result.stderr
    result = run_cli("task=predict", "predict.model=models:/cells/1", f"predict.input={cells}",
                     f"predict.output={output}", "trainer.progress=false", cwd=folder)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    scored = pd.read_csv(output)
    names = [f"{index}.bmp" for index in range(8)] + [f"later/{index}.png" for index in range(8, 12)]
    assert scored["path"].tolist() == sorted(names) and list(scored.columns) == ["path", "probability_all", "label"]
    expected = predictions_of_training(run).assign(path=names).set_index("path").loc[scored["path"]]
    np.testing.assert_allclose(scored["probability_all"], expected["probability_all"], atol=1e-5)
    (prediction,) = runs_of(folder, kind="predict")[1]
    assert prediction.info.status == "FINISHED"
    params = prediction.data.params
    assert (params["predict.model"], params["image_count"], params["predict.input"]) == (
        "models:/cells/1", "12", str(cells))  # fmt: skip
    assert params["model_uri"] == "models:/cells/1" and params["predict.output"] == str(output)
    client = client_for(folder)
    assert [item.path for item in client.list_artifacts(prediction.info.run_id)] == ["out.csv"]


def test_predict_on_a_csv_keeps_its_order_diagnoses_its_subjects_and_explains_each_image(trained, tmp_path):
    folder, root, run = trained
    order = [5, 0, 11, 3]
    # subjects as a hospital writes them: "7" and "007" are two patients, a blank cell is a cell of no known one
    table = pd.DataFrame({"path": [f"test/{index}.bmp" for index in order], "subject": ["7", "7", "007", ""]})
    table.to_csv(root / "new.csv", index=False)
    result = run_cli("task=predict", f"predict.model={run.info.run_id}", f"predict.input={root / 'new.csv'}",
                     f"predict.output={tmp_path / 'out.csv'}", "predict.explain=true", cwd=folder)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    scored = pd.read_csv(tmp_path / "out.csv", dtype={"subject": str}, keep_default_na=False)
    assert list(scored.columns) == ["path", "probability_all", "label", "subject", "gradcam"]
    assert scored["path"].tolist() == table["path"].tolist() and scored["subject"].tolist() == table["subject"].tolist()
    expected = predictions_of_training(run).iloc[order]
    np.testing.assert_allclose(scored["probability_all"], expected["probability_all"], atol=1e-5)
    threshold = run.data.metrics["threshold"]
    assert scored["label"].tolist() == (scored["probability_all"] >= threshold).astype(int).tolist()
    subjects = pd.read_csv(tmp_path / "out_subjects.csv", dtype={"subject": str}, keep_default_na=False)
    assert subjects["subject"].tolist() == ["007", "7"] and subjects["cells"].tolist() == [1, 2]  # no "nan", no 7.0
    means = scored[scored["subject"] != ""].groupby("subject")["probability_all"].mean()
    np.testing.assert_allclose(subjects["mean_probability_all"], means, atol=1e-9)
    assert subjects["predicted_label"].tolist() == (means >= threshold).astype(int).tolist()
    overlays = sorted((tmp_path / "out_gradcam").iterdir())
    names = [f"{row:05d}_{index}.png" for row, index in enumerate(order)]  # row in the CSV, file stem
    assert [path.name for path in overlays] == scored["gradcam"].tolist() == names
    assert all(Image.open(path).size == (32, 32) for path in overlays)  # the model's image size
    (prediction,) = [r for r in runs_of(folder, kind="predict")[1]
                     if r.data.params["predict.output"] == str(tmp_path / "out.csv")]  # fmt: skip
    assert prediction.data.params["threshold"] == str(threshold)
    assert prediction.data.params["subject_threshold"] == str(threshold)  # no validation subjects: the cell one
    listed = {item.path for item in client_for(folder).list_artifacts(prediction.info.run_id)}
    assert listed == {"out.csv", "out_subjects.csv"}
    lowered = run_cli("task=predict", f"predict.model={run.info.run_id}", f"predict.input={root / 'new.csv'}",
                      f"predict.output={tmp_path / 'low.csv'}", "predict.threshold=0.01", cwd=folder)  # fmt: skip
    assert lowered.returncode == 0, lowered.stderr[-3000:]
    assert (
        pd.read_csv(tmp_path / "low.csv")["label"].tolist() == (scored["probability_all"] >= 0.01).astype(int).tolist()
    )


def test_an_unreadable_image_is_named_or_skipped_and_listed(trained, tmp_path):
    folder, root, _ = trained
    cells = tmp_path / "cells"
    cells.mkdir()
    for index in range(3):
        Image.open(root / "test" / f"{index}.bmp").save(cells / f"{index}.bmp")
    (cells / "1.bmp").write_bytes(b"BM not really a bitmap")
    args = ("task=predict", "predict.model=models:/cells/1", f"predict.input={cells}")
    commands = [(*args, f"predict.output={tmp_path / 'a.csv'}"),
                (*args, f"predict.output={tmp_path / 'b.csv'}", "data.on_bad_image=skip")]  # fmt: skip
    failed, skipped = run_clis(commands, folder)
    assert failed.returncode == 1
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {cells / '1.bmp'}: cannot be read as an image") and "on_bad_image=skip" in last
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    written = pd.read_csv(tmp_path / "b.csv", dtype={"path": str}, keep_default_na=False)
    assert written["path"].tolist() == ["0.bmp", "1.bmp", "2.bmp"]  # the unreadable file keeps its row, no numbers
    assert written["probability_all"].tolist()[1] == "" and written["label"].tolist()[1] == ""
    assert written["skipped"].tolist()[0] == "" and "Truncated File Read" in written["skipped"].tolist()[1]
    statuses = sorted(run.info.status for run in runs_of(folder, kind="predict")[1] if "/cells" in
                      run.data.params["predict.input"])  # fmt: skip
    assert statuses == ["FAILED", "FINISHED"]  # nothing left RUNNING
    client = client_for(folder)
    (done,) = [run for run in runs_of(folder, kind="predict")[1] if run.info.status == "FINISHED"
               and run.data.params["predict.input"] == str(cells)]  # fmt: skip
    listed = Path(client.download_artifacts(done.info.run_id, "data/skipped_images.txt", str(tmp_path)))
    assert str(cells / "1.bmp") in listed.read_text()


def test_bad_model_references_and_inputs_fail_in_one_line(trained, tmp_path):
    folder, root, run = trained
    client = client_for(folder)
    bare = client.create_run(run.info.experiment_id, run_name="no-model").info.run_id
    client.set_terminated(bare)
    (tmp_path / "empty").mkdir()
    pd.DataFrame({"file": ["test/0.bmp"]}).to_csv(tmp_path / "nopath.csv", index=False)
    good = f"predict.input={root / 'test'}"
    cases = {
        "models:/nothing@champion": "predict.model=models:/nothing@champion: no registered model 'nothing'",
        "models:/cells/7": "predict.model=models:/cells/7: 'cells' has no version 7 (versions: 1)",
        "models:/cells@best": "'cells' has no alias @best (versions: 1)",
        "0" * 32: f"predict.model={'0' * 32}: no such run in sqlite:///mlflow.db",
        bare: f"run {bare} (no-model, FINISHED) has no logged model 'model'",
        "cells": "predict.model=cells: not a model reference",
    }
    listed = tmp_path / "listed.csv"
    listed.write_text(f"path,label,comment\n{root / 'test' / '0.bmp'},1,the user's own\n")
    inputs = {
        f"predict.input={tmp_path / 'empty'}": "no image files (.bmp .png .jpg .jpeg .tif .tiff) under this folder",
        f"predict.input={tmp_path / 'nopath.csv'}": "missing column(s) ['path']",
        f"predict.input={listed} predict.output={listed}": f"predict.output={listed}: would overwrite {listed}",
        f"predict.input={listed} predict.output={root / 'test' / '0.bmp'}": "one of the inputs",
    }
    commands = [("task=predict", f"predict.model={model}", good) for model in cases]
    commands += [("task=predict", "predict.model=models:/cells/1", *given.split()) for given in inputs]
    before = len(runs_of(folder, kind="predict")[1])
    for result, expected in zip(run_clis(commands, folder), [*cases.values(), *inputs.values()], strict=True):
        assert result.returncode == 1
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and expected in last, last
    assert len(runs_of(folder, kind="predict")[1]) == before  # refused before a run opened
    assert listed.read_text().endswith(",1,the user's own\n")  # the input, untouched


def post(port: int, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def serve(model: str, folder: Path, port: int) -> subprocess.Popen:
    """`mlflow models serve` on 127.0.0.1:``port``, in a session of its own (it forks workers), once it answers."""
    env = os.environ | {"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db",
                        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    command = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", model, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    log = (folder / "serve.log").open("w")
    server = subprocess.Popen(
        command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    os.killpg(server.pid, signal.SIGKILL)
    pytest.fail(f"mlflow models serve did not start: {(folder / 'serve.log').read_text()[-2000:]}")


def test_a_sweep_crowns_its_best_version_which_plot_names_predict_uses_and_a_server_serves(tmp_path):
    root = write_lab_layout(tmp_path / "lab", {"train": 48, "valid": 16, "test": 8})
    # lr 0.05 diverges on this set (a validation loss in the thousands, every cell called ALL); 0.001 learns it
    result = run_cli_process("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *FAST, f"data.root={root}",
                     "trainer.epochs=3", "optim.lr=0.05,0.001", "registry.name=swept", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    client, jobs = runs_of(tmp_path, kind="train")
    (sweep,) = runs_of(tmp_path, kind="sweep")[1]
    assert {job.data.tags["mlflow.parentRunId"] for job in jobs} == {sweep.info.run_id} and len(jobs) == 2
    best = max(jobs, key=lambda job: job.data.metrics["best_val_f1_weighted"])
    versions = {v.run_id: v for v in client.search_model_versions("name = 'swept'")}
    assert set(versions) == {job.info.run_id for job in jobs}
    champion = client.get_model_version_by_alias("swept", "champion")
    assert champion.run_id == best.info.run_id and sweep.data.tags["best_run"] == best.info.run_id
    crowned = f"models:/swept@champion (version {champion.version}, run {best.info.run_id})"
    taken = (f"champion: version {champion.version} (best_val_f1_weighted 1.0000) takes @champion (no other "
             f"version held it): {crowned}")  # fmt: skip
    assert taken in result.stdout + result.stderr
    assert sweep.data.tags["champion_decision"] == taken.removeprefix("champion: ")
    report = run_cli("task=plot", cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    assert crowned in report.stdout + report.stderr
    (reported,) = runs_of(tmp_path, kind="plot")[1]
    summary = pd.read_csv(Path(reported.data.tags["output_dir"]) / "summary.csv").set_index("run_id")
    assert summary.loc[best.info.run_id, "registered"] == f"swept/{champion.version} @champion"
    output = tmp_path / "scored.csv"
    scored = run_cli("task=predict", "predict.model=models:/swept@champion", f"predict.input={root / 'test'}",
                     f"predict.output={output}", cwd=tmp_path)  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-3000:]
    (predicting,) = runs_of(tmp_path, kind="predict")[1]
    assert predicting.data.params["model_version"] == str(champion.version)  # the version @champion resolved to
    assert predicting.data.tags["model_uri"] == f"models:/swept/{champion.version}"
    assert predicting.data.params["model_run_id"] == best.info.run_id
    expected = pd.read_csv(output)
    port = free_port()
    server = serve("models:/swept@champion", tmp_path, port)
    try:
        images = [[base64.b64encode((root / "test" / path).read_bytes()).decode()] for path in expected["path"]]
        body = {"dataframe_split": {"columns": ["image"], "data": images}}
        status, answer = post(port, json.dumps(body).encode())
        assert status == 200, answer
        served = pd.DataFrame(answer["predictions"])
        np.testing.assert_allclose(served["probability_all"], expected["probability_all"], atol=1e-5)
        assert served["label"].tolist() == expected["label"].tolist()
        # the server says which training run's model the alias resolved to
        assert f"of training run {best.info.run_id}" in (tmp_path / "serve.log").read_text()
        not_an_image = {"dataframe_split": {"columns": ["image"], "data": [images[0], ["bm90IGFuIGltYWdl"]]}}
        for bad, named in ((b"not json", "valid JSON"), (json.dumps(not_an_image).encode(), "row 1: 'image' is not")):
            status, answer = post(port, bad)
            assert status == 400 and named in answer["message"], answer
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    # A second sweep under the same name, monitoring val_loss, whose one job diverges: it registers a version,
    # which does not take @champion from the better one.
    again = run_cli_process("-m", *FAST, f"data.root={root}", "trainer.epochs=3", "optim.lr=0.05",
                            "trainer.monitor=val_loss", "registry.name=swept", cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert client.get_model_version_by_alias("swept", "champion").version == champion.version
    diverged = max(int(v.version) for v in client.search_model_versions("name = 'swept'"))
    refused = client.get_model_version("swept", str(diverged)).tags["champion_decision"]
    assert refused.startswith(f"version {diverged} (best_val_loss ") and "does not take @champion" in refused
    assert f"champion: {refused}" in again.stdout + again.stderr
