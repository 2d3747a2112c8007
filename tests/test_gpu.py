"""What runs only on a CUDA GPU: bf16 autocast with channels-last batches, the training split resident in the
GPU's memory (data.cache=device), torch.compile and CUDA graphs, each in one short real run of the command
line. Marked ``gpu`` (skipped, saying so, where CUDA is absent) and ``slow``; scripts/gpu_check.sh runs them
on a lent GPU (``python -m pytest -m gpu``)."""

import math

import pytest

from conftest import FAST, histories, run_cli, runs_of

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
SHORT_RUN = (*FAST, "trainer.device=cuda", "trainer.epochs=2")


def trained(tmp_path, tiny_lab, *overrides: str):
    """The finished run of ``python run.py`` on the tiny lab set with ``overrides``, and its metric histories."""
    tmp_path.mkdir(exist_ok=True)
    result = run_cli(*SHORT_RUN, f"paths.lab_root={tiny_lab}", *overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    client, runs = runs_of(tmp_path)
    assert [run.info.status for run in runs] == ["FINISHED"]
    return runs[0], histories(client, runs[0].info.run_id)


def test_bf16_autocast_and_channels_last_train_to_the_numbers_of_full_precision(tmp_path, tiny_lab):
    fast, curves = trained(tmp_path / "bf16", tiny_lab, "trainer.amp=true", "trainer.channels_last=true")
    plain, reference = trained(tmp_path / "fp32", tiny_lab, "trainer.amp=false", "trainer.channels_last=false")
    assert fast.data.params["trainer.amp"] == "True" and plain.data.params["trainer.amp"] == "False"
    for (_, loss), (_, exact) in zip(curves["train_loss"], reference["train_loss"], strict=True):
        assert math.isfinite(loss) and abs(loss - exact) < 0.25 * exact  # bf16 rounds; it does not diverge


def test_the_training_split_resident_on_the_gpu_is_said_so(tmp_path, tiny_lab):
    run, _ = trained(tmp_path, tiny_lab, "data.cache=device")
    assert run.data.tags["data_from"] == "device"


@pytest.mark.parametrize("mode", ["trainer.compile=true", "trainer.cuda_graphs=true"])
def test_a_compiled_model_trains_and_is_evaluated(tmp_path, tiny_lab, mode):
    run, curves = trained(tmp_path, tiny_lab, mode)
    assert len(curves["val_loss"]) == 2 and all(math.isfinite(value) for _, value in curves["val_loss"])
    assert {"best_val_f1_weighted", "temperature", "val_ece"} <= set(run.data.metrics)  # evaluated after training
