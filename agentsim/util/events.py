"""The one home of what agentsim does below SimPy's public API, and why.

Callbacks instead of processes: a request's timers, arrivals and deadlines are plain triggered
events with one callback, pushed exactly as ``env.schedule(event, NORMAL, delay)`` pushes them
(same time, priority and id, so same-time events keep their order) but without building a
``Timeout`` or a generator per event — the engine's benchmarks measure a few microseconds per
event saved. SimPy has no public "already succeeded, fire later" event, so ``_ok``/``_value`` are
set here. The event-skipping engine's two hot-path helpers (:func:`_push`, :func:`_move_earlier`) are
here too: they read SimPy's queue and id counter directly. So is :class:`Environment`, SimPy's
environment with its event loop inlined and ``now`` a plain attribute. No other module of agentsim
touches a private SimPy attribute (``tests/test_layers.py`` greps the package for them).
"""
from __future__ import annotations

import math
from heapq import _siftdown, heappop, heappush

import simpy
from simpy.core import EmptySchedule, StopSimulation
from simpy.events import NORMAL, URGENT, Event, Timeout

_new_event = object.__new__


#: a queue key after every entry (``run()`` without ``until`` runs while the queue is not empty)
_AFTER_ALL = (math.inf, math.inf, math.inf)


class Environment(simpy.Environment):
    """SimPy's environment, the same events in the same order, with less Python work per event.

    ``env.now`` is read several times per event all over the simulator, and SimPy makes it a
    property over ``_now`` (a function call per read); here it is a plain attribute, written with
    ``_now`` wherever SimPy writes ``_now``. ``run()`` and ``run(until=t)`` pop events in a loop
    instead of calling ``step()`` per event; ``run(until=t)`` stops where SimPy's own until event
    would: it takes the ids SimPy would give that event (so the event counter is the same) and runs
    every entry that sorts before ``(t, URGENT, id)``. A ``StopSimulation`` raised by a callback ends
    the run as in SimPy. ``timeout`` builds SimPy's ``Timeout`` without its constructor. With a
    ``step`` set on the instance (a test's probe around every event) ``run`` is SimPy's own.
    Measured on the agents workload: 2-4 % less CPU for the loop and ``now``, about as much again
    for ``timeout`` and ``run()`` without ``until``; tests/test_environment.py holds it to SimPy.
    """

    now = 0.0       # shadows SimPy's property: the instance attribute below is read instead

    def __init__(self, initial_time: float = 0.0) -> None:
        super().__init__(initial_time)
        self.now = initial_time
        # SimPy binds its event factories to the instance only for names in the instance's own class
        # dict: a subclass must do it for those it inherits, or each ``env.process`` builds a method
        for name in ("process", "event", "all_of", "any_of"):
            setattr(self, name, getattr(self, name))

    def timeout(self, delay: float = 0, value=None) -> Timeout:
        """``Timeout(self, delay, value)``: the same event (class, attributes, queue entry) without
        its constructor and ``schedule`` calls — sessions wait on one or two per LLM call."""
        if delay < 0:
            raise ValueError(f"Negative delay {delay}")
        ev = _new_event(Timeout)
        ev.env = self
        ev.callbacks = []
        ev._value = value
        ev._delay = delay
        ev._ok = True
        heappush(self._queue, (self._now + delay, NORMAL, next(self._eid), ev))
        return ev

    def step(self) -> None:
        """SimPy's ``step``, setting ``now`` with ``_now`` (``run`` below does not call it)."""
        try:
            t, _, _, event = heappop(self._queue)
        except IndexError:
            raise EmptySchedule from None
        self._now = self.now = t
        callbacks, event.callbacks = event.callbacks, None
        try:
            for callback in callbacks:
                callback(event)
        except StopSimulation:
            event.callbacks = callbacks[callbacks.index(callback) + 1:]
            self.schedule(event, URGENT)
            raise
        if not event._ok and not hasattr(event, "_defused"):
            raise _failure(event)

    def run(self, until=None):
        if isinstance(until, Event) or "step" in self.__dict__:
            return super().run(until)       # SimPy's loop: a probe set on the instance sees every step
        if until is None:                       # to the last event
            at, stop = None, _AFTER_ALL
        else:
            at = until if isinstance(until, int) else float(until)
            if at <= self._now:
                raise ValueError(f"until ({at}) must be greater than the current simulation time")
            stop = (at, URGENT, next(self._eid))    # the key SimPy's until event would have on the queue
        queue = self._queue
        try:
            while queue and queue[0] < stop:    # ids are unique: the comparison never reaches the event
                t, _, _, event = heappop(queue)
                self._now = self.now = t
                callbacks, event.callbacks = event.callbacks, None
                for callback in callbacks:
                    callback(event)
                if not event._ok and not hasattr(event, "_defused"):
                    raise _failure(event)
        except StopSimulation as exc:
            event.callbacks = callbacks[callbacks.index(callback) + 1:]
            self.schedule(event, URGENT)
            return exc.args[0]
        return self._stopped(at)

    def _stopped(self, at) -> None:
        """The end of a run that reached time ``at`` (None: ran out of events) as SimPy leaves it."""
        if at is not None:
            self._now = self.now = at
            next(self._eid)     # SimPy re-schedules its until event when it stops the run: one more id


def _failure(event) -> BaseException:
    """What SimPy raises for a failed event nobody defused: a copy of its exception, caused by it."""
    exc = type(event._value)(*event._value.args)
    exc.__cause__ = event._value
    return exc


def call_later(env, delay: float, callback, value=None) -> Timer:
    """Fire ``callback(timer)`` after ``delay`` s (``timer.value`` is ``value``); returns the :class:`Timer`."""
    return _push(env, callback, value, delay)[3]      # the entry env.schedule(ev, NORMAL, delay) pushes


def events_scheduled(env) -> int:
    """Events scheduled so far (SimPy's id counter): the deterministic cost measure of a run."""
    return int(repr(env._eid)[6:-1])   # itertools.count(n) -> "count(n)"


# -- the event-skipping engine's timer, pushed and moved on the queue itself -----------------------
class Timer:
    """What SimPy's event loop reads of a triggered event (``callbacks``, ``_ok``, ``_value``), in
    slots: a callback's timer needs no more. Why: an ``Event`` carries an instance dict, and with a
    thousand replicas each timer's dict is a cold cache line or two per event (measured with the
    engine benchmark's 1,024-replica row). Not for yielding from a process (use ``env.timeout``)."""

    __slots__ = ("env", "callbacks", "_ok", "_value")

    @property
    def value(self):
        return self._value

    @property
    def ok(self) -> bool:       # read by StopSimulation.callback
        return self._ok


def _push(env, callback, value, delay: float) -> tuple:
    """Schedule a :class:`Timer` calling ``callback(timer)`` after ``delay`` s, exactly as
    ``env.schedule(event, NORMAL, delay)`` would (same time, priority and id), without its call
    overhead; returns the queue entry ``(time, priority, id, timer)``."""
    ev = _new_event(Timer)         # no __init__ call: its four slots are set here
    ev.env = env
    ev.callbacks = [callback]
    ev._ok = True
    ev._value = value
    entry = (env._now + delay, NORMAL, next(env._eid), ev)
    heappush(env._queue, entry)
    return entry


#: longest SimPy queue in which a timer is moved rather than re-armed: finding its entry scans the
#: queue (~35 ns an entry), and past a few dozen entries one stale pop (~3 us) is cheaper. Dropping
#: the stale entries from longer queues (a scan and re-heapify whenever the queue had doubled) was
#: measured and not kept: at 1,024 replicas it cost more than the smaller heap saved (CPU time per
#: request 33.6-34.7 us with it, 28.1-34.0 us without; there the cost is the engine's own work on
#: a working set of ~1,000 replicas, not the heap)
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
