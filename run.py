"""Command-line entry: compose the config with Hydra and hand it to the task it names.

python run.py model=resnet50 optim.lr=0.01
python run.py -m model=resnet18,resnet50,resnet152
"""

from typing import Any

import hydra
from omegaconf import DictConfig

from leukemia.cli import run_reporting_one_line
from leukemia.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> Any:
    # Imported here, after composition, so a config mistake is reported before torch and mlflow load.
    from leukemia.tasks import run_task

    return run_task(cfg)  # task=train: the value a sweeper (hparams_search) optimises


if __name__ == "__main__":
    run_reporting_one_line(main)
