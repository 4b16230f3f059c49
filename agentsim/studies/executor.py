"""One executor for every study: sweeps, capacity searches, slices and experiments.

:func:`open_executor` gives a ``concurrent.futures.Executor``: a Dask distributed cluster when
``address`` names its scheduler, this process when ``workers`` is 0, else a local process pool
(``workers`` processes, default one per CPU). :func:`run_all` maps a module-level function over
tasks on it, results in task order.

Results do not depend on the executor: a task is a pure function of its arguments (a scenario
and a seed), and results are put back in task order, so the same seeds give bit-identical
results in this process, on a pool of any size, or on Dask.

The pool starts its workers with ``forkserver`` (``spawn`` where that is missing) — never
``fork``, which would copy this process's threads and state — so a script using it needs the
usual ``if __name__ == "__main__":`` guard. Pool workers ignore Ctrl-C: the parent decides
what to cancel and keeps what finished.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import signal
import threading

from ..util.errors import InputError


class InlineExecutor(cf.Executor):
    """Runs each task in this process when it is submitted (``workers = 0``)."""

    def submit(self, fn, /, *args, **kwargs):
        f: cf.Future = cf.Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except Exception as e:  # noqa: BLE001 - handed to the caller through the future
            f.set_exception(e)
        return f


def default_workers() -> int:
    """One worker per CPU."""
    return max(1, os.cpu_count() or 1)


def _ignore_sigint() -> None:
    """Pool workers leave Ctrl-C to the parent, which cancels the work and keeps what finished."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def process_pool(workers: int) -> cf.ProcessPoolExecutor:
    """A local pool of ``workers`` processes started by ``forkserver`` (``spawn`` where missing)."""
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method),
                                  initializer=_ignore_sigint)


def dask_client(address: str, connect_timeout: float = 10.0):
    """A ``distributed.Client`` for the scheduler at ``address``; an InputError if unreachable."""
    try:
        from distributed import Client  # local: optional dependency (the 'dask' extra), ~380 ms
    except ImportError:
        raise InputError(f"--address {address}: Dask is not installed (pip install 'agentsim[dask]')") from None
    try:
        return Client(address, timeout=connect_timeout, set_as_default=False)
    except Exception as e:  # noqa: BLE001 - any failure to connect is the user's address
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"--address {address}: no Dask scheduler reachable within {connect_timeout:g} s "
                         f"({msg})") from None


class Executor:
    """An executor opened on first use and closed with the ``with`` block.

    ``executor`` (any ``concurrent.futures.Executor``) is used as given and never shut down here;
    else ``address`` opens a Dask client, ``workers == 0`` runs inline, and anything else opens a
    process pool of ``workers`` processes (default one per CPU, at most ``max_workers``).
    """

    def __init__(self, executor: cf.Executor | None = None, address: str | None = None,
                 workers: int | None = None, connect_timeout: float = 10.0) -> None:
        if workers is not None and workers < 0:
            raise InputError(f"--workers must be >= 0, got {workers}")
        self.given, self.address, self.workers, self.connect_timeout = executor, address, workers, connect_timeout
        self.executor: cf.Executor | None = executor
        self.client = None

    @property
    def inline(self) -> bool:
        return isinstance(self.executor, InlineExecutor)

    @property
    def remote(self) -> bool:
        """Dask or an executor passed in: no local bound on tasks in flight."""
        return self.client is not None or self.given is not None

    def open(self, max_workers: int | None = None) -> cf.Executor:
        """The executor, opened now if it is not yet (a Dask address is checked here)."""
        if self.executor is None:
            if self.address:
                self.client = dask_client(self.address, self.connect_timeout)
                self.executor = self.client.get_executor(pure=False)
            elif self.workers == 0:
                self.executor = InlineExecutor()
            else:
                n = self.workers or default_workers()
                self.executor = process_pool(min(n, max_workers) if max_workers else n)
        return self.executor

    def close(self, interrupted: bool = False) -> None:
        """Shut down what this object opened; after an interrupt, without waiting for running tasks."""
        ex, self.executor = self.executor, None
        if ex is not None and ex is not self.given:
            if isinstance(ex, cf.ProcessPoolExecutor) and interrupted:
                procs = list((getattr(ex, "_processes", None) or {}).values())
                ex.shutdown(wait=False, cancel_futures=True)
                for p in procs:   # the workers this pool started: do not wait for their running tasks
                    p.terminate()
            elif isinstance(ex, cf.ProcessPoolExecutor):
                ex.shutdown(wait=not interrupted, cancel_futures=True)
            else:      # Dask's ClientExecutor: the caller cancelled its futures
                ex.shutdown(wait=not interrupted)
        if self.client is not None:
            self.client.close()
            self.client = None

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, et, ev, tb) -> None:
        self.close(interrupted=et is not None)


def run_all(fn, tasks: list[tuple], workers: int | None = None, address: str | None = None,
            executor: cf.Executor | None = None, connect_timeout: float = 10.0, progress=None) -> list:
    """``[fn(*t) for t in tasks]`` on an :class:`Executor`, in task order.

    ``fn`` must be a module-level function (pool and Dask workers import it by name). With one
    task or ``workers`` <= 1 (and no address or executor) the tasks run in this process.
    ``progress(done, total)`` is called as each task finishes (in whatever order they finish; the
    results still come back in task order).
    """
    local = default_workers() if workers is None else workers
    if executor is None and not address and (len(tasks) <= 1 or local <= 1):
        workers = 0
    with Executor(executor, address, workers, connect_timeout) as ex:
        pool = ex.open(max_workers=len(tasks))
        futures = [pool.submit(fn, *t) for t in tasks]
        if progress is not None:
            lock, done = threading.Lock(), [0]

            def tick(_f) -> None:
                with lock:
                    done[0] += 1
                    progress(done[0], len(futures))
            for f in futures:
                f.add_done_callback(tick)
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
