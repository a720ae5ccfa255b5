"""A head start for a run that Prefect records: its first two steps (plan, validate-and-join) begin on a
background thread while the process imports Prefect and the flow run starts on the server, and the flow's
tasks `plan` and `validate-and-join` take their results instead of running them again.

Why: with a server configured, about 1.3 s of every command goes to importing Prefect and creating the flow
run, during which the data sat untouched; the join (DuckDB) runs outside Python's lock, so the two overlap
(10M rows, one pair of whole commands: 8.15 s against 9.58 s). `python -m flows.train` begins it
(`begin`) only when the server answers, and it applies to that command's own run only:

- the tasks take a result only for the very configuration it was begun with (`plan_run`, `join_inputs`),
  once; the error of a step begun ahead is raised by its task, so a transient one is retried by the task
  (running the step again, in the task), and an input error fails the task with its message;
- the log lines the steps wrote ahead are held back, then written by the task that takes the result,
  so Prefect records them under that task run, with their original times;
- a head start the flow never took (the flow run could not start) is waited for and discarded: its staging
  area and work directory are removed (`abandon`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from linreg.config import TrainConfig
from linreg.inputs.join import JoinResult
from linreg.pipeline import steps

DEFERRED = "_linreg_deferred"  # attribute of a log record written ahead and held back


@dataclass
class HeadStart:
    """The plan and join of `config`, run on a background thread (`start`), and what the tasks took of them."""

    config: TrainConfig
    plan: steps.RunPlan | None = None
    joined: JoinResult | None = None
    error: BaseException | None = None  # of the plan (when `plan` is None) or of the join
    records: list[logging.LogRecord] = field(default_factory=list)
    planned: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    plan_taken: bool = False
    join_taken: bool = False
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._work, name="head-start", daemon=True)
        _hold_logs(self)
        self.thread.start()

    def _work(self) -> None:
        try:
            self.plan = steps.plan_run(self.config)
        except BaseException as exc:  # noqa: BLE001 (raised by the plan task)
            self.error = exc
        finally:
            self.planned.set()
        try:
            if self.plan is not None:
                self.joined = steps.join_inputs(self.plan)
        except BaseException as exc:  # noqa: BLE001 (raised by the validate-and-join task)
            self.error = exc
        finally:
            self.done.set()


_current: HeadStart | None = None
_lock = threading.Lock()


def begin(config: TrainConfig) -> HeadStart:
    """Start the plan and join of `config` (its run id decided) on a background thread."""
    global _current
    with _lock:
        if _current is not None:
            raise RuntimeError("a head start is already running in this process")
        _current = HeadStart(config)
    _current.start()
    return _current


def current() -> HeadStart | None:
    return _current


def plan_run(config: TrainConfig) -> tuple[steps.RunPlan, bool]:
    """The plan of `config`: the head start's (waited for) when it began with this configuration and no
    task took it yet, else planned now; and whether it was begun ahead."""
    start = _claim("plan_taken", lambda s: s.config == config)
    if start is None:
        return steps.plan_run(config), False
    return _result(start, start.planned, lambda: start.plan, until_done=False), True


def join_inputs(plan: steps.RunPlan) -> tuple[JoinResult, bool]:
    """The join of `plan`: the head start's (waited for) when `plan` is its plan, else joined now; and
    whether it was begun ahead."""
    start = _claim("join_taken", lambda s: s.plan is plan)
    if start is None:
        return steps.join_inputs(plan), False
    return _result(start, start.done, lambda: start.joined, until_done=True), True


def _claim(flag: str, belongs) -> HeadStart | None:
    """This process's head start when `belongs(start)` holds and its `flag` ('plan_taken', 'join_taken') is
    not set yet, which this sets: each result is taken once."""
    start = _current
    with _lock:
        if start is None or getattr(start, flag) or not belongs(start):
            return None
        setattr(start, flag, True)
        return start


def _result(start: HeadStart, ready: threading.Event, value, *, until_done: bool):
    """`value()` once `ready` is set, after writing the log lines held back; the step's error if it failed."""
    ready.wait()
    _release_logs(start, until_done=until_done)
    if value() is None:
        raise start.error
    return value()


def discard(plan: steps.RunPlan) -> None:
    """`steps.discard(plan)`, after the head start's join has ended when `plan` is its plan (the join writes
    into the plan's work directory)."""
    start = _current
    if start is not None and start.plan is plan:
        start.done.wait()
    steps.discard(plan)


def abandon(*, wait: bool = True) -> None:
    """End this process's head start: when the flow never took its plan, wait for it and discard the plan;
    write the log lines still held back. wait=False (an interrupted command): leave a running thread (a
    daemon; its staging area is swept as stale by a later run) and only stop holding logs back."""
    global _current
    start = _current
    if start is None:
        return
    if wait:
        start.done.wait()
        if start.plan is not None and not start.plan_taken:
            steps.discard(start.plan)
    _release_logs(start, until_done=wait)
    _current = None


# ---------------------------------------------------------------------------------------------------------
# Log lines written ahead: held back from every handler, then handled in the taking task's context


_factory = None


def _hold_logs(start: HeadStart) -> None:
    """Records made on the head start's thread are marked `DEFERRED`, kept in `start.records`, and skipped
    by every handler of the root and `linreg` loggers (Prefect's console and API handlers are added to
    `linreg` while Prefect imports, hence the check at every record)."""
    global _factory
    previous = logging.getLogRecordFactory()
    _factory = previous

    def make(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if start.thread is not None and threading.get_ident() == start.thread.ident:
            setattr(record, DEFERRED, True)
            record.send_to_api = False  # Prefect's API handler: not outside a run (it would warn)
            start.records.append(record)
            for logger in (logging.getLogger(), logging.getLogger("linreg")):
                for handler in logger.handlers:
                    if _skip_deferred not in handler.filters:
                        handler.addFilter(_skip_deferred)
        return record

    logging.setLogRecordFactory(make)


def _skip_deferred(record: logging.LogRecord) -> bool:
    return not getattr(record, DEFERRED, False)


def _release_logs(start: HeadStart, *, until_done: bool) -> None:
    """Handle the records held so far (in the caller's context: the taking task's run); with `until_done`,
    also stop marking new ones."""
    global _factory
    if until_done and _factory is not None:
        logging.setLogRecordFactory(_factory)
        _factory = None
    while start.records:
        record = start.records.pop(0)
        setattr(record, DEFERRED, False)
        record.send_to_api = True
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
