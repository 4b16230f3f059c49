"""The one home of what agentsim does below SimPy's public API, and why.

Callbacks instead of processes: a request's timers, arrivals and deadlines are plain triggered
events with one callback, pushed exactly as ``env.schedule(event, NORMAL, delay)`` pushes them
(same time, priority and id, so same-time events keep their order) but without building a
``Timeout`` or a generator per event — the engine's benchmarks measure a few microseconds per
event saved. SimPy has no public "already succeeded, fire later" event, so ``_ok``/``_value`` are
set here. The event-skipping engine's two hot-path helpers (push and move a timer) live beside its
loop in ``agentsim.serving.engine`` and follow the same rules.
"""
from __future__ import annotations

from simpy.events import NORMAL, Event


def call_later(env, delay: float, callback, value=None) -> Event:
    """Fire ``callback(event)`` after ``delay`` s (``event.value`` is ``value``); returns the event."""
    ev = Event(env)
    ev._ok = True
    ev._value = value
    ev.callbacks.append(callback)
    env.schedule(ev, NORMAL, delay)
    return ev


def events_scheduled(env) -> int:
    """Events scheduled so far (SimPy's id counter): the deterministic cost measure of a run."""
    return int(repr(env._eid)[6:-1])   # itertools.count(n) -> "count(n)"
