"""Acceptance for ``agentsim calibrate``: fit quality on the shipped single-stream points, the load
points simulated through the estimate path (error and stated assumptions), the factor budget,
unscored reasons, the written catalog file, and clean errors for bad CSVs."""
from __future__ import annotations

import csv
import io
import json
import math
import re
import tomllib
from dataclasses import replace

import numpy as np
import pytest

from agentsim.studies import calibrate as cal
from agentsim.model.catalog import data_path, load_catalog
from cli_helper import cli
from agentsim.util.errors import InputError
from agentsim.studies.estimate import estimate, steady_output_rate
from agentsim.model.hardware import Efficiency

SINGLE_STREAM_METRICS = {"ttft", "itl", "tpot", "tpot_p50", "decode_rate_per_user"}
JSON_KEYS = {"model", "gpu", "metric", "measured", "predicted", "rel_error", "loo_error", "scored", "in_fit",
             "precision", "tp", "n_gpus", "input_tokens", "output_tokens", "batch_or_concurrency", "engine",
             "gpu_assumption", "kv_dtype", "max_batch", "token_budget", "kv_capacity_tokens", "requests",
             "load_assumption", "command", "preset", "holdout", "load"}
LOAD_ROWS = {3, 4, 5, 6, 14}   # H100 output_throughput with stated lengths: TRT-LLM max load, NIM concurrency 50
NEW_GPUS = {"H200", "B200", "GB200"}   # the measured points added for issue 13 (rows 19 on)
NEW_SIMULATED = set(range(19, 33))     # their TRT-LLM perf-overview max-load output_throughput rows
NEW_UNDER_LOAD = {36, 37, 38, 42, 43, 44}   # InferenceX 8k/1k at concurrency 128: throughput, TTFT, TPOT
EP_ROWS = {48, 49}          # issue 16: DeepSeek-V3 with DP attention and EP (SGLang H100 prefill, TRT-LLM B200)
EP_LISTED = {50, 51}        # issue 16: PD decode points whose EP does not divide the experts (EPLB): listed only


@pytest.fixture(scope="module")
def result() -> cal.Calibration:
    return cal.calibrate(cal.load_points(data_path("calibration.csv")), load_catalog((), calibrated=False))


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """``agentsim ARGS`` in-process (tests/cli_helper.py): (exit code, stdout, stderr)."""
    capsys.readouterr()
    return cli(*args)


def test_fit_meets_acceptance_on_single_stream_points(result):
    scored = [r for r in result.rows if r["scored"] and r["in_fit"]]
    assert len(scored) >= 8
    assert all(r["metric"] in SINGLE_STREAM_METRICS for r in scored)
    assert all(r["input_tokens"] and r["output_tokens"] for r in scored)
    s = cal.summary(result.rows)
    assert s["median_abs_error"] <= 0.15, s
    assert s["max_abs_error"] <= 0.35, s
    assert s["loo_median_abs_error"] <= 0.20, s


def load_rows(result) -> list[dict]:
    """The issue-13 load points (the EP rows of issue 16 have their own test)."""
    return [r for r in result.rows if r["scored"] and not r["in_fit"] and r["row"] not in EP_ROWS]


def test_ep_points_are_scored_with_their_shape_and_errors_guarded(result):
    """Issue 16: a serving point per shape. B200 dp8 x ep8 (TensorRT-LLM, one node) within 15 %; the
    H100 EP32 prefill point is the known miss (README: steps of 16k tokens per rank lie past the
    tables' 32k-token step and are extended linearly; no two-batch overlap), guarded at 45 %."""
    rows = {r["row"]: r for r in result.rows}
    for i in EP_ROWS:
        r = rows[i]
        print(f"row {i} {r['gpu']} {r['metric']}: measured {r['measured']:.4g}, predicted {r['predicted']:.4g} "
              f"({r['rel_error']:+.1%}) {r['command']}")
        assert r["scored"] and not r["in_fit"] and "--ep" in r["command"] and "--dp-attention" in r["command"]
    assert abs(rows[49]["rel_error"]) <= 0.15
    assert abs(rows[48]["rel_error"]) <= 0.45
    for i in EP_LISTED:
        assert not rows[i]["scored"] and "does not divide the model's 256 experts" in rows[i]["reason"]


def test_load_points_meet_acceptance(result):
    """Issue 13: load points (throughput, TTFT and TPOT under load) median |error| <= 10 %, on all and
    on the held-out third; the throughput rows' max within 25 %. TTFT at concurrency 128 is the known
    miss (README): its max is guarded at 45 % so it cannot silently grow."""
    rows = load_rows(result)
    for r in rows:
        print(f"row {r['row']:>2} {r['model']} {r['input_tokens']}/{r['output_tokens']} {r['batch_or_concurrency']} "
              f"{r['metric']}: measured {r['measured']:.4g}, predicted {r['predicted']:.4g} ({r['rel_error']:+.1%})"
              f"{' held out' if r['holdout'] else ''}")
    assert {r["row"] for r in rows} == LOAD_ROWS | NEW_SIMULATED | NEW_UNDER_LOAD
    assert all(r["input_tokens"] and r["output_tokens"] for r in rows)
    for subset in (rows, [r for r in rows if r["holdout"]]):
        s = cal.summary(subset, in_fit=False)
        print(s)
        assert s["points"] >= 10 and s["median_abs_error"] <= 0.10, s
    throughput = [r for r in rows if r["unit"] != "ms"]
    assert cal.summary(throughput, in_fit=False)["max_abs_error"] <= 0.25
    assert cal.summary(rows, in_fit=False)["max_abs_error"] <= 0.45


def test_load_points_stay_out_of_the_fit(result):
    fitted_rows = {row for fit in result.fits.values() for row in fit.rows}
    assert fitted_rows.isdisjoint(LOAD_ROWS)
    for r in load_rows(result):
        assert r["loo_error"] == r["rel_error"]  # never fitted: the error is already held out


def test_load_point_assumptions_are_stated(result):
    for r in load_rows(result):
        assert r["preset"] == "trtllm" and r["kv_dtype"] == "fp8", r  # TensorRT-LLM at FP8 or FP4 weights
        assert r["max_batch"] >= 1 and r["token_budget"] >= 1 and r["kv_capacity_tokens"] > 0
        concurrency = int(r["batch_or_concurrency"].split()[-1]) if "concurrency" in r["batch_or_concurrency"] \
            else r["max_batch"]           # at max load the batch is full: max_batch requests in flight
        assert r["requests"] == max(cal.LOAD_WAVES * concurrency, cal.LOAD_REQUESTS[0]), r
        note = r["load_assumption"]
        assert "fp8 KV" in note and str(r["max_batch"]) in note and f"{r['requests']} requests" in note
        # TRT-LLM's no-evict scheduler: every admitted request fits in full, so nothing is preempted
        ratio = POINTS_BY_ROW[r["row"]].range_ratio   # uniform lengths: the cap is at the mean request
        mean = sum((math.floor(ratio * n) + n) / 2 for n in (r["input_tokens"], r["output_tokens"]))
        assert r["max_batch"] * round(mean) <= r["kv_capacity_tokens"] < (r["max_batch"] + 1) * round(mean) \
            or r["max_batch"] * round(mean) < r["kv_capacity_tokens"] and "GUARANTEED_NO_EVICT" not in note, r
    single = [r for r in result.rows if r["scored"] and r["in_fit"]]
    assert all(r["max_batch"] is None and r["requests"] is None and r["command"] is None for r in single)
    # single-stream points run under their preset too: TRT-LLM at FP8 weights keeps an FP8 KV cache
    assert {r["kv_dtype"] for r in single if r["preset"] == "trtllm" and r["precision"] == "FP8"} == {"fp8"}


def _run_command(command: str, capsys) -> float:
    """Run a printed `agentsim estimate ... --format json  # key` command; the figure it names."""
    import shlex
    line, _, key = command.partition("#")
    key = key.split()[0]
    args = shlex.split(line)
    assert args[:2] == ["agentsim", "estimate"], command
    capsys.readouterr()   # drop anything printed before
    code, out, err = run_cli(args[1:], capsys)
    assert code == 0, err
    return json.loads(out)[key.strip()]


def test_printed_command_reproduces_each_load_prediction(result, capsys):
    """The shipped calibrated.toml holds the fitted overheads, so the one command printed per load
    point, run as a user would, gives its prediction: no hidden per-point setup."""
    rows = [r for r in load_rows(result) if r["requests"] <= 10_000]   # the 74k-request row is slow
    assert len(rows) >= 3
    for r in rows:
        assert "--engine trtllm" in r["command"] and "--max-batch" not in r["command"]
        from types import SimpleNamespace
        from agentsim.studies.calibrate_load import LOAD_METRICS
        point = SimpleNamespace(input_tokens=r["input_tokens"], output_tokens=r["output_tokens"], n_gpus=r["n_gpus"])
        value = LOAD_METRICS[r["metric"]][1](_run_command(r["command"], capsys), point)   # the conversion it prints
        assert math.isclose(value, r["predicted"], rel_tol=1e-3), (r["row"], value, r["predicted"])


NIM_UNDER_LOAD = [  # the NIM page's figures at concurrency 50 (calibration.csv row 14's notes), as rows
    "https://docs.nvidia.com/nim/benchmarking/llm/1.0.0/performance,Llama-3.3-70B-Instruct,FP8,H100-SXM-80GB,2,2,"
    "NIM 1.8.0 (TensorRT-LLM),concurrency 50,5000,500,ttft,834.51,ms",
    "(same NIM page),Llama-3.3-70B-Instruct,FP8,H100-SXM-80GB,2,2,NIM 1.8.0 (TensorRT-LLM),concurrency 50,5000,500,"
    "itl,59.73,ms"]


def test_ttft_and_tpot_under_load_are_simulated_and_reproducible(tmp_path, capsys):
    """Latency under load is a load point too: the steady-window figure of one estimate command."""
    data = tmp_path / "under_load.csv"   # the shipped rows (so the fit is the shipped one) and two more
    data.write_text(data_path("calibration.csv").read_text().rstrip("\n") + "\n" + "\n".join(NIM_UNDER_LOAD) + "\n")
    res = cal.calibrate(cal.load_points(data), load_catalog((), calibrated=False))
    rows = {r["metric"]: r for r in res.rows if "concurrency 50" in r["batch_or_concurrency"] and r["metric"] != "output_throughput"}
    assert set(rows) == {"ttft", "itl"}
    assert all(r["scored"] and r["load"] and not r["in_fit"] for r in rows.values())
    assert rows["ttft"]["command"].endswith("# steady_ttft_s x 1000 (ms)")
    assert rows["itl"]["command"].endswith("# steady_tpot_s x 1000 (ms)")
    for r in rows.values():
        assert math.isclose(_run_command(r["command"], capsys) * 1e3, r["predicted"], rel_tol=1e-3)
        print(r["metric"], r["measured"], r["predicted"], f"{r['rel_error']:+.1%}")


def test_held_out_rows_are_summarised_apart():
    rows = [{"scored": True, "in_fit": False, "holdout": h, "rel_error": e, "loo_error": e}
            for h, e in ((True, 0.1), (True, -0.3), (False, 0.02), (False, 0.04))]
    held, every = cal.summary(rows, in_fit=False, holdout=True), cal.summary(rows, in_fit=False)
    assert held["points"] == 2 and math.isclose(held["median_abs_error"], 0.2) and held["max_abs_error"] == 0.3
    assert every["points"] == 4 and math.isclose(every["median_abs_error"], 0.07)


def test_trtllm_bench_limits_follow_its_heuristic():
    cat = load_catalog((), calibrated=False)
    pts = {p.row: p for p in cal.load_points(data_path("calibration.csv"))}
    limits = {}
    for row in (3, 4, 5):
        dep = replace(cal.deployment(cat, pts[row]), kv_dtype="fp8")
        limits[row] = cal.trtllm_bench_limits(dep, pts[row].input_tokens, pts[row].output_tokens)
    # 8B FP8 on one H100, FP8 KV (64 KiB/token): ~0.96 M tokens of pool ->
    assert limits[3] == (4096, 8192)     # 128/128: capped at 4096 requests; tokens 2 x 4096
    assert limits[4] == (512, 2048)      # 1000/1000: ~480 requests -> 512; min 2048 tokens
    assert limits[5] == (64, 20064)      # 20000/2000: ~44 -> at least 64; no chunking: 20000 + 64


def test_steady_output_rate_leaves_out_warmup_and_drain():
    finish = np.arange(1.0, 101.0)  # one completion per second ...
    finish[:10] = 0.5                # ... after a burst at the start, before a slow tail
    finish[91:] = 1000.0 + np.arange(9)
    assert math.isclose(steady_output_rate(finish, np.full(100, 7)), 7.0)


def test_factor_budget_and_bounds(result):
    assert result.fits, "no generation was fitted"
    for fit in result.fits.values():
        assert len(fit.fitted) <= cal.MAX_FACTORS
        assert len(fit.fitted) <= len(fit.rows)
        assert set(fit.fitted) <= set(Efficiency.FITTABLE)
        for name, value in fit.fitted.items():
            lo, hi = (0.0, 100.0) if name.endswith("_ms") else (0.05, 1.0)
            assert lo <= value <= hi, (fit.generation, name, value)


def test_unidentified_factors_are_not_fitted(result):
    # no Hopper point runs at BF16 and no A100 at FP8: those MFUs must keep their priors
    assert "mfu_bf16" not in result.fits["hopper"].fitted
    assert "mfu_fp8" not in result.fits["ampere"].fitted


def test_unscored_rows_carry_reasons(result):
    unscored = [r for r in result.rows if not r["scored"]]
    assert unscored
    for r in unscored:
        assert r["reason"] and r["predicted"] is None and r["rel_error"] is None
    throughput = [r for r in unscored if r["metric"] == "output_throughput"]
    assert {r["row"] for r in throughput} == {1, 2, 18, 45}  # MLPerf offline/server x2, yobitel concurrency 16
    assert all("without input/output lengths" in r["reason"] for r in throughput)
    assert all(r["kv_dtype"] is None and r["max_batch"] is None for r in throughput)
    no_lengths = [r for r in unscored if r["input_tokens"] is None and r["metric"] == "tpot_p50"
                  and r["batch_or_concurrency"] == "concurrency 1"]
    assert no_lengths and all("lengths" in r["reason"] for r in no_lengths)


def test_gpu_assumption_reported(result):
    a100 = [r for r in result.rows if r["gpu"] == "A100-SXM-80GB"]
    assert a100 and all("80 GB" in r["gpu_assumption"] for r in a100)


def test_predictor_registry_is_the_extension_point(monkeypatch):
    from agentsim.studies import calibrate_load   # the load tier's extension point: calibrate calls through it
    monkeypatch.setattr(calibrate_load, "predict_load", lambda dep, p, overheads: p.value)
    monkeypatch.setattr(calibrate_load, "load_setup", lambda dep, p: None)
    res = cal.calibrate(cal.load_points(data_path("calibration.csv")), load_catalog((), calibrated=False))
    rows = [r for r in res.rows if r["metric"] == "output_throughput"]
    assert rows and all(r["scored"] and abs(r["rel_error"]) < 1e-9 for r in rows)


def test_ttft_single_step_matches_servicetime_table():
    from agentsim.cli.servicetime_cmd import table_rows
    cat = load_catalog((), calibrated=False)
    point = next(p for p in cal.load_points(data_path("calibration.csv")) if p.metric == "ttft")
    dep = cal.deployment(cat, point)
    expected = table_rows([dep], [1], point.input_tokens, 2)[0]["ttft_idle_ms"]
    assert math.isclose(cal.predict(dep, point), expected, rel_tol=1e-9)


def test_json_cli_output_has_the_keys_and_the_written_file_round_trips(result, tmp_path, capsys):
    """One CLI run (a whole calibration, the slowest test here) checks both the JSON rows and --write."""
    target = tmp_path / "fitted.toml"
    code, out, _ = run_cli(["calibrate", "--tier", "c", "--format", "json", "--write", str(target)], capsys)
    assert code == 0
    rows = json.loads(out)
    assert len(rows) == len(cal.load_points(data_path("calibration.csv")))
    for r in rows:
        assert JSON_KEYS <= set(r)
        assert r["scored"] or r["reason"]
    load = [r for r in rows if r["row"] in LOAD_ROWS]
    assert all(r["scored"] and not r["in_fit"] and r["kv_dtype"] and r["max_batch"] and r["token_budget"]
               and r["requests"] and r["load_assumption"] for r in load)
    # deterministic: the CLI's simulations repeat the fixture's exactly
    assert [r["predicted"] for r in load] == [r["predicted"] for r in result.rows if r["row"] in LOAD_ROWS]

    assert target.exists()
    written = tomllib.loads(target.read_text())["generations"]["hopper"]
    names = set(written) - {"calibrated", "sources"}
    assert names and names <= set(Efficiency.FITTABLE)
    prior = load_catalog((), calibrated=False).generations["hopper"]
    hopper = load_catalog((str(target),), calibrated=False).generations["hopper"]
    assert hopper.calibrated and not prior.calibrated
    assert all(getattr(hopper, n) == written[n] for n in names)
    assert any(not math.isclose(getattr(hopper, n), getattr(prior, n)) for n in names)
    assert all("fitted by agentsim calibrate on 6 points" in hopper.sources[n] for n in names)


def test_table_states_the_load_assumptions(result):
    from agentsim.cli.calibrate_cmd import load_block
    out = load_block(result.rows)
    scored = LOAD_ROWS | NEW_SIMULATED | NEW_UNDER_LOAD | EP_ROWS
    assert "scored, never fitted" in out and f"load (all): {len(scored)} scored points" in out and "load (held out)" in out
    for row in LOAD_ROWS:
        assert re.search(rf"  row {row}( \(held out\))?: output_throughput: measured", out), row
    assert out.count("agentsim estimate --model") == len(scored)
    assert "  row 18: not scored: load point (concurrency 16) without input/output lengths" in out


def test_shipped_calibrated_file_is_current(result, capsys):
    shipped = load_catalog()
    stale = "data/calibrated.toml is stale: run `agentsim calibrate --write agentsim/data/calibrated.toml`"
    for gen, fit in result.fits.items():
        eff = shipped.generations[gen]
        assert eff.calibrated, stale
        for name, value in fit.fitted.items():
            assert math.isclose(getattr(eff, name), value, rel_tol=1e-3, abs_tol=1e-3), (gen, name, stale)
    assert result.preset_fits, "no engine preset was fitted"
    for name, fit in result.preset_fits.items():
        for factor, value in fit.fitted.items():
            assert math.isclose(shipped.engines[name][factor], value, rel_tol=1e-3, abs_tol=1e-3), (name, factor, stale)
    code, out, _ = run_cli(["catalog", "gpus", "--format", "json"], capsys)
    calibrated = {r["gpu"]: r["calibrated"] for r in json.loads(out)}
    assert code == 0 and calibrated["H100-SXM"] and calibrated["A100-SXM-80GB"]
    assert not calibrated["B200"] and not calibrated["MI300X"]  # no measured points: priors kept


def write_csv(path, header: str, rows: list[str]) -> None:
    path.write_text("\n".join([header, *rows]) + "\n")


HEADER = "source,model,precision,gpu,n_gpus,tp,engine,batch_or_concurrency,input_tokens,output_tokens,metric,value,unit"
GOOD = "x,Llama-3-8B,BF16,H100-SXM,1,1,vLLM,1,1024,128,itl,7.0,ms"


def test_missing_column_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    write_csv(bad, HEADER.replace(",value", ""), [GOOD.replace(",7.0", "")])
    code, _, err = run_cli(["calibrate", "--data", str(bad)], capsys)
    assert code == 2
    assert str(bad) in err and "value" in err and "Traceback" not in err


def test_unparseable_number_names_file_row_and_field(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    write_csv(bad, HEADER, [GOOD, GOOD, GOOD.replace(",7.0,", ",seven,")])
    code, _, err = run_cli(["calibrate", "--data", str(bad)], capsys)
    assert code == 2
    assert str(bad) in err and "row 3" in err and "value" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("change, field", [(("itl,7.0,ms", "latency,7.0,ms"), "metric"),
                                           (("itl,7.0,ms", "itl,7.0,s"), "unit"),
                                           ((",1,1024,", ",lots,1024,"), "batch_or_concurrency"),
                                           (("BF16", "INT4"), "precision")])
def test_bad_fields_are_input_errors(tmp_path, change, field):
    bad = tmp_path / "bad.csv"
    write_csv(bad, HEADER, [GOOD.replace(*change)])
    with pytest.raises(InputError, match=f"row 1.*{field}"):
        cal.load_points(bad)


# -- the measured points on H200 / B200 / GB200 and the held-out third (issue 13) -------------------
def shipped_points() -> list[cal.Point]:
    return cal.load_points(data_path("calibration.csv"))


def test_holdout_column_matches_the_rule():
    points = shipped_points()
    held = {p.row for p in points if p.holdout}
    assert held == cal.holdout_rows(points), \
        "stale: python -c \"from agentsim.studies.calibrate import write_holdout_column as w; w('agentsim/data/calibration.csv')\""
    load = [p for p in points if cal.is_load_point(p)]
    assert not any(p.holdout for p in points if not cal.is_load_point(p))  # single-stream points stay in
    assert all(p.concurrency == 1 for p in points if not cal.is_load_point(p))
    # a third of the load points, overshooting by at most a group of 3 rows less one in each of two strata
    assert round(len(load) / 3) <= len(held) <= round(len(load) / 3) + 4, (len(held), len(load))
    for stratum in (lambda p: p.unit == "ms", lambda p: p.unit != "ms"):   # latency and throughput rows both
        assert any(stratum(p) and p.holdout for p in load)
    by_run: dict[str, set[bool]] = {}
    for p in load:
        by_run.setdefault(cal.measurement_key(p), set()).add(p.holdout)
    assert all(len(v) == 1 for v in by_run.values())  # one run's throughput / TTFT / TPOT held out together


def test_write_holdout_column_reproduces_the_shipped_file(tmp_path):
    shipped = data_path("calibration.csv").read_bytes()
    copy = tmp_path / "points.csv"
    copy.write_bytes(shipped)
    assert cal.write_holdout_column(copy) == {p.row for p in shipped_points() if p.holdout}
    assert copy.read_bytes() == shipped
    # a CSV without the column gets one: a third of its three load points, never the concurrency-1 row
    bare = tmp_path / "bare.csv"
    write_csv(bare, HEADER, [GOOD] + [GOOD.replace(",1,1024,", f",concurrency {n},1024,") for n in (8, 16, 32)])
    assert not any(p.holdout for p in cal.load_points(bare))
    held = cal.write_holdout_column(bare)
    assert len(held) == 1 and held <= {2, 3, 4}
    assert {p.row for p in cal.load_points(bare) if p.holdout} == held
    assert bare.read_text().splitlines()[0].endswith(",unit,holdout")


def test_holdout_rule_does_not_depend_on_row_order():
    points = shipped_points()
    shuffled = [points[i] for i in np.random.default_rng(0).permutation(len(points))]
    assert cal.holdout_rows(shuffled) == cal.holdout_rows(points)


def test_new_points_on_h200_b200_gb200():
    cat = load_catalog((), calibrated=False)
    new = [p for p in shipped_points() if cat.gpu(p.gpu).name in NEW_GPUS and p.row not in EP_ROWS | EP_LISTED]
    assert new and min(p.row for p in new) == 19
    for p in new:
        assert p.source.startswith("https://"), p.where
        cat.model(p.model)  # raises for a model not in the catalog
        assert re.search(r"TensorRT-LLM|vLLM|SGLang", p.engine), p.where
        assert cal.is_load_point(p), p.where
        if p.input_tokens is None or p.output_tokens is None:  # only MLPerf's dataset runs, which say so
            assert "MLPerf" in p.load and "varying input/output length" in NOTES[p.row], p.where
    fixed = [p for p in new if p.input_tokens and p.output_tokens]
    assert len(fixed) >= 12
    for gpu in NEW_GPUS:
        assert sum(cat.gpu(p.gpu).name == gpu for p in fixed) >= 3, gpu
    latency = {p.metric for p in fixed if p.unit == "ms"}
    assert {"ttft_p50", "tpot_p50"} <= latency and all(p.concurrency and p.concurrency > 1 for p in fixed
                                                        if p.unit == "ms")


def test_new_points_are_scored_or_say_why_not(result):
    rows = {r["row"]: r for r in result.rows}
    for row in NEW_SIMULATED | NEW_UNDER_LOAD:
        assert rows[row]["scored"] and not rows[row]["in_fit"], row
    unscored = [r for r in result.rows if r["row"] >= 19 and not r["scored"]]
    assert unscored and all(r["reason"] for r in unscored)
    # the 1k/1k InferenceX runs held context requests back (TensorRT-LLM's batch_wait_*), which the engine
    # does not model: the CSV says so and the rows are reported, not scored
    assert {r["row"] for r in unscored if "batch_wait" in r["reason"]} == {33, 34, 35, 39, 40, 41}
    stated = {p.row: p for p in shipped_points() if p.range_ratio < 1}
    assert set(stated) == set(range(33, 45)) and all(p.range_ratio == 0.8 for p in stated.values())
    assert all(f"--range-ratio 0.8 --token-budget 9216 " in rows[r]["command"] for r in NEW_UNDER_LOAD)
    assert [r["holdout"] for r in result.rows] == [p.holdout for p in shipped_points()]


POINTS_BY_ROW = {p.row: p for p in cal.load_points(data_path("calibration.csv"))}
NOTES = {i: rec["notes"] for i, rec in enumerate(csv.DictReader(io.StringIO(
    data_path("calibration.csv").read_text(encoding="utf-8-sig"))), 1)}


@pytest.mark.parametrize("header_extra, cell, expected", [("", "", False), (",holdout", ",", False),
                                                          (",holdout", ",true", True), (",holdout", ",FALSE", False),
                                                          (",holdout", ",True", True)])
def test_holdout_column_values(tmp_path, header_extra, cell, expected):
    good = tmp_path / "good.csv"
    write_csv(good, HEADER + header_extra, [GOOD + cell])
    (point,) = cal.load_points(good)
    assert point.holdout is expected


@pytest.mark.parametrize("column, value, allowed", [("range_ratio", "1.5", r"a number in \(0, 1\]"),
                                                    ("range_ratio", "x", "positive number"),
                                                    ("token_budget", "0", "positive integer")])
def test_stated_setting_columns_are_checked(tmp_path, column, value, allowed):
    bad = tmp_path / "bad.csv"
    write_csv(bad, HEADER + f",{column}", [GOOD + f",{value}"])
    with pytest.raises(InputError, match=rf"row 1 .*field {column}: .*{allowed}"):
        cal.load_points(bad)


@pytest.mark.parametrize("value", ["yes", "1", "held out"])
def test_bad_holdout_value_is_one_line_input_error(tmp_path, value, capsys):
    bad = tmp_path / "bad.csv"
    write_csv(bad, HEADER + ",holdout", [GOOD + ",false", GOOD + f",{value}"])
    expected = rf"bad.csv: row 2 .*field holdout: '{value}' not allowed; allowed: true, false"
    with pytest.raises(InputError, match=expected):
        cal.load_points(bad)
    code, _, err = run_cli(["calibrate", "--data", str(bad)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_per_gpu_load_metrics_convert_the_steady_output_rate():
    """InferenceX-style per-GPU figures: total (input + output) or output tokens/s over the GPUs."""
    from agentsim.studies.calibrate_load import LOAD_METRICS
    p = cal.Point("x", 1, "s", "m", "g", "FP8", 8, 8, "vLLM", "concurrency 64", 64, 3072, 1024,
                  "total_throughput_per_gpu", 1.0, "tokens/s")
    key, convert, how = LOAD_METRICS["total_throughput_per_gpu"]
    assert key == "steady_output_tokens_per_s" and convert(1000.0, p) == 1000.0 * 4 / 8 and "n_gpus" in how
    assert LOAD_METRICS["output_throughput_per_gpu"][1](1000.0, p) == 125.0
