"""The supervisor loop against scripted histories: a fake clock, fake processes, a fake control
socket (supervisor_fakes.py). Each test runs the real Supervisor.serve() in milliseconds and
checks what happened to whom, and when, on the fake clock."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from supervisor_fakes import FakeWorld, Script, make, start_steps

from sidecar.errors import ExecError, MigrationError, StartError
from sidecar.supervise.events import ChildRestarted, RestoreRequested, RestoreResume, Resume

TERM, KILL = "SIGTERM", "SIGKILL"


def serve(tmp_path: Path, world: FakeWorld, **cfg: object) -> int:
    sup = make(tmp_path, world, **cfg)
    return sup.serve(start_steps(sup))


def signals_to(world: FakeWorld, who: str) -> list[tuple[float, str]]:
    return [(t, d) for t, _, _, d in world.of("signal", who)]


def test_sigterm_while_the_app_runs_stops_app_then_syncs_then_stops_litestream(
        tmp_path: Path) -> None:
    """SIGTERM: the app's group gets it, then the final sync, then Litestream's SIGTERM; the
    exit code is the app's (128+15 for a default handler)."""
    world = FakeWorld()
    world.kill(1.0, signal.SIGTERM)
    assert serve(tmp_path, world) == 143
    steps = [(what, who) for _, what, who, _ in world.history
             if what in ("signal", "exit", "final sync")]
    assert steps == [("signal", "app"), ("exit", "app"), ("final sync", "litestream"),
                     ("signal", "litestream"), ("exit", "litestream")]
    assert signals_to(world, "app") == [(1.0, TERM)]
    assert signals_to(world, "litestream") == [(1.3, TERM)]  # after the 0.2 s sync


def test_the_apps_own_exit_code_is_the_sidecars(tmp_path: Path) -> None:
    """An app that exits 3 by itself: final sync, Litestream stopped, exit 3; one that handles
    SIGTERM and exits 0: exit 0."""
    world = FakeWorld(scripts={"app": [Script(exit_at=2.0, exit_code=3)], "litestream": []})
    assert serve(tmp_path, world) == 3
    assert world.of("final sync") and signals_to(world, "litestream") == [(2.2, TERM)]
    world = FakeWorld(scripts={"app": [Script(term_code=0)], "litestream": []})
    world.kill(1.0, signal.SIGTERM)
    assert serve(tmp_path, world) == 0


def test_sigterm_while_litestream_starts_ends_the_start(tmp_path: Path) -> None:
    """SIGTERM before Litestream has opened the databases: no app, Litestream stopped, 143."""
    world = FakeWorld(ready_after=5.0)
    world.kill(0.5, signal.SIGTERM)
    with capture_logs() as logs:
        assert serve(tmp_path, world) == 143
    assert world.of("start", "app") == []
    assert signals_to(world, "litestream") == [(0.5, TERM)]
    assert "stopped during start-up" in [e["event"] for e in logs]


def test_stop_timeout_expiring_sends_sigkill_without_a_second_signal(tmp_path: Path) -> None:
    """An app that ignores SIGTERM is SIGKILLed once the stop timeout passes; exit 137."""
    world = FakeWorld(scripts={"app": [Script(term_after=None)], "litestream": []})
    world.kill(1.0, signal.SIGTERM)
    assert serve(tmp_path, world, app_stop_timeout=7.0) == 137
    assert signals_to(world, "app") == [(1.0, TERM), (8.0, KILL)]


def test_second_signal_while_the_app_stops_kills_it_at_once(tmp_path: Path) -> None:
    """A second SIGTERM while the app ignores the first: SIGKILL now, not after the timeout."""
    world = FakeWorld(scripts={"app": [Script(term_after=None)], "litestream": []})
    world.kill(1.0, signal.SIGTERM)
    world.kill(2.0, signal.SIGINT)
    with capture_logs() as logs:
        assert serve(tmp_path, world) == 137
    assert signals_to(world, "app") == [(1.0, TERM), (2.0, KILL)]
    assert "second signal: skipping the wait" in [e["event"] for e in logs]
    assert world.of("final sync")  # the sync still runs after the kill


def test_second_signal_during_the_final_sync_skips_it(tmp_path: Path) -> None:
    """A final sync that hangs: a second signal stops Litestream at once; without one, its
    budget (the Litestream stop timeout, at most 15 s, plus 2 s) ends it."""
    world = FakeWorld(sync_takes=None)
    world.kill(1.0, signal.SIGTERM)
    world.kill(3.0, signal.SIGTERM)
    assert serve(tmp_path, world) == 143
    assert signals_to(world, "litestream") == [(3.0, TERM)]

    world = FakeWorld(sync_takes=None)
    world.kill(1.0, signal.SIGTERM)
    assert serve(tmp_path, world, litestream_stop_timeout=4.0) == 143
    assert signals_to(world, "litestream") == [(1.1 + 4.0 + 2, TERM)]


def test_litestream_dying_during_the_final_sync_ends_the_shutdown(tmp_path: Path) -> None:
    """Litestream exits while the final sync waits: done, the app's code, no restart, no
    signal to a process that is gone."""
    world = FakeWorld(sync_takes=None,
                      scripts={"app": [], "litestream": [Script(exit_at=1.5, exit_code=1)]})
    world.kill(1.0, signal.SIGTERM)
    with capture_logs() as logs:
        assert serve(tmp_path, world) == 143
    assert signals_to(world, "litestream") == []
    assert len(world.of("start", "litestream")) == 1
    assert "litestream stopped" in [e["event"] for e in logs]
    assert "litestream restart scheduled" not in [e["event"] for e in logs]


def test_second_signal_while_litestream_stops_and_its_timeout(tmp_path: Path) -> None:
    """A Litestream slow to stop: a second signal sends it a second SIGTERM (it gives up its
    shutdown-sync retries); with none, SIGKILL after its stop timeout + 5 s."""
    world = FakeWorld(scripts={"app": [], "litestream": [Script(term_after=None)]})
    world.kill(1.0, signal.SIGTERM)
    world.kill(2.0, signal.SIGTERM)
    world.kill(4.0, signal.SIGTERM)
    world.at(5.0, lambda: world.processes[0].exit(0))
    assert serve(tmp_path, world) == 143
    assert signals_to(world, "litestream") == [(1.3, TERM), (2.0, TERM), (4.0, TERM)]

    world = FakeWorld(scripts={"app": [], "litestream": [Script(term_after=None)]})
    world.kill(1.0, signal.SIGTERM)
    assert serve(tmp_path, world, litestream_stop_timeout=3.0) == 143
    assert signals_to(world, "litestream") == [(1.3, TERM), (1.3 + 3 + 5, KILL)]


def test_litestream_dying_while_the_app_runs_restarts_with_backoff(tmp_path: Path) -> None:
    """Litestream exits while the app runs: restarted after 1 s, then 2 s, 4 s; once a run has
    lasted 60 s the backoff is back to 1 s. The app is not touched."""
    quick = [Script(exit_at=0.5, exit_code=1) for _ in range(3)]
    world = FakeWorld(scripts={"app": [], "litestream": [
        Script(exit_at=5.0, exit_code=1), *quick, Script(exit_at=70.0, exit_code=1)]})
    world.kill(120.0, signal.SIGTERM)
    with capture_logs() as logs:
        assert serve(tmp_path, world) == 143
    starts = [t for t, *_ in world.of("start", "litestream")]
    assert starts == [0.0, 6.0, 8.5, 13.0, 21.5, 92.5]
    delays = [e["in_seconds"] for e in logs if e["event"] == "litestream restart scheduled"]
    assert delays == [1.0, 2.0, 4.0, 8.0, 1.0]
    assert signals_to(world, "app") == [(120.0, TERM)]


def test_app_restart_on_failure_and_exit_zero_ends(tmp_path: Path) -> None:
    """SIDECAR_APP_RESTART=on-failure: a failing app is restarted with backoff; its exit 0
    ends the sidecar with 0."""
    world = FakeWorld(scripts={"app": [Script(exit_at=1.0, exit_code=2),
                                       Script(exit_at=1.0, exit_code=0)], "litestream": []})
    assert serve(tmp_path, world, app_restart="on-failure") == 0
    assert [t for t, *_ in world.of("start", "app")] == [0.0, 2.0]


def test_forwarded_signals_reach_the_app_only(tmp_path: Path) -> None:
    """SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH go to the app's group; Litestream sees none."""
    world = FakeWorld()
    for i, sig in enumerate((signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)):
        world.kill(1.0 + i, sig)
    world.kill(9.0, signal.SIGTERM)
    assert serve(tmp_path, world) == 143
    assert signals_to(world, "app") == [(1.0, "SIGHUP"), (2.0, "SIGUSR1"), (3.0, "SIGUSR2"),
                                        (4.0, "SIGWINCH"), (9.0, TERM)]
    assert signals_to(world, "litestream") == [(9.3, TERM)]


def test_hold_then_resume_then_stop(tmp_path: Path) -> None:
    """A failed start held for an operator: nothing runs; a failed resume holds again; a
    resume that succeeds starts Litestream and the app; SIGTERM then stops them as usual."""
    world = FakeWorld()
    sup = make(tmp_path, world)
    attempts: list[float] = []

    def start() -> None:
        attempts.append(world.now)
        if len(attempts) < 3:
            raise MigrationError("cannot migrate: the command failed")
        start_steps(sup)()

    world.at(1.0, lambda: sup.post(Resume()))
    world.at(2.0, lambda: sup.post(Resume()))
    world.kill(5.0, signal.SIGTERM)
    with capture_logs() as logs:
        assert sup.serve(start, hold=True) == 143
    events = [e["event"] for e in logs]
    assert attempts == [0.0, 1.0, 2.0]
    assert events.index("start failed: holding for an operator") < events.index(
        "start failed again: holding") < events.index("resumed")
    assert [t for t, *_ in world.of("start", "app")] == [2.0]
    assert signals_to(world, "app") == [(5.0, TERM)]


def test_a_stop_while_held_raises_the_failure(tmp_path: Path) -> None:
    """SIGTERM while held: the failure that is held is what the sidecar exits with."""
    world = FakeWorld()
    sup = make(tmp_path, world)
    world.kill(3.0, signal.SIGTERM)

    def start() -> None:
        raise MigrationError("cannot migrate: the command failed")

    with pytest.raises(MigrationError):
        sup.serve(start, hold=True)
    assert world.now == 3.0


def test_failed_child_starts_are_typed_errors_not_bugs(tmp_path: Path) -> None:
    """An app that cannot be executed: 127 (not found) / 126; a Litestream that exits during
    start-up or never opens the databases: 3. Never 70."""
    world = FakeWorld(scripts={"app": [Script(exec_error=FileNotFoundError(2, "nope"))],
                               "litestream": []})
    with pytest.raises(ExecError) as err:
        serve(tmp_path, world)
    assert err.value.exit_code == 127
    world = FakeWorld(scripts={"app": [Script(exec_error=PermissionError(13, "denied"))],
                               "litestream": []})
    with pytest.raises(ExecError) as err:
        serve(tmp_path, world)
    assert err.value.exit_code == 126
    world = FakeWorld(scripts={"app": [], "litestream": [Script(exit_at=0.1, exit_code=1)]},
                      ready_after=1.0)
    with pytest.raises(StartError) as start_err:
        serve(tmp_path, world)
    assert start_err.value.exit_code == 3 and "exited with code 1" in start_err.value.message
    world = FakeWorld(ready_after=100.0)
    with pytest.raises(StartError) as start_err:
        serve(tmp_path, world, ready_timeout=2.0)
    assert start_err.value.exit_code == 3 and world.now == pytest.approx(2.0, abs=0.05)


def test_neither_pid1_nor_subreaper_is_a_warning(tmp_path: Path, monkeypatch) -> None:
    """When sidecar can reap no orphan (not PID 1, no PR_SET_CHILD_SUBREAPER), it says so at
    warning level; as a subreaper it warns of nothing."""
    from sidecar.supervise import procs

    monkeypatch.setattr(procs, "is_pid1", lambda: False)
    monkeypatch.setattr(procs, "become_subreaper", lambda: False)
    with capture_logs() as logs:
        make(tmp_path, FakeWorld()).adopt_orphans()
    assert [(e["event"], e["log_level"]) for e in logs] == [("not a reaper: orphans of the app "
                                                              "are not reaped here", "warning")]
    monkeypatch.setattr(procs, "become_subreaper", lambda: True)
    with capture_logs() as logs:
        make(tmp_path, FakeWorld()).adopt_orphans()
    assert [e for e in logs if e["log_level"] != "debug"] == []


def test_subscribers_get_typed_events_in_the_loop(tmp_path: Path) -> None:
    """A restart reaches every ChildRestarted subscriber, in order, with the child's name; a
    posted RestoreRequested reaches its subscriber with its job; a subscriber that raises is
    logged and the loop goes on; an event nobody subscribed to is dropped."""
    world = FakeWorld(scripts={"app": [], "litestream": [Script(exit_at=1.0, exit_code=1)]})
    sup = make(tmp_path, world)
    seen: list[tuple[float, str, object]] = []
    sup.on(ChildRestarted, lambda e: seen.append((world.now, "first", e)))
    sup.on(ChildRestarted, lambda e: seen.append((world.now, "second", e)))

    def restore(event: RestoreRequested) -> None:
        seen.append((world.now, "restore", event.job))
        raise RuntimeError("a bug in the handler")

    sup.on(RestoreRequested, restore)
    world.at(3.0, lambda: sup.post(RestoreRequested("job-1")))
    world.at(3.5, lambda: sup.post(RestoreResume()))
    world.kill(5.0, signal.SIGTERM)
    with capture_logs() as logs:
        assert sup.serve(start_steps(sup)) == 143
    assert seen == [(2.0, "first", ChildRestarted("litestream")),
                    (2.0, "second", ChildRestarted("litestream")), (3.0, "restore", "job-1")]
    failed = [e for e in logs if e["event"] == "event handler failed"]
    assert len(failed) == 1 and "a bug in the handler" in failed[0]["error"]
    assert signals_to(world, "app") == [(5.0, TERM)]


def test_children_start_from_the_loops_thread_only(tmp_path: Path) -> None:
    """A child's death signal fires when the thread that started it ends: once the loop
    serves, a start from any other thread is refused (a bug, loudly), and nothing starts."""
    world = FakeWorld()
    sup = make(tmp_path, world)
    world.kill(1.0, signal.SIGTERM)
    assert sup.serve(start_steps(sup)) == 143
    errors: list[BaseException] = []

    def elsewhere() -> None:
        try:
            sup.children.spawn(sup.litestream)
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert len(errors) == 1 and "outside the supervisor loop's thread" in str(errors[0])
    assert len(world.of("start", "litestream")) == 1
