"""The one home of what agentsim does below SimPy's public API, and why.

Callbacks instead of processes: a request's timers, arrivals and deadlines are plain triggered
events with one callback, pushed exactly as ``env.schedule(event, NORMAL, delay)`` pushes them
(same time, priority and id, so same-time events keep their order) but without building a
``Timeout`` or a generator per event — the engine's benchmarks measure a few microseconds per
event saved. SimPy has no public "already succeeded, fire later" event, so ``_ok``/``_value`` are
set here. The event-skipping engine's two hot-path helpers (:func:`_push`, :func:`_move_earlier`) are
here too: they read SimPy's queue and id counter directly. No other module of agentsim touches a
private SimPy attribute (``tests/test_layers.py`` greps the package for them).
"""
from __future__ import annotations

from heapq import _siftdown, heapify, heappush

from simpy.events import NORMAL, Event

_new_event = object.__new__


def call_later(env, delay: float, callback, value=None) -> Event:
    """Fire ``callback(event)`` after ``delay`` s (``event.value`` is ``value``); returns the event."""
    return _push(env, callback, value, delay)[3]      # the entry env.schedule(ev, NORMAL, delay) pushes


def events_scheduled(env) -> int:
    """Events scheduled so far (SimPy's id counter): the deterministic cost measure of a run."""
    return int(repr(env._eid)[6:-1])   # itertools.count(n) -> "count(n)"


# -- the event-skipping engine's timer, pushed and moved on the queue itself -----------------------
def _push(env, callback, value, delay: float) -> tuple:
    """Schedule an event calling ``callback(event)`` after ``delay`` s, exactly as
    ``env.schedule(event, NORMAL, delay)`` would (same time, priority and id), without its call
    overhead; returns the queue entry ``(time, priority, id, event)``."""
    ev = _new_event(Event)         # Event(env) without its __init__ call: the same four attributes
    ev.env = env
    ev.callbacks = [callback]
    ev._ok = True
    ev._value = value
    entry = (env._now + delay, NORMAL, next(env._eid), ev)
    queue = env._queue
    if len(queue) > COMPACT_MIN_QUEUE:
        _maybe_compact(env, queue)     # before the push: the caller has not yet recorded this event as live
    heappush(queue, entry)
    return entry


# -- stale timers out of the queue ---------------------------------------------------------------
#: a callback name -> the attribute of its object that holds the one live event for it: an event
#: whose callback is ``obj._on_timer`` is stale unless ``obj._timer`` is that event (the engine's
#: rule: ``Replica._on_timer``/``_on_wake`` return at once on any other event, so such an entry
#: does nothing when it pops but cost its pop and weigh on every push and pop before it)
STALE_UNLESS = {"_on_timer": "_timer", "_on_wake": "_wake"}
#: queues up to this long are never searched for stale entries (one replica's queue holds a few)
COMPACT_MIN_QUEUE = 256


def _maybe_compact(env, queue: list) -> None:
    """Drop stale timers once the queue has doubled since the last compaction (amortised O(1)
    a push). Pop order is unchanged: the entries left are the same unique (time, priority, id)
    keys, and a stale one, had it popped, would have changed nothing but its own pop."""
    limit = env.__dict__.get("_agentsim_compact_at", COMPACT_MIN_QUEUE)
    if len(queue) <= limit:
        return
    compact(queue)
    env._agentsim_compact_at = max(COMPACT_MIN_QUEUE, 2 * len(queue))


def compact(queue: list) -> int:
    """Remove the stale timer entries of ``queue`` (see :data:`STALE_UNLESS`) in place, keeping
    it a heap; returns how many were removed."""
    keep = []
    for entry in queue:
        ev = entry[3]
        cbs = ev.callbacks
        if cbs is not None and len(cbs) == 1:
            cb = cbs[0]
            attr = STALE_UNLESS.get(getattr(cb, "__name__", None))
            if attr is not None:
                owner = getattr(cb, "__self__", None)
                if owner is not None and getattr(owner, attr, ev) is not ev:
                    continue
        keep.append(entry)
    dropped = len(queue) - len(keep)
    if dropped:
        queue[:] = keep
        heapify(queue)
    return dropped


#: longest SimPy queue in which a timer is moved rather than re-armed: finding its entry scans the
#: queue (~35 ns an entry), and past a few dozen entries one stale pop (~3 us) is cheaper
MOVE_MAX_QUEUE = 32


def _move_earlier(env, entry: tuple, delay: float) -> tuple | None:
    """Move a pending event to ``now + delay`` if that is earlier than its time: its queue entry is
    replaced in place by the entry ``env.schedule`` would push for it now (a new id, so same-time
    events keep their order), and none is left behind to pop as a stale timer. Returns the new
    entry, or None (not earlier, not in the queue, or the queue too long to search) and the caller
    schedules anew."""
    t = env._now + delay
    queue = env._queue
    if not t < entry[0] or len(queue) > MOVE_MAX_QUEUE:
        return None
    try:
        i = queue.index(entry)     # identity matches first; entries' ids are unique
    except ValueError:
        return None
    new = (t, NORMAL, next(env._eid), entry[3])
    queue[i] = new
    _siftdown(queue, 0, i)         # a smaller key only moves towards the root
    return new
