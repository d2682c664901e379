"""The shutdown state machine alone: inputs in, actions out, no process and no clock."""

from __future__ import annotations

import signal

from sidecar.supervise.shutdown import (
    DONE,
    FINAL_SYNC,
    STOPPING_APP,
    STOPPING_LITESTREAM,
    FinalSync,
    Log,
    Shutdown,
    SignalApp,
    SignalLitestream,
)

ALIVE = {"app_alive": True, "litestream_alive": True}


def dos(actions: list) -> list:
    """The process operations and the final sync, without the log events."""
    return [a for a in actions if not isinstance(a, Log)]


def test_the_phases_in_order_with_their_deadlines() -> None:
    """stop the app (deadline: its stop timeout), final sync (budget + 2), stop Litestream
    (its timeout + 5), done with the app's code."""
    s = Shutdown(app_stop_timeout=10, litestream_stop_timeout=30)
    assert dos(s.begin(0, signal.SIGTERM, **ALIVE)) == [SignalApp(signal.SIGTERM)]
    assert (s.phase, s.deadline) == (STOPPING_APP, 10)
    assert dos(s.app_exited(1, 143, litestream_alive=True)) == [FinalSync(15)]
    assert (s.phase, s.deadline) == (FINAL_SYNC, 1 + 15 + 2)
    assert dos(s.sync_done(2, litestream_alive=True)) == [SignalLitestream(signal.SIGTERM)]
    assert (s.phase, s.deadline) == (STOPPING_LITESTREAM, 2 + 30 + 5)
    s.litestream_exited(0)
    assert (s.phase, s.exit_code) == (DONE, 143)


def test_deadlines_and_second_signals() -> None:
    """Before a deadline nothing happens; at it the app is SIGKILLed (and again every 5 s);
    a second signal SIGKILLs at once; with no app the exit code is 128+signal."""
    s = Shutdown(app_stop_timeout=10, litestream_stop_timeout=10)
    s.begin(0, signal.SIGTERM, **ALIVE)
    assert s.tick(9.9, **ALIVE) == []
    assert dos(s.tick(10, **ALIVE)) == [SignalApp(signal.SIGKILL)]
    assert dos(s.tick(15, **ALIVE)) == [SignalApp(signal.SIGKILL)]
    s = Shutdown(app_stop_timeout=10, litestream_stop_timeout=10)
    s.begin(0, signal.SIGTERM, **ALIVE)
    assert dos(s.hurry(1, signal.SIGINT, **ALIVE)) == [SignalApp(signal.SIGKILL)]
    s = Shutdown(app_stop_timeout=10, litestream_stop_timeout=10)
    assert dos(s.begin(0, signal.SIGINT, app_alive=False, litestream_alive=False)) == []
    assert (s.phase, s.exit_code) == (DONE, 130)
