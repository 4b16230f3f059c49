"""``util.events._push`` builds its event without ``Event.__init__``: the event and its queue entry
must be what ``Event(env)`` with ``env.schedule(event, NORMAL, delay)`` gives."""
from __future__ import annotations

import simpy
from simpy.events import NORMAL, Event

from agentsim.util.events import _push, call_later


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
    assert type(ev) is Event and vars(ev) == vars(ref)
    assert env._queue[0][:3] == (2.5 + 0.1, NORMAL, 0) and entry[:3] == (2.5 + 0.1, NORMAL, 1)
    later = call_later(env, 0.2, cb, "y")
    assert type(later) is Event and later.callbacks == [cb] and later.triggered and not later.processed
    env.run()
    assert fired == [(2.6, "x"), (2.6, "x"), (2.7, "y")] and ev.processed and ev.ok
