"""``agentsim capacity``: the bisection, the SLO syntax, and the M/M/c textbook limit.

**The textbook scenario.** One replica whose ``max_batch`` is the number of servers c: admission
is FCFS from one central queue as soon as a batch slot frees, so the replica is an M/G/c queue
(c replicas behind a router would be join-the-shortest-queue instead). A toy catalog makes the
service time batch-independent: a one-layer 64-wide model on a GPU whose 10 ms step overhead
dwarfs every roofline term, so each step takes tau = 10.0000 ms whatever the batch. A request of
K output tokens occupies a slot for K steps (the prefill step yields the first token), and K =
1 + Geometric(mean 99) makes the service time K·tau geometric with mean 1 s and CV² = 0.99: the
discrete cousin of an exponential. Poisson arrivals at 8/s: a = 8 Erlangs.

**Discretisation tolerance.** Admissions and completions happen on step boundaries, so an
arrival that finds a free slot still waits for the running step to end: the measured mean
``queue_s`` exceeds Erlang C's Wq by at most tau/2 = 5 ms (times P(no wait)); the geometric
service changes Wq by about 1 % (CV² 0.99 instead of 1). The SLO bound sits far outside both:
Wq(11) = 0.082 s and Wq(12) = 0.035 s (0.040 s with the 5 ms) around the bound 0.055 s.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest

from agentsim.studies.capacity import Slo, _first_true, capacity, infer_goal, parse_slo
from agentsim.util.errors import InputError

try:
    from agentsim.studies.theory import mmc as _mmc

    def erlang_wq(lam: float, mu: float, c: int) -> float:
        return _mmc(lam, mu, c).Wq
except ImportError:  # theory.py is written elsewhere; the textbook formula is short
    def erlang_wq(lam: float, mu: float, c: int) -> float:
        a = lam / mu
        b = 1.0
        for k in range(1, c + 1):
            b = a * b / (k + a * b)          # Erlang B by its recursion
        p_wait = c * b / (c - a * (1 - b))   # Erlang C
        return p_wait / (c * mu - lam)

TAU = 0.010          # step time (s)
MEAN_K = 100         # mean output tokens = steps per request
MU = 1 / (TAU * MEAN_K)
LAM = 8.0
BOUND = 0.055        # SLO on the mean wait queue_s (s)

from test_sweep import TOY_CATALOG  # noqa: E402  (tests/ is on sys.path: conftest.py)
from cli_helper import cli

MMC = f"""\
name = "mmc"
duration_s = 1000
warmup_s = 100
seed = 1
catalog = ["toy.toml"]
slo_ttft_s = 1000
slo_tpot_s = 1000
[pools.m]
gpu = "ToyGPU"
model = "Toy"
[streams.s]
kind = "poisson"
rate = {LAM}
input_tokens = 1
output_tokens = {{ kind = "geometric", mean = {MEAN_K - 1}, offset = 1 }}
"""




@pytest.fixture(scope="module")
def mmc(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("mmc")
    (d / "toy.toml").write_text(TOY_CATALOG)
    (d / "mmc.toml").write_text(MMC)
    return d / "mmc.toml"


def erlang_servers(bound: float, lam: float = LAM, mu: float = MU) -> int:
    """The smallest c with Erlang C's mean wait <= bound."""
    c = math.floor(lam / mu) + 1
    while erlang_wq(lam, mu, c) > bound:
        c += 1
    return c


def test_capacity_returns_the_erlang_c_server_count(mmc, tmp_path):
    c_star = erlang_servers(BOUND)
    assert c_star == 12 and erlang_wq(LAM, MU, 11) > 1.4 * BOUND and erlang_wq(LAM, MU, 12) + TAU / 2 < 0.75 * BOUND
    code, out, err = cli("capacity", str(mmc), "--slo", f"queue_s<={BOUND}", "--vary", "pools.m.engine.max_batch",
                         "--low", "9", "--high", "16", "-r", "3", "--workers", "2", "--out", str(tmp_path),
                         "--format", "json", "--no-progress")
    assert code == 0, err
    d = json.loads(out)
    assert (d["answer"], d["neighbour"], d["goal"]) == (c_star, c_star - 1, "min")
    assert json.loads((tmp_path / "capacity.json").read_text()) == d
    # every probe agrees with Erlang C within its 95 % interval widened by the 5 ms discretisation
    for p in d["probes"]:
        wq = erlang_wq(LAM, MU, p["value"])
        assert p["queue_s_ci_low"] - TAU / 2 <= wq <= p["queue_s_ci_high"] + TAU / 2, (p, wq)
        assert p["holds"] == (wq <= BOUND)
    assert [p["value"] for p in d["probes"]] == [9, 10, 11, 12]   # from --low up, galloping, then bisecting
    # the table form names the answer and its intervals; the rerun reuses every run
    code, out, err = cli("capacity", str(mmc), "--slo", f"queue_s<={BOUND}", "--vary", "pools.m.engine.max_batch",
                         "--low", "9", "--high", "16", "-r", "3", "--workers", "2", "--out", str(tmp_path),
                         "--no-progress")
    assert code == 0 and "answer: pools.m.engine.max_batch = 12" in out and "at the neighbour" in out, out


def test_capacity_largest_load_matches_erlang_c(mmc):
    """goal max: the largest arrival rate (step 1/s) that 12 servers carry with Wq <= bound."""
    expected = max(lam for lam in (7.0, 8.0, 9.0, 10.0, 11.0) if erlang_wq(lam, MU, 12) <= BOUND)
    res = capacity(mmc, [f"queue_s<={BOUND}"], "streams.s.rate", low=7, high=11, replications=3, workers=2,
                   overrides=["pools.m.engine.max_batch=12"], progress=False)
    assert res.goal == "max" and res.answer == expected == 8.0 and res.neighbour == 9.0
    a, n = res.probe(res.answer).stats["queue_s"], res.probe(res.neighbour).stats["queue_s"]
    assert a[0] <= BOUND < n[0]
    assert [p.value for p in res.probes] == [8.0, 10.0, 9.0]   # from the scenario's rate: gallop, bisect


# -- the search itself, on a fake monotone predicate --------------------------------------------------
@pytest.mark.parametrize("answer, start, k_high", [(0, 0, 100), (0, 7, 100), (5, 0, 100), (5, 5, 100), (5, 6, 100),
                                                   (37, 3, 1000), (1000, 0, 1000), (999, 1000, 1000)])
def test_first_true_finds_the_boundary(answer, start, k_high):
    seen = []

    def p(k):
        seen.append(k)
        return k >= answer
    first, before = _first_true(p, start, k_high)
    assert first == answer and before == (answer - 1 if answer > 0 else None)
    assert len(seen) <= 2 * math.log2(k_high + 2) + 2
    assert all(0 <= k <= k_high for k in seen)


def test_first_true_never_true_and_no_high():
    assert _first_true(lambda k: False, 3, 20) == (None, 20)
    with pytest.raises(InputError, match="give --high"):
        _first_true(lambda k: False, 0, 1 << 20)


def test_slo_parsing():
    assert parse_slo("ttft_p99_s<=2") == Slo("ttft_p99_s", "<=", 2.0)
    assert parse_slo(" slo_attainment >= 0.99 ") == Slo("slo_attainment", ">=", 0.99)
    assert parse_slo("pools.h100.utilisation<0.8") == Slo("pools.h100.utilisation", "<", 0.8)
    assert parse_slo("outcomes.529_overload=<1e-3").bound == 1e-3
    s = parse_slo("e2e_s<=3")
    assert s.holds(3) and not s.holds(3.1) and not s.holds(math.nan)
    assert s.inside(1, 2.9) and not s.inside(1, 3.5) and s.outside(3.2, 4) and not s.outside(2, 4)
    assert infer_goal("pools.a.replicas") == "min" and infer_goal("populations.p.size") == "max"


@pytest.mark.parametrize("args, words", [
    (["--slo", "ttft_p99_s<2s", "--vary", "pools.m.replicas"], ["--slo 'ttft_p99_s<2s': cannot parse"]),
    (["--slo", "ttft_p99<=2", "--vary", "pools.m.replicas"], ["unknown metric 'ttft_p99'", "ttft_p99_s"]),
    (["--slo", "ttft_p99_s<=2", "--vary", "pools.m.replicaz"], ["--vary", "unknown field 'replicaz'", "replicas"]),
    (["--slo", "ttft_p99_s<=2", "--vary", "pools.m.engine.max_bach"], ["not an engine setting", "max_batch"]),
    (["--slo", "ttft_p99_s<=2", "--vary", "router.policy"], ["not a number"]),
    (["--slo", "ttft_p99_s<=2", "--vary", "sample_s"], ["--goal min"]),
    (["--slo", "ttft_p99_s<=2", "--vary", "pools.m.replicas", "--low", "4", "--high", "2"], ["below --low"]),
    (["--slo", "ttft_p99_s<=2", "--vary", "pools.m.replicas", "--address", "tcp://127.0.0.1:9", "--connect-timeout",
      "1"], ["--address tcp://127.0.0.1:9: no Dask scheduler reachable"]),
])
def test_bad_capacity_input_is_one_line_and_exit_2(mmc, args, words):
    code, out, err = cli("capacity", str(mmc), *args, "--no-progress", "--workers", "0")
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, (w, err)


def test_unmet_slo_exit_1(mmc):
    code, out, err = cli("capacity", str(mmc), "--slo", "ttft_s<=0.0001", "--vary", "pools.m.engine.max_batch",
                         "--low", "12", "--high", "12", "-r", "1", "--workers", "0", "--set", "duration_s=200",
                         "--no-progress")
    assert code == 1 and "does not hold at 12" in err, (out, err)


@pytest.mark.slow
def test_capacity_is_confident_and_tight_with_more_replications(mmc):
    """10 replications of 3000 s: the intervals separate at the answer, and every probe's mean wait
    is within 10 % of Erlang C's Wq plus the step-boundary wait tau/2 · P(no wait)."""
    from agentsim.studies.theory import mmc as erlang
    res = capacity(mmc, [f"queue_s<={BOUND}"], "pools.m.engine.max_batch", low=9, high=16, replications=10,
                   workers=2, overrides=["duration_s=3000"], progress=False)
    assert (res.answer, res.neighbour) == (12, 11) and res.confident
    for p in res.probes:
        m = erlang(LAM, MU, p.value)
        assert p.stats["queue_s"][0] == pytest.approx(m.Wq + TAU / 2 * (1 - m.p_wait), rel=0.10), p
