"""A seam for tests of failures and races: hooks the layer calls at a few fixed points.

Not an extension point for applications. The points, their arguments and the order in which
they come follow the implementation and change with it, and a hook that blocks or raises
breaks the layer's guarantees on purpose. Tests use it to force, at a moment of their
choosing, what a deployment meets only by chance: a receive cancelled just as its message is
handed over, a claim still running when ``close()`` comes, a statement that fails or stalls.

Pass an instance as the layer's ``fault_hooks`` option, and subclass it to override the hooks
a test needs; each one here does nothing. With the option unset (the default) the layer pays
one ``is None`` test at each point and nothing else.

The points:

- ``before_statement`` and ``after_statement``: around each statement the layer runs on its
  own connections, named as in its logs (``"statements.CLAIM"``). Not the LISTEN connection's
  own commands, nor sends written in the application's transaction. Both run in the task that
  asked for the statement, so ``asyncio.current_task()`` is that task: for a claim, the task of
  its own that nothing cancels. A ``before_statement`` that blocks holds the statement back
  (no connection is taken yet); one that raises fails it, unsent, with that exception (raise
  DatabaseUnreachableError to act out an outage). ``after_statement`` runs once the statement
  succeeded, with its result, unless the caller was cancelled meanwhile; one that raises makes
  the caller meet a failure although the statement took effect, as after a connection lost
  just after the commit.
- ``handed_over``: a claimed message was given to a receive waiting for it, which has not
  resumed yet. It cannot await (the hand-over is synchronous), but cancelling the receive here
  lands exactly between the hand-over and the receive's return.
- ``receives_closed``: ``close()`` has ended every receive on one event loop, and is about to
  wait (up to ``close_timeout``) for the claims still running there.

Hooks run on the event loop doing the work: the application's, or the layer's I/O thread for
calls from other loops (``async_to_sync``). To reach another loop use its
``call_soon_threadsafe``; to tell a test thread, a ``threading.Event``.

Four timings a test would otherwise wait out are carried here too, as they are nobody's to
tune in production: ``poll_interval``, how often a reader with receives waiting looks at the
table when no NOTIFY comes (5 s), ``reader_linger``, how long a reader with nobody waiting
stays subscribed before it UNLISTENs (30 s), ``drop_summary_interval``, how long capacity
drops are counted before one summary line logs them (10 s), and ``cleanup_interval``, the
time between the layer's cleanup passes (30 s), which also sets how soon a dead process's
rows go (two passes). None keeps the layer's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class FaultHooks:
    """Hooks at the layer's fault-injection points, and timing overrides; see the module."""

    def __init__(
        self,
        *,
        poll_interval: float | None = None,
        reader_linger: float | None = None,
        drop_summary_interval: float | None = None,
        cleanup_interval: float | None = None,
    ) -> None:
        self.poll_interval = _seconds_or_none("poll_interval", poll_interval)
        self.reader_linger = _seconds_or_none("reader_linger", reader_linger)
        self.drop_summary_interval = _seconds_or_none("drop_summary_interval", drop_summary_interval)
        self.cleanup_interval = _seconds_or_none("cleanup_interval", cleanup_interval)

    async def before_statement(self, name: str, parameters: Mapping[str, Any]) -> None:
        """The layer is about to run statement ``name`` with ``parameters``."""

    async def after_statement(self, name: str, parameters: Mapping[str, Any], result: Any) -> None:
        """Statement ``name`` succeeded: ``result`` is its rows, or for one run for its effect
        alone, its command status (``"DELETE 3"``)."""

    def handed_over(self, channel: str) -> None:
        """A claimed message for ``channel`` was handed to a waiting receive, not resumed yet."""

    async def receives_closed(self, claims_running: int) -> None:
        """close() ended this loop's receives; ``claims_running`` claims have yet to end."""


def _seconds_or_none(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be positive, not {value!r}")
    return float(value)
