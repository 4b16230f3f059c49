"""Per-model summaries of a run on a fleet serving several models (issue 18's model mix).

A request belongs to the model of the pool that served it (or failed on it); a request refused
before any replica took it has no pool and is counted under ``"-"``. The counts (requests,
completed, requests within the SLOs, input and output tokens) of the groups add up exactly to the
fleet's; energy, cost and GPU-hours are the sums over each model's pools (the fleet's is the sum
over all pools, equal up to floating-point rounding). GPU-hours are the pools' provisioned time
(with autoscaling: cold starts and draining counted, parked replicas not): cost / price per GPU-hour.
"""
from __future__ import annotations

import math

import pandas as pd

UNPLACED = "-"


def model_summaries(requests: pd.DataFrame, pools: pd.DataFrame, warmup_s: float, span_s: float,
                    slo_ttft_s: float, slo_tpot_s: float) -> dict[str, dict]:
    """One entry per model (and ``"-"`` for requests never placed): counts after warm-up, rates over
    ``span_s``, and the energy, cost and GPU-hours of the model's pools."""
    df = requests[requests["arrival_s"] >= warmup_s]
    model_of = dict(zip(pools["pool"], pools["model"]))
    model = df["pool"].astype(object).map(model_of).fillna(UNPLACED)
    out: dict[str, dict] = {}
    for name in [*dict.fromkeys(pools["model"]), UNPLACED]:
        mine = df[(model == name).to_numpy()]
        if name == UNPLACED and not len(mine):
            continue
        done = mine[mine["outcome"] == "completed"]
        ok = int(((done["ttft_s"] <= slo_ttft_s) & ~(done["tpot_s"] > slo_tpot_s)).sum())
        rows = pools[pools["model"] == name]
        energy = float(rows["facility_energy_j"].sum())
        cost = float(rows["cost_usd"].sum())
        out_tokens = int(done["output_tokens"].sum())
        in_tokens = int(done["input_tokens"].sum())
        out[name] = {
            "requests": int(len(mine)), "completed": int(len(done)), "within_slo": ok,
            "slo_attainment": ok / len(mine) if len(mine) else math.nan,
            "input_tokens": in_tokens, "output_tokens": out_tokens,
            "output_tokens_per_s": out_tokens / span_s, "goodput_rps": ok / span_s,
            "ttft_s": float(done["ttft_s"].mean()) if len(done) else math.nan,
            "pools": list(rows["pool"]), "gpu_hours": _gpu_hours(rows),
            "energy_j": energy, "cost_usd": cost,
            "usd_per_m_tokens": cost / (in_tokens + out_tokens) * 1e6 if in_tokens + out_tokens else math.nan,
        }
    return out


def _gpu_hours(rows: pd.DataFrame) -> float:
    """Provisioned GPU-hours of these pools (a pool priced at 0 cannot say: NaN)."""
    price = rows["usd_per_gpu_hour"].to_numpy(float)
    cost = rows["cost_usd"].to_numpy(float)
    return float((cost / price).sum()) if (price > 0).all() else math.nan
