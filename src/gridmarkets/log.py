"""Logging, progress and stage timings: the standard library's ``logging`` with rich on
stderr, so stdout keeps only what a command prints as its result.

Library code logs to ``logging.getLogger(__name__)`` and wraps its long loops in
:func:`track`; nothing is shown until an application configures logging. The CLI calls
:func:`configure`: a rich handler on stderr, ``gridmarkets`` at INFO (``--quiet``:
WARNING; ``--verbose``: DEBUG, which also routes HiGHS's own log through logging, see
:func:`gridmarkets.solvers.highs.new_highs`). :func:`track` draws a rich progress bar on
stderr while the ``gridmarkets`` logger is enabled for INFO and stderr is a terminal (or a
notebook); nested loops share one display.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

LOGGER = "gridmarkets"
QUIET, NORMAL, VERBOSE = -1, 0, 1
_LEVELS = {QUIET: logging.WARNING, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}

T = TypeVar("T")
_lock = threading.Lock()
_display = None  # the one active rich Progress (nested loops add their task to it)


def configure(verbosity: int = NORMAL) -> None:
    """Show gridmarkets's log on stderr through rich.

    Parameters
    ----------
    verbosity : QUIET (-1: warnings and errors), NORMAL (0: progress and stages) or
        VERBOSE (1: debug messages and HiGHS's log). In a notebook or script,
        ``configure()`` shows the stages and progress bars of the runs that follow.
    """
    from rich.logging import RichHandler

    handler = RichHandler(
        console=stderr_console(),
        show_path=False,
        markup=False,
        rich_tracebacks=False,
        log_time_format="[%X]",
    )
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, RichHandler)] + [handler]
    root.setLevel(logging.WARNING)  # other libraries: warnings and errors only
    logging.getLogger(LOGGER).setLevel(_LEVELS[max(QUIET, min(VERBOSE, verbosity))])
    logging.captureWarnings(True)


@functools.cache
def stderr_console():
    """The one rich console on stderr, shared by the log and the progress display (so
    log lines print above a live progress bar)."""
    from rich.console import Console

    return Console(stderr=True)


def showing_progress() -> bool:
    """Whether :func:`track` draws: gridmarkets logs at INFO and stderr is a terminal
    (or a Jupyter notebook's output)."""
    if not logging.getLogger(LOGGER).isEnabledFor(logging.INFO):
        return False
    console = stderr_console()
    return console.is_terminal or console.is_jupyter


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield ``items`` with a progress bar on stderr (see :func:`showing_progress`).

    Parameters
    ----------
    items : what the loop runs over.
    description : what the loop does ("AC power flow", "re-plans", ...).
    total : the number of items, when ``items`` has no ``len``.
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with progress_task(description, total) as advance:
        for item in items:
            yield item
            advance()


@contextmanager
def progress_task(description: str, total: int | None = None) -> Iterator[Callable[[], None]]:
    """A task on the shared progress display while the block runs (an elapsed-time
    spinner when ``total`` is None); yields the function that advances it by one."""
    if not showing_progress():
        yield lambda: None
        return
    with _progress() as display:
        task = display.add_task(description, total=total)
        try:
            yield lambda: display.advance(task)
        finally:
            display.remove_task(task)


@contextmanager
def _progress():
    """The active progress display, or a new one (transient: gone when done)."""
    global _display
    with _lock:
        outer = _display is None
        if outer:
            from rich.progress import (
                BarColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            _display = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                _count_column(),
                TimeElapsedColumn(),
                console=stderr_console(),
                transient=True,
            )
            _display.start()
        display = _display
    try:
        yield display
    finally:
        if outer:
            with _lock:
                display.stop()
                _display = None


def process_age_seconds() -> float:
    """Seconds since this process started (Linux: from /proc, to 1/100 s, so the
    interpreter's own start-up counts); 0.0 where /proc is not available."""
    import os

    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            now = float(uptime.read().split()[0])
    except (OSError, IndexError, ValueError):
        return 0.0
    return max(0.0, now - started_ticks / os.sysconf("SC_CLK_TCK"))


def _count_column():
    """k/n for a loop; nothing for a stage's spinner, which has no count."""
    from rich.progress import MofNCompleteColumn

    class CountColumn(MofNCompleteColumn):
        def render(self, task):
            return super().render(task) if task.total is not None else ""

    return CountColumn()


class StageTimer:
    """Wall time per named stage of a run (seconds, in the order first timed).

    ``with timer.stage("solve"): ...`` adds the block's wall time to "solve", logs the
    stage and shows it as a spinner with its elapsed time (where :func:`track` draws);
    :attr:`seconds` maps stages to their times.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, message: str | None = None) -> Iterator[None]:
        """Time the block as stage ``name``; log ``message`` first at INFO (without a
        message, the stage's name at DEBUG)."""
        logger = logging.getLogger(LOGGER)
        logger.log(logging.DEBUG if message is None else logging.INFO, "%s", message or name)
        started = time.perf_counter()
        try:
            with progress_task(message or name):
                yield
        finally:
            elapsed = time.perf_counter() - started
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
            logger.debug("%s took %.2f s", name, elapsed)

    def add(self, name: str, seconds: float) -> None:
        """Add ``seconds`` measured elsewhere to stage ``name``."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
