"""Ctrl-C and SIGTERM stop a process between two store calls, never inside one.

Python raises KeyboardInterrupt wherever the main thread happens to be when the signal comes.
Raised inside SQLAlchemy's commit of an MLflow write, it left that connection checked out with
SQLite's write lock held: the job's own closing write (its run marked KILLED) then waited 20 s
and failed with "database is locked", the run stayed RUNNING, and the sweep's next job failed
too. So while a store call runs (`deferred()`: every call of `StoreClient` and of the Optuna
storage in src/pruning.py), the stop is noted and raised as soon as the call returns; a second
signal meanwhile stops at once, so that a store that hangs never traps the user.

Only the main thread receives signals; calls from other threads are not deferred (none are needed).
"""

import functools
import inspect
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_depth = 0  # nested deferred() blocks open in the main thread
_noted: Callable[[], NoReturn] | None = None  # the stop that waits for the store call to return


def keyboard_interrupt(signum: int) -> NoReturn:
    raise KeyboardInterrupt


def install(stop: Callable[[int], NoReturn] = keyboard_interrupt, signals=STOP_SIGNALS) -> dict:
    """Have these signals call stop(signum) (by default: raise KeyboardInterrupt), deferred while a
    store call runs. Returns the handlers it replaced (for restore). Main thread only, as signal.signal."""
    def handler(signum, frame) -> None:
        global _noted
        if _depth and _noted is None:
            _noted = functools.partial(stop, signum)
            return
        stop(signum)

    return {each: signal.signal(each, handler) for each in signals}


def restore(previous: dict) -> None:
    for each, handler in previous.items():
        signal.signal(each, handler)


@contextmanager
def handled(stop: Callable[[int], NoReturn] = keyboard_interrupt, signals=STOP_SIGNALS) -> Iterator[None]:
    """install() for the block, then the handlers before it (nothing outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = install(stop, signals)
    try:
        yield
    finally:
        restore(previous)


@contextmanager
def deferred() -> Iterator[None]:
    """A stop signalled inside the block takes effect when the block ends."""
    global _depth, _noted
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _noted is not None:
            stop, _noted = _noted, None
            stop()


def completing(cls: type, name: str) -> type:
    """A subclass of cls, importable as `name` from the caller's module, whose public methods each
    run inside deferred(): a stop waits for the call to return."""
    def deferring(method):
        @functools.wraps(method)
        def call(*args, **kwargs):
            with deferred():
                return method(*args, **kwargs)
        return call

    methods = {attribute: deferring(method) for attribute in dir(cls) if not attribute.startswith("_")
               and inspect.isfunction(method := inspect.getattr_static(cls, attribute))}  # not static or class methods
    module = inspect.currentframe().f_back.f_globals["__name__"]
    return type(name, (cls,), {**methods, "__module__": module, "__qualname__": name,
                               "__doc__": f"{cls.__name__} whose calls finish before Ctrl-C or SIGTERM stops "
                                          "the process (src/interrupts.py)"})
