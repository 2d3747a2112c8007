"""The command line: ``python -m leukemia ARGS``, the ``leukemia`` command and ``python run.py ARGS`` are one
entry. Hydra composes the config from ``leukemia/conf`` (shipped in the package) and the task it names runs.

    python -m leukemia model=resnet50 optim.lr=0.01
    python -m leukemia -m model=resnet18,resnet50,resnet152
"""

from typing import Any

import hydra
from omegaconf import DictConfig

from leukemia.cli import run_reporting_one_line
from leukemia.config import register_configs

# At import, not in cli(): a sweep's launcher (joblib's worker processes, SLURM jobs) imports this module to find
# the task function and composes the job's config there, which needs the schemas in Hydra's ConfigStore.
register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> Any:
    # Imported here, after composition, so a config mistake is reported before torch and mlflow load.
    from leukemia.tasks import run_task

    return run_task(cfg)  # task=train: the value a sweeper (hparams_search) optimises


def cli() -> None:
    run_reporting_one_line(main)


if __name__ == "__main__":
    cli()
