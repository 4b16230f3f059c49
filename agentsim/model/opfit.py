"""Fit the per-operator step model to measured op tables, with rows held out of every fit.

For each GPU with tables and each op class, rows become (sizes, roofline time, measured time); the
fit is a :class:`~agentsim.model.opgrid.Grid` of ``log(roofline / measured)`` over the op's sizes. Before
anything is fitted a seeded random 20 % of each table's rows and every shape of one model family
(:data:`HOLDOUT_FAMILY`) are set aside; the report's figures that count are on those rows.

Only used by ``agentsim calibrate`` (refit and report); needs pandas and the optional tables.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import optables
from ..util.atomic import write_atomic
from ..util.errors import InputError
from .hardware import GPU
from .opgrid import Curve, Grid
from .opclasses import (  # noqa: F401  (the rooflines and op classes, re-exported for the fit's callers)
    BF16, GEMM_BYTES, HOLDOUT_FAMILY, MLA, OP_CLASSES, OpClass, allreduce_roofline, alltoall_roofline,
    context_attention_roofline, gemm_roofline, generation_attention_roofline, mla_context_roofline,
    mla_generation_roofline, mla_projection_params, moe_roofline)

HOLDOUT_SHARE = 0.20
HOLDOUT_SEED = 20261207


def _axis(logs: np.ndarray, most: int = 80) -> np.ndarray:
    """The grid's values along one axis: the rows' own sizes, or half-octave bins when they are many
    (derived sizes such as tokens per expert take hundreds of distinct values)."""
    u = np.unique(logs)
    if len(u) <= most:
        return u
    return np.arange(np.floor(u[0] * 2) / 2, u[-1] + 0.5, 0.5)


def split(df, op: OpClass, seed: int = HOLDOUT_SEED) -> np.ndarray:
    """Boolean mask of held-out rows: a seeded random 20 % plus the held-out family's shapes."""
    rng = np.random.default_rng([seed, sum(op.name.encode())])
    return (rng.random(len(df)) < HOLDOUT_SHARE) | op.family(df)


def fit_op(df, op: OpClass, gpu: GPU, train: np.ndarray | None = None):
    """Grids (or curves, for collectives) per category from the training rows: ``{category: Grid}``."""
    grids = {}
    if op.curve_x is not None:
        for cat, part in df.groupby(op.category(df), observed=True):
            mask = np.ones(len(part), dtype=bool) if train is None else train[part.index.to_numpy()]
            if mask.sum() >= 3:
                grids[str(cat)] = Curve.fit(op.curve_x(part)[mask], part["latency_s"].to_numpy(float)[mask])
        return grids
    for cat, part in df.groupby(op.category(df), observed=True):
        mask = np.ones(len(part), dtype=bool) if train is None else train[part.index.to_numpy()]
        part = part.reset_index(drop=True)
        sizes = part[list(op.axes)].to_numpy(float)
        y = np.log(op.roofline(part, gpu) / part["latency_s"].to_numpy(float))
        axes = [_axis(np.log2(sizes[:, d])) for d in range(sizes.shape[1])]
        if not mask.any():
            continue
        grids[str(cat)] = Grid.from_rows(op.axes, sizes[mask], y[mask], axes=axes)
    return grids


def predict_op(df, op: OpClass, gpu: GPU, grids) -> np.ndarray:
    """Predicted seconds for every row of ``df`` from ``grids`` (NaN where no grid has the category)."""
    out = np.full(len(df), np.nan)
    cats = op.category(df)
    for cat, part in df.groupby(cats, observed=True):
        g = grids.get(str(cat))
        if g is None:
            continue
        if op.curve_x is not None:
            out[part.index.to_numpy()] = g(op.curve_x(part))
            continue
        sizes = [part[c].to_numpy(float) for c in op.axes]
        out[part.index.to_numpy()] = op.roofline(part, gpu) / np.exp(g(*sizes))
    return out


def load_prepared(gpu: str, op: OpClass, root=None, engine: str = "vllm"):
    """The op's table for one GPU and engine, prepared (filtered, one row per size), or None."""
    try:
        raw = optables.read(gpu, op.table, engine=engine, root=root)
    except InputError:
        return None
    df = op.prepare(raw).reset_index(drop=True)
    return df if len(df) else None


def rel_err(pred, meas) -> np.ndarray:
    return np.abs(np.asarray(pred) / np.asarray(meas) - 1.0)


def summary(errs: np.ndarray) -> dict:
    errs = errs[np.isfinite(errs)]
    if not len(errs):
        return {"n": 0, "median": None, "p90": None, "max": None}
    return {"n": int(len(errs)), "median": float(np.median(errs)), "p90": float(np.quantile(errs, 0.9)),
            "max": float(errs.max())}


def to_json(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)


#: the GPUs whose tables are fitted and shipped (catalog names)
FIT_GPUS = ("H100-SXM", "H200", "B200", "GB200", "A100-SXM-80GB", "L40S")


def fit_all(cat, gpus=FIT_GPUS, root=None, holdout: bool = True, engines=optables.ENGINES):
    """Fit every op class on every GPU; returns ``(arrays for opmodel.npz, per-row evaluation frames)``.

    Two fits per table. The **evaluation fit** sees only the training rows (the seeded 20 % and the
    held-out family are set aside before it): tiers (a) and (b) and leave-one-GPU-out are computed
    from it, so every reported error is on rows it never saw. The **shipped fit** then uses every
    row: a grid with a held-out family's shapes missing would price exactly those shapes worst
    (measured: B200 decode attention of Llama-3.1-70B TP4, 4x off at 128k context when its rows are
    held out). With ``holdout=False`` only the shipped fit is made and no report is written.
    """
    import pandas as pd   # local: pandas costs ~0.3 s to import and only the refit reads the tables

    arrays: dict[str, np.ndarray] = {}
    entries, paths, frames, fitted, tables, helds = [], [], [], {}, {}, {}
    root = root or optables.data_root()
    for engine, gname, op in ((e, g, o) for e in engines for g in gpus for o in OP_CLASSES.values()):
            gpu = cat.gpu(gname)
            df = load_prepared(gname, op, root, engine)
            if df is None:
                continue
            tables[(engine, gname, op.name)] = df
            paths.append(optables.table_path(root, gname, op.table, engine))
            held = split(df, op) if holdout else np.zeros(len(df), dtype=bool)
            helds[(engine, gname, op.name)] = held
            grids = fit_op(df, op, gpu, ~held)
            fitted[(engine, gname, op.name)] = grids
            shipped = fit_op(df, op, gpu) if holdout else grids
            for catname, g in shipped.items():
                key = f"{engine}|{gname}|{op.name}|{catname}"
                entries.append(key)
                if op.curve_x is not None:
                    arrays[f"{key}/curve"] = g.to_array()
                else:
                    arrays.update(g.to_arrays(key))
            pred = predict_op(df, op, gpu, grids)
            frames.append(pd.DataFrame({"engine": engine, "gpu": gname, "op": op.name, "category": op.category(df).astype(str),
                                        "measured_s": df["latency_s"].to_numpy(), "predicted_s": pred,
                                        "held": held, "family": op.family(df)}))
    ev = pd.concat(frames, ignore_index=True)
    logo = leave_one_gpu_out(cat, tables, fitted)
    meta = {"package": optables.PACKAGE, "version": optables.package_version(),
            "data_hash": optables.tables_hash(paths), "entries": entries, "gpus": list(gpus),
            "generation": {g: cat.gpu(g).generation for g in gpus},
            "peaks": {g: [cat.gpu(g).bf16_tflops, cat.gpu(g).hbm_tbps] for g in gpus},
            "holdout": {"share": HOLDOUT_SHARE, "seed": HOLDOUT_SEED, "family": HOLDOUT_FAMILY["name"]},
            "engines": list(engines),
            "versions": {f"{e}|{g}|{o}": optables.table_path(root, g, OP_CLASSES[o].table, e).parent.name
                         for (e, g, o) in tables},
            "tier_a": tier_a(ev, logo),
            "tier_b": [r for e in engines for r in tier_b(cat, tables, helds, e)] if holdout else []}
    arrays["meta"] = np.array(json.dumps(meta))
    return arrays, ev


def nearest_other(cat, gname: str, candidates) -> str | None:
    """The fitted GPU a GPU without tables would borrow from: same generation first, then nearest peaks."""
    g = cat.gpu(gname)
    others = [o for o in candidates if o != gname]
    if not others:
        return None
    same = [o for o in others if cat.gpu(o).generation == g.generation] or others
    return min(same, key=lambda o: abs(math.log(g.bf16_tflops / cat.gpu(o).bf16_tflops))
               + abs(math.log(g.hbm_tbps / cat.gpu(o).hbm_tbps)))


def leave_one_gpu_out(cat, tables: dict, fitted: dict) -> dict:
    """Per op class and GPU: median error of its rows predicted from the nearest *other* GPU's grids
    rescaled by this GPU's peaks (what a GPU without tables gets: the ``transferred`` label)."""
    out = {}
    for (engine, gname, opname), df in tables.items():
        other = nearest_other(cat, gname, [g for (e, g, o) in fitted if o == opname and e == engine])
        if other is None:
            continue
        pred = predict_op(df, OP_CLASSES[opname], cat.gpu(gname), fitted[(engine, other, opname)])
        out.setdefault((engine, opname), {})[gname] = {"from": other, **summary(rel_err(pred, df["latency_s"].to_numpy()))}
    return out


def tier_a(ev, logo: dict) -> list[dict]:
    """Rows of the op-level report: per GPU and op class, held-out and in-sample error, and LOGO."""
    rows = []
    for (engine, gname, opname), part in ev.groupby(["engine", "gpu", "op"], sort=False):
        e = rel_err(part["predicted_s"].to_numpy(), part["measured_s"].to_numpy())
        held = part["held"].to_numpy()
        h, i = summary(e[held]), summary(e[~held])
        fam = summary(e[part["family"].to_numpy()])
        lg = logo.get((engine, opname), {}).get(gname, {})
        rows.append({"tier": "a", "engine": engine, "gpu": gname, "op": opname, "held_out_rows": h["n"], "held_out_median": h["median"],
                     "held_out_p90": h["p90"], "family_median": fam["median"], "in_sample_median": i["median"],
                     "tolerance": OP_CLASSES[opname].tolerance,
                     "within": h["median"] is not None and h["median"] <= OP_CLASSES[opname].tolerance,
                     "logo_from": lg.get("from"), "logo_median": lg.get("median")})
    return rows


def write(arrays: dict, path) -> None:
    """Write the shipped fit atomically (a temporary sibling, then a rename)."""
    write_atomic(path, lambda f: np.savez_compressed(f, **arrays))


# -- tier (b): whole steps rebuilt from held-out rows ----------------------------------------------
#: (label, model geometry, tp) of the steps rebuilt in tier (b); geometry from the catalog
TIER_B_SHAPES = (("Llama-3.1-8B TP1", "Llama-3.1-8B", 1), ("Llama-3.1-70B TP4", "Llama-3.1-70B", 4),
                 ("Llama-3.1-70B TP8", "Llama-3.1-70B", 8), ("DeepSeek-V3 TP8", "DeepSeek-V3", 8))
#: (kind, decodes, context per decode, prefill chunk): sizes on the tables' own grids
TIER_B_STEPS = (("decode", 32, 4096, 0), ("prefill", 0, 0, 2048), ("mixed", 32, 4096, 512))
TIER_B_GPUS = ("H100-SXM", "H200", "B200", "GB200")


def step_ops(model, tp: int, kind_sizes: tuple, precision: str) -> list[tuple[str, str, dict, float]]:
    """The operators of one step: ``(op, category, sizes, count)`` in the tables' own columns."""
    _, n, s, c = kind_sizes
    m, d = model, model.d_model
    t = n + c
    gemm_cat = "bfloat16" if precision == "bf16" else "fp8"
    ops: list[tuple[str, str, dict, float]] = []

    def gemm(mm, nn, kk, count):
        if mm > 0:
            ops.append(("gemm", gemm_cat, {"m": mm, "n": nn, "k": kk}, count))

    if m.attention == "mla":
        h = m.n_heads // tp
        cat = ("bfloat16" if precision == "bf16" else "fp8_block") + "/bfloat16"
        if n:
            ops.append(("mla_generation", cat, {"num_heads": h, "batch_size": n, "context": s}, m.layers))
        if c:
            ops.append(("mla_context", cat, {"num_heads": h, "batch_size": 1, "isl": c}, m.layers))
    else:
        h, kvh = m.n_heads // tp, max(1, m.n_kv_heads // tp)
        gemm(t, (m.n_heads + 2 * m.n_kv_heads) * m.head_dim // tp, d, m.layers)
        gemm(t, d, m.n_heads * m.head_dim // tp, m.layers)
        if n:
            ops.append(("generation_attention", "bfloat16", {"seq_kv_heads": n * kvh, "context": s,
                                                             "head_dim": m.head_dim, "group": h // kvh}, m.layers))
        if c:
            ops.append(("context_attention", "bfloat16", {"batch_size": 1, "isl": c, "num_heads": h,
                                                          "num_key_value_heads": kvh, "head_dim": m.head_dim},
                        m.layers))
    dense_layers = m.n_dense_layers if m.is_moe else m.layers
    gemm(t, 2 * m.d_ff // tp, d, dense_layers)
    gemm(t, d, m.d_ff // tp, dense_layers)
    if m.is_moe:
        ops.append(("moe", "fp8" if precision != "bf16" else "bfloat16",
                    {"num_tokens": t, "topk": m.top_k, "expert_weights": 3.0 * d * m.d_ff_expert / tp,
                     "local_experts": m.n_experts}, m.moe_layers))
        f = m.n_shared_experts * m.d_ff_expert
        gemm(t, 2 * f // tp, d, m.moe_layers)
        gemm(t, d, f // tp, m.moe_layers)
    if tp > 1:
        ops.append(("all_reduce", str(tp), {"message_size": t * d}, 2 * m.layers))   # bf16 elements
    gemm(n + (1 if c else 0), min(65536, m.vocab // tp), d, 1)
    return ops


def _nearest_row(df, op: OpClass, cat: str, sizes: dict):
    """Index of the row of this category nearest (in log size) to the wanted sizes, or None."""
    mask = op.category(df).astype(str).to_numpy() == cat
    if not mask.any():
        return None
    idx = np.nonzero(mask)[0]
    dist = np.zeros(len(idx))
    for col, want in sizes.items():
        dist += (np.log2(df[col].to_numpy(float)[idx]) - np.log2(float(want))) ** 2
    return int(idx[int(np.argmin(dist))])


def tier_b(cat, tables: dict, helds: dict, engine: str = "vllm", gpus=TIER_B_GPUS) -> list[dict]:
    """Whole decode, prefill and mixed steps rebuilt from measured rows held out of the fit.

    Each op of a step is the table row nearest to the shape the model needs (the Llama-3.1-70B
    family's own shapes where the tables have them). Those rows join the held-out set and every op
    class they come from is fitted again without them, so a step's prediction never saw its rows.
    The step's measured time is the sum of the rows' latencies times their counts per step.
    """
    plan = []
    chosen: dict[tuple, set] = {}
    for gname in gpus:
        for label, model_name, tp in TIER_B_SHAPES:
            model = cat.model(model_name)
            precision = "fp8" if model.is_moe else "bf16"
            for kind in TIER_B_STEPS:
                ops, missing = [], []
                for opname, catname, sizes, count in step_ops(model, tp, kind, precision):
                    key = (engine, gname, opname)
                    i = _nearest_row(tables[key], OP_CLASSES[opname], catname, sizes) if key in tables else None
                    if i is None:
                        missing.append(opname)
                        continue
                    chosen.setdefault(key, set()).add(i)
                    ops.append((key, i, count))
                plan.append((gname, label, kind[0], ops, missing))
    refit = {}
    for key, rows in chosen.items():
        held = helds[key].copy()
        held[list(rows)] = True
        refit[key] = fit_op(tables[key], OP_CLASSES[key[2]], cat.gpu(key[1]), ~held)
    out = []
    for gname, label, kind, ops, missing in plan:
        meas = pred = 0.0
        for key, i, count in ops:
            row = tables[key].iloc[[i]].reset_index(drop=True)
            meas += count * float(row["latency_s"].iloc[0])
            pred += count * float(predict_op(row, OP_CLASSES[key[2]], cat.gpu(gname), refit[key])[0])
        out.append({"tier": "b", "engine": engine, "gpu": gname, "shape": label, "step": kind,
                    "measured_ms": meas * 1e3, "predicted_ms": pred * 1e3,
                    "rel_error": pred / meas - 1 if meas else None, "ops": len(ops),
                    "missing": ",".join(sorted(set(missing))) or None})
    return out
