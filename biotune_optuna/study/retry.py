"""The one retry policy: exponential backoff, from tenacity.

Two shapes of waiting use it:

* :func:`retrying` — call something until it stops raising a retryable error (a worker
  connecting to a database that is starting, a study that has not been created yet);
* :class:`Backoff` — poll a condition (a free slot, a closed generation) with growing pauses,
  starting over when something happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace

import tenacity


def retrying(
    *,
    within: float,
    first: float,
    maximum: float,
    retry: Callable[[BaseException], bool],
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> tenacity.Retrying:
    """A tenacity ``Retrying`` that retries errors for which ``retry(error)`` is true.

    Args:
        within: seconds after which the last error is raised (never a sleep past that).
        first, maximum: the first pause and the cap, seconds; pauses double in between.
        retry: which errors are worth another try; any other is raised at once.
        on_retry: called with the error and the coming pause before each sleep (to log it).

    Use as ``for attempt in retrying(...): with attempt: ...`` or ``retrying(...)(fn, *args)``.
    """

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None and state.next_action is not None:
            on_retry(state.outcome.exception(), state.next_action.sleep)

    return tenacity.Retrying(
        stop=tenacity.stop_before_delay(within),
        wait=tenacity.wait_exponential(multiplier=first, max=maximum),
        retry=tenacity.retry_if_exception(retry),
        before_sleep=before_sleep,
        reraise=True,
    )


class Backoff:
    """Growing pauses for a polling loop: ``first``, ``first·factor``, … capped at ``maximum``
    seconds (tenacity's ``wait_exponential``); :meth:`reset` starts over."""

    def __init__(self, first: float, maximum: float, factor: float = 2.0) -> None:
        self._wait = tenacity.wait_exponential(multiplier=first, max=maximum, exp_base=factor)
        self._attempt = 0

    def next(self) -> float:
        """The next pause in seconds (and count it)."""
        self._attempt += 1
        return float(self._wait(SimpleNamespace(attempt_number=self._attempt)))

    def sleep(self, cap: float | None = None) -> float:
        """Sleep the next pause (at most ``cap`` seconds) and return it."""
        pause = self.next() if cap is None else min(self.next(), cap)
        time.sleep(pause)
        return pause

    def reset(self) -> None:
        """Start again from the first pause."""
        self._attempt = 0
