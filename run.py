"""Command-line entry from a checkout: the same as ``python -m leukemia`` (see leukemia/__main__.py).

python run.py model=resnet50 optim.lr=0.01
python run.py -m model=resnet18,resnet50,resnet152
"""

from leukemia.__main__ import cli

if __name__ == "__main__":
    cli()
