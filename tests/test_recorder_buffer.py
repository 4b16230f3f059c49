"""The recorder's row buffer (``Recorder.record`` appends a request's values, ``flush`` moves them
into the typed columns): the columns and per-pool counts must be what one append per column and
one count per end gave, across flush boundaries and whichever way they are read."""
from __future__ import annotations

import math

import numpy as np

from agentsim.results.metrics import FLOAT_COLUMNS, INT_COLUMNS, OUTCOME_CODE, Recorder
from agentsim.serving.request import OUTCOMES, Request


def _requests(n: int, n_replicas: int) -> list[Request]:
    rng = np.random.default_rng(11)
    out = []
    for i in range(n):
        r = Request(i, float(rng.random() * 100), int(rng.integers(1, 5000)), int(rng.integers(1, 900)),
                    session=int(rng.integers(-1, 50)), tenant=int(rng.integers(-1, 5)), user=int(rng.integers(-1, 9)),
                    stream=int(rng.integers(-1, 3)), population=int(rng.integers(-1, 3)), priority=int(rng.integers(0, 3)))
        r.replica = int(rng.integers(-1, n_replicas))
        r.outcome = OUTCOMES[int(rng.integers(0, len(OUTCOMES) - 1))]      # not in_flight
        r.call, r.attempt, r.trigger = i // 2, i % 3, i % 4
        r.cached_gpu, r.cached_host, r.prefill_tokens, r.preemptions = i % 7, i % 5, i % 11, i % 2
        r.ready, r.admitted, r.first_token, r.finish = r.arrival + 0.1, r.arrival + 0.2, r.arrival + 0.3, math.nan
        r.retry_after = float(i % 13)
        out.append(r)
    return out


def _expected(reqs, pool_of_replica, n_pools):
    """One append per column, one count per end: the recorder as it was before the buffer."""
    attr = {"request_id": "rid", "call_id": "call", "input_tokens": "prompt", "output_tokens": "output",
            "cached_gpu_tokens": "cached_gpu", "cached_host_tokens": "cached_host", "arrival_s": "arrival",
            "ready_s": "ready", "admitted_s": "admitted", "first_token_s": "first_token", "finish_s": "finish",
            "retry_after_s": "retry_after"}
    cols = {}
    for c in INT_COLUMNS + FLOAT_COLUMNS:
        if c == "pool":
            cols[c] = [pool_of_replica[r.replica] if r.replica >= 0 else -1 for r in reqs]
        elif c == "outcome":
            cols[c] = [OUTCOME_CODE[r.outcome] for r in reqs]
        else:
            cols[c] = [getattr(r, attr.get(c, c)) for r in reqs]
    counts = [[0, 0, 0] for _ in range(n_pools)]
    for r in reqs:
        if r.replica >= 0 and r.outcome != "in_flight":
            counts[pool_of_replica[r.replica]][1 if r.outcome == "completed" else 2] += 1
    return cols, counts


def test_buffered_rows_give_the_columns_and_counts_of_one_append_per_column():
    pool_of_replica = [0, 0, 1, 2, 2, 2]
    reqs = _requests(2 * Recorder.FLUSH_ROWS + 123, len(pool_of_replica))
    rec = Recorder(pool_of_replica, 3)
    seen = []
    for i, r in enumerate(reqs):
        rec.ended(r)
        if i % 1000 == 999:                   # the sampler reads the counts mid-buffer
            seen.append([list(c) for c in rec.pool_counts])
            assert seen[-1] == _expected(reqs[:i + 1], pool_of_replica, 3)[1]
    late = _requests(7, len(pool_of_replica))
    for r in late:
        r.outcome = "in_flight"
        rec.record(r)                         # still open at the end: a row, not an end
    cols, counts = _expected(reqs + late, pool_of_replica, 3)
    assert rec.pool_counts == counts and rec.count == len(reqs) + len(late)
    got = rec.columns()
    assert set(got) == set(cols)
    for c, v in cols.items():
        np.testing.assert_array_equal(got[c], np.asarray(v, dtype=got[c].dtype), err_msg=c)


def test_record_reads_the_attributes_its_columns_name():
    """record() reads the attributes inline; they must be those of ``_row`` (the column order) in order."""
    rec = Recorder([0], 1)
    r = _requests(1, 1)[0]
    rec.record(r)
    assert tuple(rec._rows) == rec._row(r)
