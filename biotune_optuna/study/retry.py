"""The one retry policy: exponential backoff, from tenacity.

Two shapes of waiting use it:

* :func:`retrying` — call something until it stops raising a retryable error (a worker
  connecting to a database that is starting, a study that has not been created yet);
* :class:`Backoff` — poll a condition (a free slot, a closed generation) with growing pauses,
  starting over when something happened.

Which database errors are worth waiting for is decided here too (:func:`unreachable`): only those
that heal by themselves. A wrong password, a missing database, an unparseable URL or a missing
driver fail at once.
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


#: SQLSTATEs of errors that heal by waiting: connection exceptions (class 08), the server shutting
#: down / crashed / starting up (57P01–57P03), too many connections (53300).
_HEALING_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")

#: Driver messages of the same (connection errors carry no SQLSTATE in psycopg2), lower case.
_HEALING_MESSAGES = (
    "connection refused", "could not connect", "server closed the connection", "terminating connection",
    "the database system is", "connection timed out", "timeout expired", "no route to host",
    "network is unreachable", "could not translate host name", "connection already closed",
    "connection reset", "broken pipe", "ssl syscall error", "eof detected", "could not receive data",
    "could not send data", "too many clients", "database is locked",
)


def unreachable(error: BaseException) -> bool:
    """True when ``error`` (or an error it was raised from) says the database cannot be reached
    *for now*: the server refuses or drops connections, is starting or shutting down, has no free
    connection, its host name does not resolve yet (a container not started), or an SQLite file is
    locked by another writer. These are retried; every other error — wrong password, missing
    database, missing schema, unparseable URL, missing driver, a bad statement — is not.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if getattr(error, "connection_invalidated", False):
            return True
        code = getattr(error, "pgcode", None) or getattr(error, "sqlstate", None)
        if isinstance(code, str) and code.startswith(_HEALING_SQLSTATES):
            return True
        text = str(error).lower()
        if any(m in text for m in _HEALING_MESSAGES):
            return True
        error = getattr(error, "orig", None) or error.__cause__ or error.__context__
    return False


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
