"""Batch sensitivity studies: run a study's scenarios on a local pool or a Dask cluster.

:func:`run` takes a study (see :mod:`gridmarkets.study`), skips the scenarios already
in the results store, runs the others — a local process pool by default, the workers
of a Dask distributed cluster when given a scheduler address — and returns one row per
scenario as a DataFrame. Only the scenario's case dict travels to a worker, and only a
plain row comes back.

Results store: one SQLite file, ``DIR/study.sqlite``, table ``scenarios``, one row per
finished scenario keyed by (case hash, solve options). SQLite because it is in the
standard library (no extra dependency on a worker or a laptop), each row is inserted
in its own transaction the moment its scenario finishes (an interrupted or killed
study loses no committed row, and a torn write is rolled back, never half-stored), the
primary key makes a re-run skip what is done, and the file is queried with plain SQL
or ``pandas.read_sql``. Only the parent process writes, so the workers need no access
to DIR. A Parquet dataset would need pyarrow and one file per row (or rewrites); DuckDB
is an extra dependency for the same guarantees.

Failures: a scenario without a solution (infeasible, unbounded, a limit) or one that
raises is stored with its status and message and the study goes on. A worker process
that dies breaks the local pool: the finished rows are kept and the unfinished
scenarios are resubmitted to a new pool (at most :data:`POOL_STARTS` pools). A Dask
worker that dies is handled by Dask, which reschedules its tasks (each task is
forgotten by the cluster once its row is handed over, so only unfinished scenarios are
recomputed); a scenario that still cannot finish is reported as ``lost`` in the
returned frame, is not stored, and runs again at the next re-run. Worker processes of
the local pool do not import modules from the working directory.

A Dask cluster that cannot be reached within ``connect_timeout_s`` is an
:class:`SchedulerError` (exit 2); one that has had no worker for ``no_workers_timeout_s``
while scenarios wait stops the study with a :class:`WorkerError` (exit 1), its finished
rows stored, instead of waiting for a worker that may never come.

One sweep at a time per output folder: a sweep holds ``DIR/study.lock`` (an OS file lock
through ``filelock``, released by the OS when its process dies, so a killed sweep's lock
is taken over by the next) while it runs, and ``DIR/study.lock.holder`` names it (host,
process and start time). A second sweep into the same folder stops with a
:class:`FolderLockedError` (exit 2) naming the folder and the holder.

Interruption: on Ctrl-C (or any exception in the parent) the scenarios not started are
cancelled, those running finish and are stored, and the exception propagates. The local
pool starts its workers from a forkserver, so a script that calls :func:`run` needs the
usual ``if __name__ == "__main__":`` guard (notebooks and the CLI need nothing).

Model reuse (the study's ``reuse``, on by default): each worker thread keeps one
``ReusingRunner`` per model, a :func:`gridmarkets.pipeline.run_case` that keeps between
calls what the next case can reuse (every model's keeps the loaded Feeder; a case
module may offer its own: the LEM's also keeps the built LP compiled to HiGHS arrays,
updated in place when a scenario changes only bid prices and quantities or the upstream
tariffs — see
:class:`gridmarkets.specs.lem.ReusingRunner`). Whether a scenario may reuse is decided
by the runner from the case itself, by comparing it with the case the kept model was
built from with those data fields left out, not from what the study says it sweeps; a
structural change rebuilds. The answer is the one a rebuild gets (the same arrays,
solved cold), so a row does not depend on which worker ran it or after what; the row's
``reused`` says whether the model was reused. ``reuse: false`` runs ``run_case`` for
every scenario.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import multiprocessing
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor
from concurrent.futures import wait as futures_wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack, contextmanager
from importlib.metadata import version
from multiprocessing import forkserver
from pathlib import Path
from typing import Any
from unittest import mock

import pandas as pd
from filelock import FileLock, Timeout
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from gridmarkets import __version__, pipeline, registry
from gridmarkets.case import validate
from gridmarkets.errors import (
    CaseError,
    GridmarketsError,
    InfeasibleError,
    InputError,
    LimitReachedError,
    NoSolutionError,
    UnboundedError,
)
from gridmarkets.study import Scenario, Study, load_study

STORE_NAME = "study.sqlite"
LOCK_NAME = "study.lock"
POOL_STARTS = 3
CONNECT_TIMEOUT_S = 10.0
NO_WORKERS_TIMEOUT_S = 60.0
_POLL_S = 1.0  # how often a waiting study checks that its cluster still has workers
TIMINGS = ["build_seconds", "translate_seconds", "solve_seconds", "wall_seconds"]
PROVENANCE = ["case_hash", "gridmarkets_version", "pyomo_version", "highs_version"]
Runner = Callable[[Any, dict[str, Any]], Any]

_COLUMNS = {
    "case_hash": "TEXT NOT NULL",
    "solve_options": "TEXT NOT NULL",
    "scenario": "INTEGER",
    "parameters": "TEXT",
    "status": "TEXT NOT NULL",
    "message": "TEXT",
    "objective": "REAL",
    "gap": "REAL",
    "kpis": "TEXT",
    "ac_check": "TEXT",
    **{name: "REAL" for name in TIMINGS},
    "reused": "INTEGER",
    "gridmarkets_version": "TEXT",
    "pyomo_version": "TEXT",
    "highs_version": "TEXT",
    "worker": "TEXT",
    "finished_at": "TEXT",
}


_NOT_KPIS = {"scenario", "status", "message", "solve_options", "worker", "finished_at"}
_NOT_KPIS |= set(PROVENANCE)


class WorkerError(GridmarketsError):
    """Worker processes kept dying, or a Dask cluster has no worker left: the finished
    rows are stored, a re-run resumes."""

    exit_code = 1


class SchedulerError(InputError):
    """The Dask scheduler given cannot be reached."""


class FolderLockedError(InputError):
    """Another sweep is writing into the output folder."""


# --- one scenario, on a worker ----------------------------------------------------------


def run_scenario(
    case: dict[str, Any],
    solve_options: dict[str, Any],
    runner: Runner | None = None,
    reuse: bool = False,
) -> dict[str, Any]:
    """Solve one scenario and return its row (what a worker runs).

    Parameters
    ----------
    case : the scenario's validated case, as a plain dict.
    solve_options : passed to :func:`gridmarkets.pipeline.run_case`.
    runner : replaces ``pipeline.run_case(case, solve_options) -> Result``.
    reuse : run the model's ``ReusingRunner`` kept by this thread, where it has one.

    Returns
    -------
    dict : status, message, objective, gap, kpis and ac_check (JSON text), timings,
        whether the model was reused, and provenance. A scenario without a solution,
        or one that raises, is a row too.
    """
    started = time.perf_counter()
    run_case = runner
    try:
        spec = validate(case, f"case {case.get('name')}")
        run_case = runner or _model_runner(spec.model, reuse)
        row = _solved_row(run_case(spec, solve_options).summary())
    except NoSolutionError as err:
        row = {"status": _no_solution_status(err), "message": str(err)}
    except Exception as err:  # a crashing scenario is recorded and the study goes on
        row = {"status": "error", "message": f"{type(err).__name__}: {err}"}
    row["wall_seconds"] = time.perf_counter() - started
    row["reused"] = bool(getattr(run_case, "reused", False))
    return {**row, **_provenance()}


_kept = threading.local()


def _model_runner(model: str, reuse: bool) -> Runner:
    """:func:`gridmarkets.pipeline.run_case`, or with ``reuse`` this thread's
    ``ReusingRunner`` for the model (its case module's own where it has one, else the
    pipeline's, which keeps the Feeder)."""
    if not reuse:
        return pipeline.run_case
    runners = _kept.__dict__.setdefault("runners", {})
    if model not in runners:
        module = registry.model_module(model)
        runners[model] = getattr(module, "ReusingRunner", pipeline.ReusingRunner)()
    return runners[model]


def _solved_row(summary: dict[str, Any]) -> dict[str, Any]:
    row = {key: summary.get(key) for key in ("status", "objective", "gap", *TIMINGS[:3])}
    row["kpis"] = json.dumps(summary.get("kpis") or {})
    row["ac_check"] = json.dumps(summary.get("ac_check"))
    return row


def _no_solution_status(err: NoSolutionError) -> str:
    for kind, status in (
        (InfeasibleError, "infeasible"),
        (UnboundedError, "unbounded"),
        (LimitReachedError, "limit_reached"),
    ):
        if isinstance(err, kind):
            return status
    return "no_solution"


def _provenance() -> dict[str, str]:
    import pyomo.version

    return {
        "gridmarkets_version": __version__,
        "pyomo_version": pyomo.version.version,
        "highs_version": version("highspy"),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


# --- the results store --------------------------------------------------------------------


class ResultStore:
    """The SQLite file of a study's finished scenarios (see the module docstring).

    Parameters
    ----------
    path : the database file, or ``":memory:"`` for a study without an output folder.
    """

    def __init__(self, path: str | Path):
        self.connection = sqlite3.connect(str(path))
        columns = ", ".join(f"{name} {kind}" for name, kind in _COLUMNS.items())
        with self.connection:
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute(
                f"CREATE TABLE IF NOT EXISTS scenarios ({columns}, "
                "PRIMARY KEY (case_hash, solve_options))"
            )
            known = {row[1] for row in self.connection.execute("PRAGMA table_info(scenarios)")}
            for name in _COLUMNS.keys() - known:  # a store written by an older gridmarkets
                self.connection.execute(f"ALTER TABLE scenarios ADD COLUMN {name} {_COLUMNS[name]}")

    def add(self, scenario: Scenario, options: str, row: dict[str, Any]) -> None:
        """Insert one finished scenario's row, committed at once."""
        values = {
            **row,
            "case_hash": scenario.case_hash,
            "solve_options": options,
            "scenario": scenario.index,
            "parameters": json.dumps(scenario.values),
        }
        names = [name for name in _COLUMNS if name in values]
        with self.connection:
            self.connection.execute(
                f"INSERT OR REPLACE INTO scenarios ({', '.join(names)}) "
                f"VALUES ({', '.join('?' * len(names))})",
                [values[name] for name in names],
            )

    def rows(self, options: str) -> dict[str, dict[str, Any]]:
        """The stored rows solved with ``options``, by case hash."""
        cursor = self.connection.execute(
            "SELECT * FROM scenarios WHERE solve_options = ?", (options,)
        )
        names = [d[0] for d in cursor.description]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cursor}

    def close(self) -> None:
        """Close the database file."""
        self.connection.close()


# --- running a study ------------------------------------------------------------------------


def run(
    study: Study | str | Path,
    *,
    workers: int | None = None,
    scheduler: Any = None,
    out: str | Path | None = None,
    progress: bool = True,
    runner: Runner | None = None,
    reuse: bool | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    no_workers_timeout_s: float = NO_WORKERS_TIMEOUT_S,
) -> pd.DataFrame:
    """Run a study's scenarios and return one row per scenario.

    Parameters
    ----------
    study : a :class:`~gridmarkets.study.Study` or the path of a study file.
    workers : processes of the local pool (default: the machine's cores).
    scheduler : a Dask scheduler address (``tcp://host:port``) or a
        ``distributed.Client``: run on that cluster instead of a local pool.
    out : folder of the results store (``study.sqlite``, resumable), of the returned
        table (``scenarios.csv``) and of ``plots/<kpi>.png``; None keeps the results in
        memory only.
    progress : show a progress bar with ETA.
    runner : replaces :func:`gridmarkets.pipeline.run_case` (a picklable function).
    reuse : keep built models between scenarios that change only data (see the
        module); None takes the study's ``reuse``.
    connect_timeout_s : how long to try to reach the Dask scheduler.
    no_workers_timeout_s : how long scenarios may wait on a Dask cluster without a
        worker before the study stops.

    Returns
    -------
    pandas.DataFrame : scenario, one column per parameter (its dotted path), status,
        one column per KPI, message, objective, gap, timings, ``reused``,
        ``ac_check.<item>``, case hash, versions, worker and finish time.

    Raises
    ------
    FolderLockedError : another sweep writes into ``out``.
    SchedulerError : the scheduler cannot be reached.
    WorkerError : the local workers kept dying, or the cluster had no worker for
        ``no_workers_timeout_s``; the finished rows are stored.
    """
    if workers is not None and scheduler is not None:
        raise InputError("workers: the Dask cluster decides its workers; give one or the other")
    study = study if isinstance(study, Study) else load_study(study)
    folder = None if out is None else Path(out)
    options = json.dumps(study.solve_options, sort_keys=True)
    timeouts = (connect_timeout_s, no_workers_timeout_s)
    with ExitStack() as stack:
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            stack.enter_context(folder_lock(folder))
        store = ResultStore(":memory:" if folder is None else folder / STORE_NAME)
        stack.callback(store.close)
        job = (study.solve_options, runner, study.spec.reuse if reuse is None else reuse)
        executors = _Executors(workers, scheduler, timeouts, stack)
        lost = _run_missing(study, store, options, executors, progress, job, stack)
        frame = to_frame(study, store.rows(options), lost)
        if folder is not None:
            frame.to_csv(folder / "scenarios.csv", index=False)
            plot_kpis(frame, study, folder / "plots")
    return frame


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s sweep lock while the block runs (see the module docstring).

    Raises
    ------
    FolderLockedError : another live process holds it, named by its holder file.
    """
    lock = FileLock(folder / LOCK_NAME, timeout=0)
    holder = folder / f"{LOCK_NAME}.holder"
    try:
        lock.acquire()
    except Timeout:
        who = holder.read_text().strip() if holder.is_file() else "an unknown process"
        raise FolderLockedError(
            f"{folder}: another sweep is writing into this folder ({who}); wait for it "
            "to finish or give another --out folder"
        ) from None
    try:
        started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        holder.write_text(f"process {socket.gethostname()}:{os.getpid()}, since {started}\n")
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def _run_missing(study, store, options, executors, progress, job, stack):
    """Run the scenarios not in the store; return those lost to dying workers."""
    done = store.rows(options)
    todo = list({s.case_hash: s for s in study.scenarios if s.case_hash not in done}.values())
    record = _Recorder(study, store, options)
    for row in done.values():
        record.check_kpis(row)
    if not todo:
        return {}
    bar = stack.enter_context(_progress_bar(progress))
    task = bar.add_task(study.name, total=len(done) + len(todo), completed=len(done))
    record.advance = lambda: bar.advance(task)
    return _execute(todo, job, executors, record)


class _Recorder:
    """Stores each finished row, advances the bar, and checks the KPI names once."""

    def __init__(self, study: Study, store: ResultStore, options: str):
        self.study, self.store, self.options = study, store, options
        self.checked = False
        self.advance: Callable[[], None] = lambda: None

    def __call__(self, scenario: Scenario, row: dict[str, Any]) -> None:
        self.store.add(scenario, self.options, row)
        self.advance()
        self.check_kpis(row)

    def check_kpis(self, row: dict[str, Any]) -> None:
        """Every KPI the study asks for must be in a solved scenario's row."""
        if self.checked or row.get("kpis") is None:
            return
        self.checked = True
        known = [name for name in _flat(row) if name not in _NOT_KPIS]
        for k, name in enumerate(self.study.spec.kpis):
            if name not in known:
                raise CaseError(
                    f"{self.study.source}: kpis.{k}: {name!r} is not a KPI of model "
                    f"{self.study.model} (known: {', '.join(known)})"
                )


@contextmanager
def _progress_bar(show: bool) -> Iterator[Progress]:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), disable=not show) as bar:
        yield bar


class _Executors:
    """Opens fresh executors (a local process pool, or a Dask client's) and checks,
    while scenarios wait, that a Dask cluster still has workers."""

    def __init__(self, workers, scheduler, timeouts: tuple[float, float], stack: ExitStack):
        self.workers, self.client = workers, None
        self.no_workers_timeout_s = timeouts[1]
        self.idle_since: float | None = None
        if scheduler is not None:
            self.client = _connect(scheduler, timeouts[0], stack)

    def open(self, n_todo: int) -> Executor:
        """A fresh executor for ``n_todo`` scenarios."""
        if self.client is not None:
            return _DaskExecutor(self.client)
        size = max(1, min(self.workers or os.cpu_count() or 1, n_todo))
        return ProcessPoolExecutor(size, mp_context=_pool_context())

    def check(self, n_waiting: int) -> None:
        """Raise WorkerError once a Dask cluster has had no worker for the timeout."""
        if self.client is None:
            return
        try:
            workers = len(self.client.nthreads())
        except OSError:  # the scheduler itself is gone: no worker either
            workers = 0
        now = time.monotonic()
        if workers:
            self.idle_since = None
            return
        self.idle_since = self.idle_since or now
        if now - self.idle_since >= self.no_workers_timeout_s:
            raise WorkerError(
                f"the Dask cluster at {self.client.scheduler.address} has had no worker "
                f"for {self.no_workers_timeout_s:g} s; the finished rows are stored; "
                f"{n_waiting} scenario(s) did not finish (start workers and re-run to resume)"
            )


class _DaskExecutor(Executor):
    """A Dask client's tasks as ``concurrent.futures`` futures. Unlike the client's own
    executor it lets the cluster forget each task once its row is handed over, so a
    worker that dies later makes Dask recompute only unfinished scenarios (a result
    still held for a client is recomputed when the worker holding it dies)."""

    def __init__(self, client):
        self.client = client
        self.running: dict[Any, Future] = {}  # Dask task -> its future here
        self.stopped = False

    def submit(self, fn, /, *args, **kwargs) -> Future:
        task = self.client.submit(fn, *args, pure=False, **kwargs)
        future: Future = Future()
        future.set_running_or_notify_cancel()
        self.running[task] = future
        task.add_done_callback(self._hand_over)
        return future

    def _hand_over(self, task) -> None:
        """Runs in a thread of Dask's when the task ends: its outcome to its future."""
        future = self.running.pop(task)
        try:
            if task.status == "finished":
                future.set_result(task.result())
            else:  # erred (a worker lost too often: KilledWorker) or cancelled
                future.set_exception(task.exception())
        except BaseException as err:  # cancelled, or the result could not be fetched
            future.set_exception(err)
        finally:
            task.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Wait for the running tasks, or (``wait=False``) cancel them; once."""
        if self.stopped:
            return
        self.stopped = True
        if wait and not cancel_futures:
            futures_wait(list(dict(self.running).values()))
        else:
            self.client.cancel(list(dict(self.running)))


def _connect(scheduler, timeout_s: float, stack: ExitStack):
    """A Dask client of ``scheduler`` (an address, or a Client used as given)."""
    from distributed import Client
    from distributed.comm import resolve_address

    if isinstance(scheduler, Client):
        return scheduler
    try:
        resolve_address(scheduler)  # a malformed address or unknown host fails here, fast
        client = Client(scheduler, timeout=timeout_s, set_as_default=False)
    except (OSError, ValueError, TypeError) as err:
        raise SchedulerError(
            f"--scheduler {scheduler}: cannot reach a Dask scheduler there within "
            f"{timeout_s:g} s ({type(err).__name__}: {err}); is it running, and is the "
            "address tcp://host:port?"
        ) from None
    return stack.enter_context(client)


def _pool_context() -> multiprocessing.context.BaseContext:
    """Forkserver: workers fork from a clean server (no threads of ours, like rich's
    refresher, are copied) that has already imported the heavy modules once.

    The server is started as ``python -c``, which puts the working directory first on
    its import path (Python 3.11 ignores the parent's path there), so a ``concurrent.py``
    planted in that folder would run in every worker: it starts with ``PYTHONSAFEPATH``
    set, which leaves the working directory out. The workers then take this process's
    import path."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["gridmarkets.batch", "pyomo.environ"])
    with mock.patch.dict(os.environ, PYTHONSAFEPATH="1"):
        forkserver.ensure_running()
    return context


def _execute(todo, job, executors, record) -> dict[Scenario, str]:
    """Run every scenario, restarting a broken local pool; return the lost ones."""
    lost: dict[Scenario, str] = {}
    for _ in range(POOL_STARTS):
        with executors.open(len(todo)) as executor:
            todo, failed = _drain(executor, todo, job, record, executors.check)
        lost.update(failed)
        if not todo:
            return lost
    raise WorkerError(
        f"worker processes died {POOL_STARTS} times; the finished rows are stored; "
        f"{len(todo)} scenario(s) did not finish (re-run to resume)"
    )


def _drain(executor: Executor, todo: list[Scenario], job, record, check):
    """Submit, then record rows as they finish; return (unfinished, lost with reason)."""
    futures = {executor.submit(run_scenario, s.case, *job): s for s in todo}
    kept: set[Future] = set()
    lost: dict[Scenario, str] = {}
    try:
        for future in _as_finished(futures, check):
            try:
                row = future.result()
            except BrokenProcessPool:
                break
            except Exception as err:  # the cluster lost it: not a result, not stored
                lost[futures[future]] = f"{type(err).__name__}: {err}"
                continue
            kept.add(future)
            record(futures[future], row)
    except BaseException:
        _stop(executor)
        _keep_finished(futures, kept, record)
        raise
    _keep_finished(futures, kept, record)
    unfinished = [s for f, s in futures.items() if f not in kept and s not in lost]
    return unfinished, lost


def _as_finished(futures, check: Callable[[int], None]) -> Iterator[Future]:
    """The futures as they finish; ``check(waiting)`` runs whenever none has finished
    for a while (it may raise to stop waiting)."""
    pending = set(futures)
    while pending:
        done, pending = futures_wait(pending, timeout=_POLL_S, return_when=FIRST_COMPLETED)
        if not done:
            check(len(pending))
        yield from done


def _stop(executor: Executor) -> None:
    """Cancel what has not started; let what runs finish (its row is then kept)."""
    if isinstance(executor, ProcessPoolExecutor):
        executor.shutdown(wait=True, cancel_futures=True)
    else:
        executor.shutdown(wait=False)


def _keep_finished(futures: dict[Future, Scenario], kept: set[Future], record) -> None:
    for future, scenario in futures.items():
        finished = future.done() and not future.cancelled() and future.exception() is None
        if finished and future not in kept:
            kept.add(future)
            record(scenario, future.result())


# --- the table, the summary and the plots ----------------------------------------------------


def to_frame(
    study: Study, rows: dict[str, dict[str, Any]], lost: dict[Scenario, str] | None = None
) -> pd.DataFrame:
    """One row per scenario of ``study`` from the stored rows (by case hash).

    A scenario neither stored nor lost has status ``not_run``.
    """
    lost_by_hash = {s.case_hash: reason for s, reason in (lost or {}).items()}
    records = [_record(s, rows.get(s.case_hash), lost_by_hash) for s in study.scenarios]
    frame = pd.DataFrame.from_records(records)
    kpis = study.spec.kpis or _all_kpis(rows.values())
    ac_columns = sorted({c for r in records for c in r if c.startswith("ac_check.")})
    details = ["message", "objective", "gap", *TIMINGS, "reused", *ac_columns]
    details += [*PROVENANCE, "worker", "finished_at"]
    columns = ["scenario", *study.parameters, "status", *kpis]
    return frame.reindex(columns=columns + [c for c in details if c not in kpis])


def _record(scenario: Scenario, row: dict[str, Any] | None, lost: dict[str, str]) -> dict:
    values = {p: v if _is_scalar(v) else json.dumps(v) for p, v in scenario.values.items()}
    base = {"scenario": scenario.index, **values, "case_hash": scenario.case_hash}
    if row is None:
        reason = lost.get(scenario.case_hash)
        status = "not_run" if reason is None else "lost"
        return {**base, "status": status, "message": reason}
    return {**_flat(row), **base}


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row with its KPIs and its AC check's scalar items as columns."""
    flat = {k: v for k, v in row.items() if k not in ("kpis", "ac_check", "parameters")}
    flat.update(json.loads(row.get("kpis") or "{}"))
    ac_check = json.loads(row.get("ac_check") or "null") or {}
    flat.update({f"ac_check.{k}": v for k, v in ac_check.items() if _is_scalar(v)})
    return flat


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _all_kpis(rows) -> list[str]:
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(json.loads(row.get("kpis") or "{}")))
    return list(names)


FAILED = ("error", "lost", "not_run")  # statuses of scenarios that gave no answer
NO_SOLUTION = ("infeasible", "unbounded", "limit_reached", "no_solution")


def failures(frame: pd.DataFrame) -> str | None:
    """What a sweep's exit code reports: None when every scenario ran to an answer.

    A scenario failed when it raised (``error``) or was lost with its worker; an
    infeasible (or unbounded, ...) scenario is an answer, unless no scenario at all has
    a solution. The text counts them by status.
    """
    counts = frame["status"].value_counts()
    failed = counts.reindex(FAILED).dropna()
    solved = len(frame) - int(counts.reindex([*FAILED, *NO_SOLUTION]).sum())
    if failed.empty and solved:
        return None
    by_status = ", ".join(f"{status}: {int(n)}" for status, n in counts.items())
    if failed.empty:
        return f"no scenario of {len(frame)} has a solution ({by_status})"
    retry = "; a re-run retries the lost ones" if "lost" in failed else ""
    return (
        f"{int(failed.sum())} of {len(frame)} scenarios failed ({by_status}); their "
        f"reasons are in the message column{retry}"
    )


def kpi_names(frame: pd.DataFrame) -> list[str]:
    """The KPI columns of a frame made by :func:`to_frame` (between status and message)."""
    start = frame.columns.get_loc("status") + 1
    return list(frame.columns[start : frame.columns.get_loc("message")])


def summary_table(frame: pd.DataFrame, study: Study) -> Table:
    """A rich table: scenarios per status, and each KPI's min, median and max."""
    counts = frame["status"].value_counts()
    caption = ", ".join(f"{status}: {n}" for status, n in counts.items())
    table = Table("KPI", title=study.name, caption=caption)
    for column in ("min", "median", "max"):
        table.add_column(column, justify="right")
    for name in kpi_names(frame):
        values = pd.to_numeric(frame[name], errors="coerce").dropna()
        cells = [values.min(), values.median(), values.max()] if len(values) else [math.nan] * 3
        table.add_row(name, *(f"{v:,.4g}" for v in cells))
    return table


def plot_kpis(frame: pd.DataFrame, study: Study, folder: str | Path) -> list[Path]:
    """One PNG per KPI (:func:`gridmarkets.plots.sweep_plots`): a heatmap over a grid of
    two parameters, else a panel per numeric parameter.

    Returns
    -------
    list of Path : the files written, ``<folder>/<kpi>.png``.
    """
    from gridmarkets.plots import sweep_plots

    return sweep_plots(frame, study, folder)
