"""The engine thread survives a failing step: the requests that step was running end with finish_reason "error",
the requests still waiting run afterwards and answer as they would have."""
import threading

from dsv4.engine import Engine, EngineConfig, SamplingParams
from dsv4.engine.loop import EngineLoop
from tiny_models import random_model
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)

GREEDY = SamplingParams(temperature=0, max_tokens=6)


def test_a_failing_step_ends_only_the_requests_it_was_running():
    model = random_model(seed=2)
    alone = Engine(model, EngineConfig(eos_ids=frozenset()))  # the second request's answer, run by itself
    plain = alone.add([9, 8, 7, 6], GREEDY)
    while alone.has_work():
        alone.step()
    engine = Engine(model, EngineConfig(max_running=1, eos_ids=frozenset()))

    real, calls = engine.runner.forward, []

    def failing_once(*args, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected failure")
        return real(*args, **kw)

    engine.runner.forward = failing_once
    done = {}
    finished = threading.Event()

    def listener(name):
        def hear(event):
            done.setdefault(name, []).append(event)
            if event.finish_reason is not None and len([n for n in done if done[n][-1].finish_reason]) == 2:
                finished.set()
        return hear

    loop = EngineLoop(engine)
    try:
        loop.submit([1, 2, 3], GREEDY, listener("first"))   # runs first (max_running=1) and meets the failure
        loop.submit([9, 8, 7, 6], GREEDY, listener("second"))  # waits, then runs normally
        assert finished.wait(60)
    finally:
        loop.close()
    assert [e.finish_reason for e in done["first"]] == ["error"]
    assert [e.token for e in done["second"]] == plain.output and done["second"][-1].finish_reason == "length"
