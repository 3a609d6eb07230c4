"""Keeping ``Study.optimize`` from asking for trials that would find no slot.

``Study.optimize`` asks for the next trial as soon as one ends. When the BioTune search is
finished, or the open generation has no free slot left (every slot held by a running trial),
that new trial could only wait inside the sampler and, at the very end, be pruned as a
placeholder that optuna-dashboard lists among the results. :class:`StopWhenFinished` is an
``optimize`` callback that decides *before* the next ask: stop, or wait for a slot.
"""

from __future__ import annotations

import logging
import time

import optuna

from biotune_optuna.study.retry import Backoff
from biotune_optuna.study.sampler import BioTuneSampler

_logger = logging.getLogger(__name__)


class StopWhenFinished:
    """``optimize`` callback: after each trial, stop the study when the search is finished,
    else wait until the open generation has a free slot.

    Optuna checks the stop flag before every ask (also with ``n_jobs > 1``: a thread submitted
    after the stop exits without asking), so a run that uses this callback makes no trial
    without a slot, except when two threads or processes race for the very last slot (the
    loser's trial is then marked by the sampler, user attribute
    :data:`~biotune_optuna.study.attrs.NOT_AN_EVALUATION`).

    Args:
        sampler: the study's BioTune sampler (its search state is read from storage).
        poll, max_poll: backoff bounds in seconds while no slot is free (e.g. the last trials of
            a generation still train in other threads or workers).
    """

    def __init__(self, sampler: BioTuneSampler, poll: float = 0.2, max_poll: float = 5.0) -> None:
        self.sampler, self.poll, self.max_poll = sampler, poll, max_poll

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        pause, told = Backoff(self.poll, self.max_poll, 1.5), time.monotonic()
        while not self.sampler.free_units(study):
            state = self.sampler.search_state(study)
            if state.finished:
                study.stop()
                return
            if time.monotonic() - told > 30:
                _logger.info("generation %d has no free slot until running trials finish: waiting", state.generation)
                told = time.monotonic()
            pause.sleep()
