"""Prefect's DaskTaskRunner, with the run's settings sent to the workers once serialized.

Why (measured with Prefect 3.8.8 / prefect-dask 0.3.7 on this 2-core machine, cProfile of
100 submissions, ``docs/per_sensor.md``): every task submission calls Prefect's
``serialize_context()``, and 53 of its 59 ms of flow-process CPU are
``SettingsContext.serialize()``, a recursive dump of ~530 nested settings models with a
secret-rendering pass over each; then the worker rebuilds ``Settings`` from that dict, which
makes pydantic-settings read the environment for each of ~54 nested models (~25 ms). On two
cores shared with the workers that is ~80 ms of CPU taken from the sensor images per task run.

The settings of a context do not change while it is current (Prefect makes a new
``SettingsContext`` for new settings), and Prefect's own ``ProcessPoolTaskRunner`` serializes
the context once per runner for this reason. Here, while a task is submitted, the current
``SettingsContext`` is stood in for by a copy whose ``serialize()`` returns the profile dumped
once and the ``Settings`` object itself (it pickles in 0.3 ms, 10 kB); the worker's
``hydrated_context`` then takes that object as it is (pydantic keeps a model instance
without re-validating it) instead of rebuilding it. Everything else of
``serialize_context()`` (flow run, tags, assets, deployment) is Prefect's, per task, unchanged.
Flow-process CPU per submission: 60 -> 14 ms; and Dask is given the task's key (else it
tokenizes the task and its context, 11 ms). ``ship_settings = False`` gives Prefect's behaviour.
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

from prefect.context import SettingsContext
from prefect_dask import DaskTaskRunner as _PrefectDaskTaskRunner
from prefect_dask.task_runners import PrefectDaskFuture
from pydantic import PrivateAttr


class _ShippedSettingsContext(SettingsContext):
    """The current settings context, whose serialization was made once."""

    _profile_dump: dict | None = PrivateAttr(None)

    def serialize(self, include_secrets: bool = True) -> dict[str, Any]:
        if not include_secrets or self._profile_dump is None:  # not what a submission asks: Prefect's dump
            return super().serialize(include_secrets=include_secrets)
        return {"profile": self._profile_dump, "settings": self.settings}


class DaskTaskRunner(_PrefectDaskTaskRunner):
    """prefect_dask.DaskTaskRunner whose submissions send the run's ``Settings`` object once
    serialized (see the module's docstring for what it saves and why it is safe)."""

    ship_settings: bool = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shipped: tuple[SettingsContext, SettingsContext] | None = None

    def _stand_in(self, current: SettingsContext) -> SettingsContext:
        if self._shipped is None or self._shipped[0] is not current:
            stand_in = _ShippedSettingsContext(profile=current.profile, settings=current.settings)
            stand_in._profile_dump = SettingsContext.serialize(current)["profile"]
            self._shipped = (current, stand_in)
        return self._shipped[1]

    def __getstate__(self) -> dict:  # the flow pickles its runner into each task's context
        state = dict(self.__dict__)
        state["_shipped"] = None
        return state

    def submit(self, task, parameters, wait_for=None, dependencies=None):
        current = SettingsContext.get()
        if not self.ship_settings or current is None:
            return super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)
        token = SettingsContext.__var__.set(self._stand_in(current))
        try:
            return self._submit(task, parameters, wait_for, dependencies)
        finally:
            SettingsContext.__var__.reset(token)

    def _submit(self, task, parameters, wait_for, dependencies):
        """prefect_dask's submit with a key given: Dask would otherwise tokenize the task and its
        context to name it (11 ms per submission, measured); the run id makes it unique anyway."""
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        parameters = self._optimize_futures(parameters)
        wait_for = self._optimize_futures(wait_for) if wait_for else None
        future = self.client.submit(task, key=f"{task.name}-{uuid4().hex}", parameters=parameters,
                                    wait_for=wait_for, dependencies=dependencies, return_type="state")
        return PrefectDaskFuture(wrapped_future=future, task_run_id=future.task_run_id)
