"""``util.events.Environment`` runs SimPy's events in SimPy's order: the same trace of (time, name)
firings, the same ``now`` seen by every process, the same event counter, for random process mixes
stopped at random ``until`` times (several ``run`` calls in a row), and the same end on a
``StopSimulation`` or a failed event."""
from __future__ import annotations

import math

import pytest
import simpy
from hypothesis import given, settings, strategies as st
from simpy.core import StopSimulation

from agentsim.util.events import Environment, call_later, events_scheduled


def _trace(env, plan, stops):
    """Run processes from ``plan`` (per process: delays, and a child every third step) on ``env``."""
    seen = []

    def proc(name, delays):
        for i, d in enumerate(delays):
            yield env.timeout(d)
            seen.append((env.now, name, i))
            if i % 3 == 2:
                child = env.process(proc(f"{name}.{i}", delays[:2]))
                yield child | env.timeout(d / 2)
        return name

    procs = [env.process(proc(str(k), delays)) for k, delays in enumerate(plan)]
    for k, delays in enumerate(plan):
        call_later(env, delays[0], lambda ev, k=k: seen.append((env.now, f"cb{k}", -1)))
    ends = []
    for t in stops:
        if t > env.now:
            env.run(until=t)
            ends.append((env.now, events_scheduled(env)))
    env.run()
    return seen, ends, env.now, events_scheduled(env), [p.value for p in procs]


delays = st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0]), min_size=1, max_size=7)


@settings(max_examples=120, deadline=None)
@given(plan=st.lists(delays, min_size=1, max_size=6),
       stops=st.lists(st.sampled_from([0.5, 1.0, 1.25, 2.0, 3.0, 4.5, 6.0, 9.0]), max_size=4).map(sorted))
def test_same_firings_clock_and_counter_as_simpy(plan, stops):
    assert _trace(Environment(), plan, stops) == _trace(simpy.Environment(), plan, stops)


def test_now_is_the_clock_inside_callbacks_and_after_run():
    env = Environment(initial_time=1.5)
    seen = []
    call_later(env, 2.0, lambda ev: seen.append((env.now, env._now)))
    env.run(until=10.0)
    assert seen == [(3.5, 3.5)] and env.now == env._now == 10.0
    with pytest.raises(ValueError, match="until"):
        env.run(until=10.0)


@pytest.mark.parametrize("make", [Environment, simpy.Environment])
def test_stop_simulation_ends_the_run_where_simpy_does(make):
    env = make()
    fired = []
    call_later(env, 1.0, lambda ev: fired.append(env.now))
    call_later(env, 2.0, StopSimulation.callback, "stopped")
    call_later(env, 3.0, lambda ev: fired.append(env.now))
    assert env.run(until=5.0) == "stopped"
    assert fired == [1.0] and env.now == 2.0


def test_a_failed_event_crashes_the_run_as_in_simpy():
    for make in (Environment, simpy.Environment):
        env = make()
        ev = env.event()
        ev.fail(RuntimeError("boom"))
        with pytest.raises(RuntimeError, match="boom"):
            env.run(until=1.0)


@pytest.mark.parametrize("make", [Environment, simpy.Environment])
def test_urgent_events_at_the_until_time_run_when_scheduled_before_it(make):
    """SimPy's until event is URGENT too: an urgent event already queued for that moment sorts first."""
    from simpy.events import NORMAL, URGENT
    env = make()
    fired = []
    for prio, name in ((URGENT, "urgent"), (NORMAL, "normal")):
        ev = env.event()
        ev._ok, ev._value = True, name
        ev.callbacks.append(lambda e: fired.append(e.value))
        env.schedule(ev, prio, 5.0)
    env.run(until=5.0)
    assert fired == ["urgent"] and env.now == 5.0


def test_timeout_is_simpys_timeout():
    """Same class, attributes and queue entry as ``simpy.Environment.timeout``; a negative delay refused."""
    ours, ref = Environment(initial_time=1.0), simpy.Environment(initial_time=1.0)
    a, b = ours.timeout(2.5, "v"), ref.timeout(2.5, "v")
    assert type(a) is type(b) and {k: v for k, v in vars(a).items() if k != "env"} == \
        {k: v for k, v in vars(b).items() if k != "env"}
    assert ours._queue[0][:3] == ref._queue[0][:3] == (3.5, 1, 0)
    assert ours.process.__self__ is ours and ours.timeout.__self__ is ours   # bound once, not per access
    for env in (ours, ref):
        with pytest.raises(ValueError, match="Negative delay"):
            env.timeout(-1.0)


def test_a_step_set_on_the_instance_sees_every_event():
    """Probes (tests/test_invariants.py) wrap ``env.step``: they see every step SimPy's loop makes,
    its until events included."""
    def trace(env):
        seen, step = [], env.step

        def probed():
            seen.append(env.peek())
            step()
        env.step = probed
        for d in (0.5, 1.0, 1.0, 2.5):
            call_later(env, d, lambda ev: None)
        env.run(until=2.0)
        env.run()
        return seen, env.now, events_scheduled(env)
    assert trace(Environment()) == trace(simpy.Environment()) == ([0.5, 1.0, 1.0, 2.0, 2.0, 2.5, math.inf], 2.5, 6)
