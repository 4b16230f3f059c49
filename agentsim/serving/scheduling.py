"""A replica's scheduler limits and its waiting-queue disciplines (shared by both engines)."""
from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

from ..util.errors import InputError
from .request import Request

#: two times within ``EPS·max(1, t)`` s count as the same instant (an arrival at a step boundary)
EPS = 1e-9


@dataclass(frozen=True)
class EngineConfig:
    """Scheduler limits of one replica (vLLM V1 defaults: see :func:`default_engine_config`)."""

    kv_capacity: int
    max_batch: int = 256
    token_budget: int = 8192
    admission: str = "fcfs"
    chunked_prefill: bool = True   # False: a prompt waits for a step with room for all of it (TensorRT-LLM's
                                   # default); a prompt longer than token_budget is still chunked

    def __post_init__(self) -> None:
        if self.token_budget < 1:
            raise InputError(f"engine.token_budget must be >= 1, got {self.token_budget}")
        if self.max_batch < 1:
            raise InputError(f"engine.max_batch must be >= 1, got {self.max_batch}")
        if self.kv_capacity < 1:
            raise InputError(f"engine.kv_capacity must be >= 1 token, got {self.kv_capacity}")
        if self.admission not in ADMISSION_POLICIES:
            raise InputError(f"engine.admission {self.admission!r} unknown; allowed: {', '.join(ADMISSION_POLICIES)}")


class PriorityQueue:
    """Waiting queue ordered by (priority, arrival order); lower priority values go first.

    Same interface as the ``deque`` used for FCFS. A preempted request goes back ahead of every
    request of its priority.
    """

    __slots__ = ("_heap", "_n", "_front")

    def __init__(self) -> None:
        self._heap: list = []
        self._n = 0
        self._front = 0

    def append(self, req: Request) -> None:
        self._n += 1
        heapq.heappush(self._heap, (req.priority, self._n, req))

    def appendleft(self, req: Request) -> None:
        self._front -= 1
        heapq.heappush(self._heap, (req.priority, self._front, req))

    def popleft(self) -> Request:
        return heapq.heappop(self._heap)[2]

    def __getitem__(self, i: int) -> Request:
        if i != 0:
            raise IndexError("only the head is visible")
        return self._heap[0][2]

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self):
        return (e[2] for e in sorted(self._heap))

    def remove(self, req: Request) -> None:
        self._heap = [e for e in self._heap if e[2] is not req]
        heapq.heapify(self._heap)


ADMISSION_POLICIES = {"fcfs": deque, "priority": PriorityQueue}
