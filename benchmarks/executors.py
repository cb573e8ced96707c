"""Where benchmark cells run: in this process, in local worker processes, or as Ray tasks.

Every executor calls the same function on the same picklable cell inputs and yields ``(job, outcome)``
pairs as cells finish, where ``outcome`` is the function's return value or the exception that ended
the cell. One cell failing, even by killing its worker process, never stops the others.

- ``InProcess``: one cell after the other in this process (the default; per-step progress bars).
- ``LocalProcesses(n)``: n worker processes started with ``spawn``. Each worker process sits behind its
  own one-process ``ProcessPoolExecutor`` and a ``ThreadPoolExecutor`` of n threads hands out the cells,
  so a worker that dies breaks only its own pool: that cell is reported lost, a fresh worker takes the
  next cell, and the other workers never notice. (A single n-process pool would terminate every worker
  and fail every pending cell when one of them dies.)
- ``RayTasks``: each cell is a Ray task asking for ``cpus_per_cell`` CPUs and ``gpus_per_cell`` GPUs,
  on a local Ray instance or the cluster at ``address``; no retries, so a crashed task is reported,
  not silently rerun.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import queue
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import Any

HEARTBEAT_S = 60.0  # with no cell finishing for this long, say that the run is still going

Outcome = Any  # a cell's return value, or the exception that ended it


class WorkerDied(RuntimeError):
    """The process running a cell ended without returning (killed, out of memory, os._exit)."""


class InProcess:
    """Cells one after the other in this process, in plan order."""

    slots = 1
    name = "in-process"

    def map_unordered(self, fn: Callable[[Any], Any], jobs: Iterable[Any],
                      on_idle: Callable[[], None] | None = None) -> Iterator[tuple[Any, Outcome]]:
        for job in jobs:
            try:
                yield job, fn(job)
            except Exception as err:  # reported by the caller; KeyboardInterrupt still stops the run
                yield job, err

    def close(self) -> None:
        pass


def _as_completed(futures: dict[cf.Future, Any], on_idle: Callable[[], None] | None) -> Iterator[tuple[Any, Outcome]]:
    """Yield each future's job and outcome as it finishes, calling ``on_idle`` after each quiet HEARTBEAT_S."""
    pending = set(futures)
    while pending:
        finished, pending = cf.wait(pending, timeout=HEARTBEAT_S, return_when=cf.FIRST_COMPLETED)
        if not finished and on_idle is not None:
            on_idle()
        for future in finished:
            error = future.exception()
            yield futures[future], future.result() if error is None else error


class LocalProcesses:
    """``n`` spawned worker processes, each reused from cell to cell and replaced only if it dies."""

    name = "local processes"

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"--jobs must be at least 1, got {n}")
        self.slots = n
        self._context = multiprocessing.get_context("spawn")  # no fork: torch and threads do not survive it
        self._idle: queue.SimpleQueue[cf.ProcessPoolExecutor] = queue.SimpleQueue()
        self._threads = cf.ThreadPoolExecutor(n, thread_name_prefix="cell")

    def _in_a_worker(self, fn: Callable[[Any], Any], job: Any) -> Any:
        try:
            worker = self._idle.get_nowait()
        except queue.Empty:
            worker = cf.ProcessPoolExecutor(1, mp_context=self._context)
        try:
            result = worker.submit(fn, job).result()
        except BrokenProcessPool as err:
            worker.shutdown(wait=False)
            raise WorkerDied("the worker process running this cell died (killed, out of memory or exited) "
                             "before returning a result") from err
        except BaseException:
            self._idle.put(worker)  # the cell raised; its worker process is fine
            raise
        self._idle.put(worker)
        return result

    def map_unordered(self, fn: Callable[[Any], Any], jobs: Iterable[Any],
                      on_idle: Callable[[], None] | None = None) -> Iterator[tuple[Any, Outcome]]:
        futures = {self._threads.submit(self._in_a_worker, fn, job): job for job in jobs}
        yield from _as_completed(futures, on_idle)

    def close(self) -> None:
        self._threads.shutdown(wait=True, cancel_futures=True)
        while not self._idle.empty():
            self._idle.get_nowait().shutdown(wait=True)


class RayTasks:
    """Each cell a Ray task with the resources the config asks for, on local Ray or the cluster at ``address``."""

    name = "ray"

    def __init__(self, cpus_per_cell: int, gpus_per_cell: float, address: str | None = None,
                 where: str = "[resources]"):
        try:
            import ray
        except ImportError as err:
            raise RuntimeError("--executor ray needs Ray: pip install 'grao-lab[ray]'") from err
        self._ray = ray
        self._started_here = not ray.is_initialized()
        if self._started_here:
            ray.init(address=address)
        total = ray.cluster_resources()
        cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
        if cpus < cpus_per_cell or gpus < gpus_per_cell:
            self.close()
            raise RuntimeError(f"{where}: a cell asks for cpus_per_cell = {cpus_per_cell} and gpus_per_cell = "
                               f"{gpus_per_cell}, but the Ray cluster{f' at {address}' if address else ''} has "
                               f"{cpus:g} CPUs and {gpus:g} GPUs in all")
        self.slots = max(1, int(min(cpus // cpus_per_cell, gpus // gpus_per_cell if gpus_per_cell else cpus)))
        self._options = {"num_cpus": cpus_per_cell, "num_gpus": gpus_per_cell, "max_retries": 0}

    def map_unordered(self, fn: Callable[[Any], Any], jobs: Iterable[Any],
                      on_idle: Callable[[], None] | None = None) -> Iterator[tuple[Any, Outcome]]:
        task = self._ray.remote(**self._options)(fn)
        futures = {task.remote(job).future(): job for job in jobs}
        yield from _as_completed(futures, on_idle)

    def close(self) -> None:
        if self._started_here and self._ray.is_initialized():
            self._ray.shutdown()


Executor = InProcess | LocalProcesses | RayTasks


def make(kind: str = "local", jobs: int = 1, address: str | None = None, cpus_per_cell: int = 1,
         gpus_per_cell: float = 0.0, where: str = "[resources]") -> Executor:
    """``local`` with jobs == 1 runs in this process; ``local`` with more uses worker processes; ``ray`` uses Ray."""
    if kind == "ray":
        return RayTasks(cpus_per_cell, gpus_per_cell, address, where)
    if kind != "local":
        raise ValueError(f"unknown executor {kind!r}; choose local or ray")
    return InProcess() if jobs == 1 else LocalProcesses(jobs)
