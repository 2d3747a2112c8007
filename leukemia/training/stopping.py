"""Stop signals while a task runs: SIGINT, SIGTERM and SIGUSR2 become a clean stop at a safe point."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Stopped(KeyboardInterrupt):
    """A stop asked for by a signal: Ctrl-C (SIGINT), a scheduler's or ``kill``'s SIGTERM, or SIGUSR2 (what a
    SLURM job gets before its time limit, as submitit asks for it). ``previous`` is the handler the signal had
    before the task's (a cluster job wrapper's, which may requeue the job); ``continue_with`` the command that
    resumes the run, once one is open."""

    def __init__(self, signum: int = signal.SIGINT, previous: Any = None):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.previous = previous
        self.continue_with: str | None = None


class StopRequest:
    """SIGINT, SIGTERM or SIGUSR2 while a task runs. The first is remembered, and raises ``Stopped`` (a
    KeyboardInterrupt) at once inside ``interruptible()`` (training and validating, where a long loader wait or
    batch ends now), else at the next ``check`` (called after every batch and as an epoch begins): a signal never
    breaks off a checkpoint or an MLflow write half-way. Later signals are ignored, so one sent twice, or to the
    whole process group, cannot cut short the cleanup that marks the run KILLED. Only the process that
    installed the handler acts on it: loader workers started by fork inherit it and ignore the signal (the main
    process shuts them down)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.owner = os.getpid()
        self._previous: dict[int, Any] = {}
        self._at_once = False

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self.owner or self.signum is not None:
            return
        self.signum = signum
        if self._at_once:
            self.check()

    def check(self) -> bool:
        if self.signum is not None:
            raise Stopped(self.signum, self._previous.get(self.signum))
        return False

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        self.check()
        self._at_once = True
        try:
            yield
        finally:
            self._at_once = False

    def __enter__(self) -> StopRequest:
        self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, previous in self._previous.items():
            # After a stop the process is on its way out: further signals are not to cut that short.
            signal.signal(signum, signal.SIG_IGN if self.signum is not None else previous)
