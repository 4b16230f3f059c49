"""``util.events._push`` builds a slotted ``Timer`` rather than an ``Event``: what SimPy's loop reads of
it and its queue entry must be what ``Event(env)`` with ``env.schedule(event, NORMAL, delay)`` gives."""
from __future__ import annotations

import simpy
from simpy.events import NORMAL, Event

from agentsim.util.events import Timer, _push, call_later


def test_pushed_event_and_entry_match_a_scheduled_event():
    def cb(ev):
        fired.append((env.now, ev.value))

    fired = []
    env = simpy.Environment(initial_time=2.5)
    ref = Event(env)
    ref._ok, ref._value = True, "x"
    ref.callbacks.append(cb)
    env.schedule(ref, NORMAL, 0.1)
    entry = _push(env, cb, "x", 0.1)
    ev = entry[3]
    assert type(ev) is Timer and {k: getattr(ev, k) for k in Timer.__slots__} == vars(ref)
    assert env._queue[0][:3] == (2.5 + 0.1, NORMAL, 0) and entry[:3] == (2.5 + 0.1, NORMAL, 1)
    later = call_later(env, 0.2, cb, "y")
    assert type(later) is Timer and later.callbacks == [cb] and later.ok
    env.run()
    assert fired == [(2.6, "x"), (2.6, "x"), (2.7, "y")] and ev.callbacks is None and ev.ok
