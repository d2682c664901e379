"""Restoring._await_fetch, the wait for a fetch beside a direct restore: it acts on the fetch's
news, and a fetch thread that could not be started leaves the direct restore in charge."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from sidecar.recovery.restore import Restoring


def _waiting(fetch_thread: threading.Thread, news: SimpleNamespace) -> Restoring:
    """A Restoring as `finish` finds it once the fetch was decided on (a direct Litestream
    running: `_helper` set)."""
    r = object.__new__(Restoring)
    r._fetching, r._fetch, r._fetched = fetch_thread, news, None  # type: ignore[assignment]
    r._helper = object()  # type: ignore[assignment]
    r._streaming = r._mirrored = False
    r.db = SimpleNamespace(name="app.db")  # type: ignore[assignment]
    return r


def _fetch_events() -> SimpleNamespace:
    return SimpleNamespace(news=threading.Event(), ready=threading.Event(),
                           committed=threading.Event(), stop=threading.Event())


def test_a_fetch_thread_that_never_started_leaves_the_direct_restore() -> None:
    """`start()` failed (no thread to be had): no news will ever come. The wait returns at
    once and the direct Litestream goes on (it waited forever on the news before)."""
    r = _waiting(threading.Thread(target=lambda: None), _fetch_events())
    done = threading.Event()
    t = threading.Thread(target=lambda: (r._await_fetch(None), done.set()), daemon=True)
    t.start()
    assert done.wait(2), "the wait did not return"
    assert r._helper is not None and not r._mirrored


def test_the_wait_ends_when_the_fetch_has_returned() -> None:
    """The fetch's result stored and its news set: the wait returns with it, well before its
    0.1 s timeout would matter (here the thread lives on a moment after the result)."""
    events = _fetch_events()
    release = threading.Event()

    def fetch() -> None:
        r._fetched = RuntimeError("the bucket said no")
        events.news.set()
        release.wait(5)  # still alive after its news

    r = _waiting(threading.Thread(target=fetch, daemon=True), events)
    done = threading.Event()
    r._fetching.start()
    t = threading.Thread(target=lambda: (r._await_fetch(None), done.set()), daemon=True)
    t.start()
    assert not done.wait(0.3)  # the thread still runs: the wait joins it
    release.set()
    assert done.wait(2)
    assert r._helper is not None and not r._mirrored
