"""Dask worker preload (``distributed.worker.preload: [flows.dask_worker]`` in a cluster spec's
``dask_config``): a worker process that has closed ends without tearing down its interpreter.

Why (measured, prefect 3.8.8 / distributed on this 2-core machine, ``docs/per_sensor.md``): a
LocalCluster's close waits for each spawned worker process to exit, and a spawned process exits
through Python's finalization, which frees every module and object it holds: Prefect, pydantic,
astropy, photutils, and the image-size buffers that ``deploy/dask/local.yaml``'s malloc settings
keep. With Prefect in the workers that took 0.56-0.69 s per worker (4 trivial task runs; 0.2 s
for Dask alone) and ~1.4 s after a 20-image ``tomoe`` build, while the cores had nothing else to
do. With this preload: 0.05-0.07 s (Dask alone 0.03 s).

What still runs, in Python's order: the worker's own close (its plugins torn down, its comms and
executor closed), multiprocessing's finalizers, ``threading._shutdown`` (where Prefect drains its
events and log workers to the server), and every ``atexit`` handler (logging's flush among them,
and ``weakref.finalize`` objects registered with ``atexit=True``); then stdout and stderr are
flushed and the process ends with ``os._exit(0)``. What is skipped is the freeing of objects and
modules at finalization (``__del__`` of objects still alive then does not run). The exit code is 0:
the one a worker process returns after every close, except where Dask's process wrapper re-raises
an exception after the close, which this reports as 0 too. A worker that never closed (killed,
crashed, ``fail_hard``'s own ``os._exit(1)``) is not touched: the handler is registered by the
plugin's ``teardown``, which runs inside ``Worker.close``.
"""

from __future__ import annotations

import atexit
import os
import sys

from distributed import WorkerPlugin


def _exit_without_finalization() -> None:
    """The first ``atexit`` handler to run (it is registered last): run the others, flush, exit."""
    atexit.unregister(_exit_without_finalization)
    atexit._run_exitfuncs()  # the remaining handlers, last registered first, as Python would
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: nothing left to flush
            pass
    os._exit(0)


class ExitWithoutFinalization(WorkerPlugin):
    """Registers the fast exit when the worker closes (``Worker.close`` runs its plugins' teardown)."""

    name = "rbflow-exit-without-finalization"

    def teardown(self, worker) -> None:
        atexit.register(_exit_without_finalization)


async def dask_setup(worker) -> None:
    """Dask's preload hook, called in each worker process as it starts."""
    await worker.plugin_add(ExitWithoutFinalization())
