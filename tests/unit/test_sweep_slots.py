"""The sweep's trial slots (`ftray.slots`): a trial waits while `sweep.max_concurrent` others
train, a resumed holder keeps its slot, a slot given back lets the next trial in, and a
restored experiment without the releasing callback gets it
(tests/integration/test_sweep.py checks that resumed trials take turns on a real Ray)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from ftray.slots import ReleaseSlots, Slots, keep_releasing


def test_a_trial_waits_for_a_slot_and_a_holder_keeps_its_own():
    async def scenario():
        slots = Slots(2)
        await slots.acquire("a")
        await slots.acquire("b")
        waiting = asyncio.create_task(slots.acquire("c"))
        await asyncio.sleep(0.3)
        assert not waiting.done(), "two slots, both held"
        await asyncio.wait_for(slots.acquire("a"), 1)  # a resumed holder does not wait
        assert not waiting.done()
        await slots.release("b")
        await asyncio.wait_for(waiting, 2)
        assert slots.holders == {"a", "c"}
        await slots.release("b")  # giving back twice (the trial and the driver) is harmless
        assert slots.holders == {"a", "c"}

    asyncio.run(scenario())


def test_a_restored_experiment_gets_the_releasing_callback_once():
    other = object()
    run_config = SimpleNamespace(callbacks=[other])
    tuner = SimpleNamespace(_local_tuner=SimpleNamespace(get_run_config=lambda: run_config))
    keep_releasing(tuner, "ftray-sweep-slots-x")
    keep_releasing(tuner, "ftray-sweep-slots-x")
    assert run_config.callbacks[0] is other
    assert [c.name for c in run_config.callbacks[1:]] == ["ftray-sweep-slots-x"]
    assert isinstance(run_config.callbacks[1], ReleaseSlots)
    empty = SimpleNamespace(callbacks=None)
    keep_releasing(SimpleNamespace(_local_tuner=SimpleNamespace(get_run_config=lambda: empty)), "n")
    assert len(empty.callbacks) == 1
