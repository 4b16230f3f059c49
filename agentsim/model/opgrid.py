"""A compressed measured table: log-efficiency on a regular grid of log sizes, multilinear in between.

Why this form: an operator's measured latency divided by its roofline time (datasheet peaks) is a
smooth, slowly varying *efficiency* of the operator's sizes, while the latency itself spans six
decades. Storing ``log(roofline / measured)`` at the table's own sizes and interpolating it linearly
in ``log2(size)`` reproduces rows held out of the grid within a few per cent, needs no package at run
time, and carries over to a GPU without tables by swapping the roofline's peaks (support label
``transferred``). Outside the grid the edge value is held (support label ``extrapolated``).
"""
from __future__ import annotations

import numpy as np


class Grid:
    """``values[i0, i1, ...]`` = log-efficiency at ``axes[0][i0], axes[1][i1], ...`` (axes in log2)."""

    __slots__ = ("names", "axes", "values")

    def __init__(self, names: tuple[str, ...], axes: list[np.ndarray], values: np.ndarray) -> None:
        self.names = tuple(names)
        self.axes = [np.asarray(a, dtype=float) for a in axes]
        self.values = np.asarray(values, dtype=float)
        if self.values.shape != tuple(len(a) for a in self.axes):
            raise ValueError(f"grid values {self.values.shape} do not match axes {[len(a) for a in self.axes]}")

    # -- building from rows (fit time) ---------------------------------------------------------------
    @classmethod
    def from_rows(cls, names: tuple[str, ...], sizes: np.ndarray, log_eff: np.ndarray,
                  axes: list[np.ndarray] | None = None) -> "Grid":
        """Place rows (``sizes``: (R, D) positive sizes) on the grid of their unique sizes; fill holes.

        Rows sharing a cell are averaged in log space; cells no row reached are filled by
        :meth:`fill` (linear along each axis, edges held), so a held-out row is predicted from its
        neighbours only.
        """
        logs = np.log2(np.asarray(sizes, dtype=float))
        if axes is None:
            axes = [np.unique(logs[:, d]) for d in range(logs.shape[1])]
        # each row goes to its nearest grid value along every axis (exact when axes are the rows' own)
        idx = []
        for d, a in enumerate(axes):
            i = np.clip(np.searchsorted(a, logs[:, d]), 1, max(1, len(a) - 1)) if len(a) > 1 else np.zeros(len(logs), int)
            if len(a) > 1:
                i = np.where(np.abs(logs[:, d] - a[i - 1]) <= np.abs(a[i] - logs[:, d]), i - 1, i)
            idx.append(i)
        idx = tuple(idx)
        shape = tuple(len(a) for a in axes)
        total = np.zeros(shape)
        count = np.zeros(shape)
        np.add.at(total, idx, log_eff)
        np.add.at(count, idx, 1.0)
        with np.errstate(invalid="ignore"):
            values = total / count
        g = cls(names, axes, values)
        g.fill()
        return g

    def fill(self) -> None:
        """Fill NaN cells from their nearest measured neighbours, the tightest bracket first.

        Each hole takes the linear interpolation along the bracketing axis (known cells on both
        sides) where interpolation predicts measured cells from their neighbours best: a smooth size
        axis beats an axis whose neighbouring values are different models or head sizes. A hole no axis brackets takes the nearest known value along the axis
        where one is nearest (flat beyond the ends). Repeated until no hole is left. A fixed axis
        order priced a held-out GQA group, measured on both sides at the same batch and context, from
        other head sizes: 2.3x slow.
        """
        v = self.values
        if not np.isnan(v).any():
            return
        if np.isnan(v).all():
            raise ValueError("a grid with no measured cell cannot be filled")
        rates = [_change_rate(np.moveaxis(v, d, -1), self.axes[d]) for d in range(v.ndim)]
        while np.isnan(v).any():
            best = np.full(v.shape, np.inf)
            value = np.full(v.shape, np.nan)
            for d in range(v.ndim):
                cand, width = _axis_candidates(np.moveaxis(v, d, -1), self.axes[d], rates[d])
                cand, width = np.moveaxis(cand, -1, d), np.moveaxis(width, -1, d)
                better = width < best
                best = np.where(better, width, best)
                value = np.where(better, cand, value)
            v = np.where(np.isnan(v), value, v)
        self.values = np.ascontiguousarray(v)

    # -- evaluation (run time) ----------------------------------------------------------------------
    def __call__(self, *sizes) -> np.ndarray:
        """Log-efficiency at ``sizes`` (one broadcastable array per axis), multilinear in log2 sizes."""
        pts = np.broadcast_arrays(*[np.log2(np.maximum(np.asarray(s, dtype=float), 1e-30)) for s in sizes])
        shape = pts[0].shape
        lo_idx, frac = [], []
        for a, p in zip(self.axes, pts):
            p = p.ravel()
            if len(a) == 1:
                lo_idx.append(np.zeros(p.shape, dtype=np.intp))
                frac.append(np.zeros(p.shape))
                continue
            i = np.clip(np.searchsorted(a, p, side="right") - 1, 0, len(a) - 2)
            f = np.clip((p - a[i]) / (a[i + 1] - a[i]), 0.0, 1.0)   # edges held outside the grid
            lo_idx.append(i)
            frac.append(f)
        out = np.zeros(lo_idx[0].shape)
        ndim = len(self.axes)
        for corner in range(1 << ndim):
            w = np.ones(out.shape)
            idx = []
            for d in range(ndim):
                up = (corner >> d) & 1
                if len(self.axes[d]) == 1:
                    if up:
                        w = None
                        break
                    idx.append(lo_idx[d])
                    continue
                idx.append(lo_idx[d] + up)
                w = w * (frac[d] if up else 1.0 - frac[d])
            if w is None:
                continue
            out += w * self.values[tuple(idx)]
        return out.reshape(shape)

    def inside(self, *sizes) -> np.ndarray:
        """True where every size lies within the grid's measured range (else the label is extrapolated)."""
        ok = np.ones(np.broadcast_shapes(*(np.shape(s) for s in sizes)), dtype=bool)
        for a, s in zip(self.axes, sizes):
            p = np.log2(np.maximum(np.asarray(s, dtype=float), 1e-30))
            ok &= (p >= a[0] - 1e-9) & (p <= a[-1] + 1e-9)
        return ok

    # -- storage --------------------------------------------------------------------------------------
    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {f"{prefix}/values": self.values.astype(np.float16)}   # log-efficiency to ±0.05 %
        for n, a in zip(self.names, self.axes):
            out[f"{prefix}/axis/{n}"] = a.astype(np.float32)
        return out

    @classmethod
    def from_arrays(cls, arrays, prefix: str, names: tuple[str, ...]) -> "Grid":
        return cls(names, [np.asarray(arrays[f"{prefix}/axis/{n}"], dtype=float) for n in names],
                   np.asarray(arrays[f"{prefix}/values"], dtype=float))


class Curve:
    """Latency of a collective: a floor blended into a bandwidth line, ``(a^p + (x/bw)^p)^(1/p)``.

    Used for MoE all-to-all: its tables are short and noisy (±15 % between neighbours at small
    sizes) and its rows mix hidden sizes and top-k, so a smooth curve in the bytes moved predicts
    held-out rows better than a grid (9-11 % median). All-reduce, measured densely per GPU count,
    is a grid (1-2 %).
    """

    __slots__ = ("a", "bw", "p")

    def __init__(self, a: float, bw: float, p: float) -> None:
        self.a, self.bw, self.p = float(a), float(bw), float(p)

    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return (self.a ** self.p + (x / self.bw) ** self.p) ** (1.0 / self.p)

    @classmethod
    def fit(cls, x: np.ndarray, t: np.ndarray) -> "Curve":
        """Least squares on log latency (relative error), from a floor / bandwidth starting guess."""
        from scipy.optimize import least_squares  # local: only refits need scipy.optimize

        x = np.asarray(x, dtype=float)
        t = np.asarray(t, dtype=float)
        a0 = float(np.min(t))
        big = x >= np.quantile(x, 0.75)
        bw0 = float(np.median(x[big] / t[big])) if big.any() else float(x.max() / t.max())

        def resid(q):
            return np.log(cls(np.exp(q[0]), np.exp(q[1]), 0.3 + np.exp(q[2]))(x)) - np.log(t)

        r = least_squares(resid, [np.log(a0), np.log(max(bw0, 1.0)), np.log(0.7)])
        return cls(np.exp(r.x[0]), np.exp(r.x[1]), 0.3 + np.exp(r.x[2]))

    def to_array(self) -> np.ndarray:
        return np.array([self.a, self.bw, self.p])


def _change_rate(lines: np.ndarray, x: np.ndarray) -> float:
    """How well interpolation along the last axis works here: the median |error| of predicting each
    measured cell from its measured neighbours on both sides (log-efficiency)."""
    errs = []
    flat = lines.reshape(-1, lines.shape[-1])
    for row in flat[(~np.isnan(flat)).sum(axis=1) >= 3]:
        k = np.nonzero(~np.isnan(row))[0]
        xl, xm, xr = x[k[:-2]], x[k[1:-1]], x[k[2:]]
        pred = row[k[:-2]] + (row[k[2:]] - row[k[:-2]]) * (xm - xl) / (xr - xl)
        errs.append(np.abs(pred - row[k[1:-1]]))
    return float(np.median(np.concatenate(errs))) + 1e-3 if errs else 1.0


def _axis_candidates(lines: np.ndarray, x: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Along the last axis: each hole's fill from its known neighbours and its expected error (lower wins).

    Bracketed holes (known cells on both sides, interpolated) score the axis's ``rate``; the others
    1e6 plus the log2 distance to the nearest known cell (held flat); inf where a line knows nothing.
    """
    shape = lines.shape
    flat = lines.reshape(-1, shape[-1])
    cand = np.full(flat.shape, np.nan)
    width = np.full(flat.shape, np.inf)
    holes = np.isnan(flat)
    for i in np.nonzero(holes.any(axis=1) & ~holes.all(axis=1))[0]:
        known = np.nonzero(~holes[i])[0]
        h = np.nonzero(holes[i])[0]
        cand[i, h] = np.interp(x[h], x[known], flat[i, known])
        right = np.searchsorted(known, h)
        has_l, has_r = right > 0, right < len(known)
        xl = np.where(has_l, x[known[np.maximum(right - 1, 0)]], -np.inf)
        xr = np.where(has_r, x[known[np.minimum(right, len(known) - 1)]], np.inf)
        inside = has_l & has_r
        width[i, h] = np.where(inside, rate, 1e6 + np.minimum(x[h] - xl, xr - x[h]))
    return cand.reshape(shape), width.reshape(shape)
