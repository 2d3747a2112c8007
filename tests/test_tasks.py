import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from leukemia.errors import UserError
from leukemia.tasks.context import default_run_name
from leukemia.training.loop import BestEpoch
from leukemia.training.runtime import compile_mode, resolve_device
from leukemia.training.schema import Device, Monitor

from conftest import compose_config


def scores(**values):
    return {"val_f1_weighted": 0.5, "val_loss": 1.0} | values


def test_best_epoch_keeps_the_highest_score_and_a_cpu_copy_of_its_weights():
    model = torch.nn.Linear(2, 2)
    best = BestEpoch(Monitor.val_f1_weighted)
    assert best.update(1, scores(val_f1_weighted=0.6), np.eye(2), model)
    with torch.no_grad():
        model.weight.fill_(7.0)
    assert not best.update(2, scores(val_f1_weighted=0.6), np.eye(2), model)  # a tie keeps the earlier epoch
    assert best.epoch == 1 and not torch.equal(best.state["weight"], model.weight)
    assert best.update(3, scores(val_f1_weighted=0.7), np.eye(2), model)
    assert best.epoch == 3 and torch.equal(best.state["weight"], torch.full((2, 2), 7.0))


def test_best_epoch_by_loss_prefers_lower_and_never_takes_nan():
    model = torch.nn.Linear(2, 2)
    best = BestEpoch(Monitor.val_loss)
    assert not best.update(1, scores(val_loss=float("nan")), np.eye(2), model)
    assert best.update(2, scores(val_loss=0.9), np.eye(2), model)
    assert not best.update(3, scores(val_loss=1.2), np.eye(2), model)
    assert best.update(4, scores(val_loss=0.3), np.eye(2), model)
    assert (best.epoch, best.value) == (4, 0.3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on machines without CUDA")
def test_asking_for_cuda_without_a_gpu_is_a_user_error():
    with pytest.raises(UserError, match="trainer.device=cuda but no CUDA device"):
        resolve_device(Device.cuda)
    assert resolve_device(Device.auto) == torch.device("cpu")


@pytest.mark.parametrize(
    ("overrides", "device", "mode"),
    [((), "cuda", None), (("trainer.compile=true",), "cpu", "default"), (("trainer.cuda_graphs=true",), "cuda",
     "reduce-overhead"), (("trainer.cuda_graphs=true",), "cpu", None),
     (("trainer.compile=true", "trainer.cuda_graphs=true"), "cpu", "default")],
)  # fmt: skip
def test_cuda_graphs_compile_in_reduce_overhead_mode_on_cuda_only(overrides, device, mode):
    trainer = OmegaConf.to_object(compose_config(*overrides)).trainer
    assert compile_mode(trainer, torch.device(device)) == mode


def test_run_name_reads_model_optimizer_and_learning_rate():
    assert (
        default_run_name(compose_config("model=resnet50", "optim=adam", "optim.lr=0.0003")) == "resnet50-adam-lr0.0003"
    )
    assert default_run_name(compose_config("run_name=baseline")) == "baseline"
