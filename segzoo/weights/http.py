"""HTTP sessions whose requests end by a wall-clock deadline, however slowly the server sends.

``requests`` applies its timeout to each socket read, so a server that sends
its status line and headers one byte at a time, or a body that never ends,
never times out. Inside :func:`deadline`, every connection a :func:`session`
hands out is watched, and once the deadline passes a watchdog thread shuts
their sockets down: the blocked read returns at once, and :func:`deadline`
raises :class:`DeadlinePassed` with the message it was given (which names the
limit and the variable that raises it), whatever error the cut-off read caused.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import requests
import urllib3
from requests.adapters import HTTPAdapter

_WATCHDOG_POLL_S = 0.25  # after the deadline, sockets opened late are shut down within this


class DeadlinePassed(requests.Timeout):
    """An attempt ran past its wall-clock deadline; the message names the limit and how to raise it."""


class Watchdog:
    """Shuts down the sockets of the watched connections once its deadline has passed."""

    def __init__(self, seconds: float, message: str) -> None:
        self._start = time.monotonic()
        self._until = self._start + seconds
        self.message = message
        self.expired = False
        self._stopped = False
        self._connections: list[urllib3.connection.HTTPConnection] = []
        self._socket_sources: list[Callable[[], Iterable[socket.socket]]] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="segzoo-download-deadline", daemon=True)
        self._thread.start()

    def extend(self, seconds: float, message: str) -> None:
        """Move the deadline to ``seconds`` after the start (e.g. from the headers' deadline to the whole body's)."""
        with self._changed:
            if not self.expired:
                self._until, self.message = self._start + seconds, message
                self._changed.notify()

    def restart(self, seconds: float, message: str) -> None:
        """Move the deadline to ``seconds`` from now (a client's next request, or its response's body)."""
        with self._changed:
            if not self.expired:
                self._until, self.message = time.monotonic() + seconds, message
                self._changed.notify()

    def watch(self, connection: urllib3.connection.HTTPConnection) -> None:
        with self._changed:
            self._connections.append(connection)
            self._changed.notify()

    def watch_sockets(self, sockets: Callable[[], Iterable[socket.socket]]) -> None:
        """Also shut down, once the deadline has passed, the sockets ``sockets()`` gives then (another HTTP client's
        open connections)."""
        with self._changed:
            self._socket_sources.append(sockets)
            self._changed.notify()

    def check(self) -> None:
        """Raise :class:`DeadlinePassed` if the deadline has passed (what was read since may be cut short)."""
        if self.expired:
            raise DeadlinePassed(self.message)

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify()
        self._thread.join()

    def _run(self) -> None:
        with self._changed:
            while not self._stopped:
                remaining = self._until - time.monotonic()
                if remaining > 0:
                    self._changed.wait(remaining)
                    continue
                self.expired = True
                sockets = [getattr(connection, "sock", None) for connection in self._connections]
                sockets += [sock for source in self._socket_sources for sock in source()]
                for sock in sockets:
                    if sock is not None:
                        try:
                            sock.shutdown(socket.SHUT_RDWR)
                        except OSError:  # already closed
                            pass
                self._changed.wait(_WATCHDOG_POLL_S)  # a connection opened late is shut down too


_watchdog: ContextVar[Watchdog | None] = ContextVar("segzoo_http_watchdog", default=None)


def current_watchdog() -> Watchdog | None:
    """The watchdog of the :func:`deadline` this code runs in, if any."""
    return _watchdog.get()


@contextmanager
def deadline(seconds: float, message: str) -> Iterator[Watchdog]:
    """Cut off every request of a :func:`session` in this block ``seconds`` from now; raise :class:`DeadlinePassed`.

    Once the deadline has passed, any error, or even a normal end (a cut-off
    header block or body can look complete), becomes :class:`DeadlinePassed`.
    """
    watchdog = Watchdog(seconds, message)
    token = _watchdog.set(watchdog)
    try:
        yield watchdog
    except Exception as err:
        if watchdog.expired:
            raise DeadlinePassed(watchdog.message) from err
        raise
    finally:
        _watchdog.reset(token)
        watchdog.stop()
    watchdog.check()


def _watched(pool_class: type[urllib3.HTTPConnectionPool]) -> type[urllib3.HTTPConnectionPool]:
    class WatchedPool(pool_class):
        """Hands each connection (fresh or kept alive) to the current :func:`deadline`'s watchdog."""

        def _get_conn(self, timeout: float | None = None):
            connection = super()._get_conn(timeout)
            watchdog = _watchdog.get()
            if watchdog is not None:
                watchdog.watch(connection)
            return connection

    WatchedPool.__name__ = WatchedPool.__qualname__ = pool_class.__name__  # as urllib3's messages name it
    return WatchedPool


_WATCHED_POOLS = {"http": _watched(urllib3.HTTPConnectionPool), "https": _watched(urllib3.HTTPSConnectionPool)}


class _WatchedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is urllib3.ProxyManager:  # SOCKS proxies keep their own pools
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


def session() -> requests.Session:
    """A ``requests`` session whose requests :func:`deadline` can cut off (proxies from the environment, as usual)."""
    new = requests.Session()
    for prefix in ("http://", "https://"):
        new.mount(prefix, _WatchedAdapter())
    return new
