"""At most `sweep.max_concurrent` sweep trials train at once, also when a sweep resumes.

Tune starts every errored trial at once when it resumes an experiment with
`resume_errored`, past the search algorithm's own concurrency limit (ray-project/ray#40652),
and a trial asks Ray for almost nothing (its Train workers hold the CPUs), so Ray's resources
do not hold them back either. Each trial therefore waits for a slot from a `Slots` actor
named after its sweep before it trains, and gives it back when it ends; the driver gives back
the slot of a trial Tune reports ended in any other way (stopped by ASHA, errored, killed),
since such a trial may not run its own `finally`.
"""

from __future__ import annotations

import asyncio

import ray
from ray import tune


class Slots:
    """The trials holding a slot (a Ray actor in a sweep; a plain object in unit tests)."""

    def __init__(self, size: int):
        self.size = size
        self.holders: set[str] = set()

    async def acquire(self, trial_id: str) -> None:
        """Wait until a slot is free (a trial holding one already, resumed in a new
        process, keeps it)."""
        while trial_id not in self.holders and len(self.holders) >= self.size:
            await asyncio.sleep(0.1)
        self.holders.add(trial_id)

    async def release(self, trial_id: str) -> None:
        self.holders.discard(trial_id)


class ReleaseSlots(tune.Callback):
    """Gives back the slot of each trial Tune reports ended. Holds the actor's name, not a
    handle: Tune pickles its callbacks with the experiment, and a resumed sweep's driver
    starts a new actor of the same name."""

    def __init__(self, name: str):
        self.name = name

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        ray.get_actor(self.name).release.remote(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        ray.get_actor(self.name).release.remote(trial.trial_id)


def start(sweep_id: str, size: int):
    """The sweep's slots actor, named after the sweep (it ends with the driver)."""
    name = f"ftray-sweep-slots-{sweep_id}"
    return name, ray.remote(num_cpus=0)(Slots).options(name=name).remote(size)


def keep_releasing(tuner, name: str) -> None:
    """A restored experiment's callbacks are those pickled with it: a sweep started before
    the slots existed gets its `ReleaseSlots` here (Tune has no public way to add one)."""
    run_config = tuner._local_tuner.get_run_config()
    if not any(isinstance(c, ReleaseSlots) for c in run_config.callbacks or []):
        run_config.callbacks = [*(run_config.callbacks or []), ReleaseSlots(name)]


def acquire(name: str, trial_id: str) -> None:
    """Wait for a slot of the sweep's `Slots` actor `name` (in a trial)."""
    ray.get(ray.get_actor(name).acquire.remote(trial_id))


def release(name: str, trial_id: str) -> None:
    """Give the slot back (in a trial, as it ends)."""
    ray.get_actor(name).release.remote(trial_id)
