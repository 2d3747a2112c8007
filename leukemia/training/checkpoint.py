"""Checkpoints: all a training run needs to continue exactly where its last finished epoch left it.

One file per run, rewritten after every epoch: written to a temporary file and renamed into place, so a kill at
any moment leaves the previous checkpoint or the new one, never half of one. Everything in it is a tensor or a
plain Python value, so it loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leukemia.errors import UserError

FORMAT_VERSION = 1
CHECKPOINT_NAME = "last.pt"  # in checkpoints/<run id>/ of the job's output folder
LOCK_FILE = "training.lock"  # held by the process training the run


def random_states() -> dict[str, Any]:
    """Python's, NumPy's and torch's global random states (CPU and every CUDA device)."""
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": position,
            "has_gauss": has_gauss,
            "cached_gauss": cached_gauss,
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_random_states(states: dict[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = states["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["kind"], keys, numpy["position"], numpy["has_gauss"], numpy["cached_gauss"]))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def write_error(error: BaseException, path: Path) -> UserError | None:
    """A failed write as one line naming the file and the cause ("No space left on device"), when the cause is
    the file system's (torch reports it as its own RuntimeError, with the OSError as context)."""
    cause = error if isinstance(error, OSError) else error.__context__
    if not isinstance(cause, OSError) or cause.strerror is None:
        return None
    return UserError(f"{path}: {cause.strerror.lower()} while writing the checkpoint; free space there or point "
                     f"hydra.run.dir (hydra.sweep.dir) at another disk")  # fmt: skip


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, then rename); a failed write leaves the previous
    checkpoint and no partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as file:
            torch.save({"format": FORMAT_VERSION} | state, file)
        os.replace(partial, path)
    except (OSError, RuntimeError) as error:
        message = write_error(error, path)
        if message is None:
            raise
        raise message from error
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def claimed(folder: Path, run_id: str) -> Iterator[None]:
    """Hold run ``run_id``'s checkpoint folder while it trains (an exclusive lock on a file in it, which the
    system releases when the process ends, however it ends): a second process continuing the same run is
    refused instead of both writing the same checkpoint and logging the same epochs."""
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / LOCK_FILE
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise UserError(
                f"resume={run_id}: the run is still training ({holder} holds {lock_path}); stop that process first "
                f"(Ctrl-C, or kill it) or let it finish"
            ) from None
        lock.truncate(0)
        lock.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        yield


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(
            f"{path}: no checkpoint there; resume needs the output folder the run wrote it to (the run's tag "
            f"`checkpoint` names it)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a damaged file
        raise UserError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise UserError(f"{path}: not a checkpoint of this version (format {FORMAT_VERSION}) of leukemia")
    return state
