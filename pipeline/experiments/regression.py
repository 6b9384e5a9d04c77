"""Mixture regression (RegMix, Liu et al. 2024, "Data Mixture as Regression"), numpy only.

Fit the sweep metric as a quadratic in the mixture weights: ridge regression on the
weights and their pairwise products (on the simplex the squares are linear combinations
of those, so this is every quadratic), solved in closed form on standardised features
with an unpenalised intercept. The penalty is chosen by leave-one-out error (exact, from
the hat matrix), and the leave-one-out predictions give the reported Spearman rank
correlation with the observed values: how far the fit can be trusted to *rank*
mixtures, which is all choosing one needs.

The predicted optimum is searched on the simplex with every weight at least its minimum:
dense Dirichlet sampling, then local refinement (Dirichlet draws concentrated around the
best point, tightening as long as they improve).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def features(w: np.ndarray) -> np.ndarray:
    """[w_1..w_k, w_i*w_j for i<j]."""
    w = np.atleast_2d(np.asarray(w, dtype=float))
    k = w.shape[1]
    cross = [w[:, i] * w[:, j] for i in range(k) for j in range(i + 1, k)]
    return np.column_stack([w, *cross]) if cross else w


@dataclass
class MixtureRegression:
    sources: list[str]
    alpha: float
    mean: np.ndarray = field(repr=False)
    scale: np.ndarray = field(repr=False)
    coef: np.ndarray = field(repr=False)
    intercept: float = 0.0
    loo_predictions: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    spearman: float = float("nan")       # leave-one-out predictions vs observed
    r2_train: float = float("nan")

    def predict(self, w: np.ndarray) -> np.ndarray:
        x = (features(w) - self.mean) / self.scale
        return x @ self.coef + self.intercept


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float):
    """Closed-form ridge on centred data; returns (coef, intercept, loo predictions)."""
    xm, ym = x.mean(0), y.mean()
    xc, yc = x - xm, y - ym
    a = xc.T @ xc + alpha * np.eye(x.shape[1])
    coef = np.linalg.solve(a, xc.T @ yc)
    # hat matrix of the centred fit plus the intercept's 1/n
    h = np.einsum("ij,ji->i", xc, np.linalg.solve(a, xc.T)) + 1.0 / len(y)
    fitted = xc @ coef + ym
    loo = y - (y - fitted) / np.clip(1.0 - h, 1e-9, None)
    return coef, ym - xm @ coef, loo


def fit(weights: np.ndarray, y: np.ndarray, sources: list[str],
        alpha: float | None = None) -> MixtureRegression:
    """Fit on ``weights`` (n x k, rows on the simplex) and observed metric values ``y``."""
    weights = np.asarray(weights, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(y) < 3:
        raise ValueError(f"the mixture regression needs at least 3 trials with a metric, got {len(y)}")
    raw = features(weights)
    mean = raw.mean(0)
    scale = raw.std(0)
    scale[scale < 1e-12] = 1.0
    x = (raw - mean) / scale
    candidates = [alpha] if alpha else list(ALPHAS)
    best = None
    for a in candidates:
        coef, intercept, loo = _ridge(x, y, a)
        err = float(np.mean((loo - y) ** 2))
        if best is None or err < best[0] - 1e-15:
            best = (err, a, coef, intercept, loo)
    _, a, coef, intercept, loo = best
    fitted = x @ coef + intercept
    ss = float(np.sum((y - y.mean()) ** 2))
    return MixtureRegression(sources, a, mean, scale, coef, float(intercept), loo,
                             spearman(loo, y),
                             1.0 - float(np.sum((y - fitted) ** 2)) / ss if ss > 0 else float("nan"))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):                 # ties share their mean rank
        idx = x == v
        if idx.sum() > 1:
            ranks[idx] = ranks[idx].mean()
    return ranks


def search_optimum(model: MixtureRegression, min_weights: np.ndarray, *, maximize: bool = False,
                   samples: int = 50_000, rounds: int = 40, seed: int = 0) -> tuple[np.ndarray, float]:
    """The mixture with the best predicted metric, every weight >= its minimum."""
    rng = np.random.default_rng(seed)
    k = len(model.sources)
    mins = np.asarray(min_weights, dtype=float)
    free = 1.0 - mins.sum()
    sign = -1.0 if maximize else 1.0
    # dense sampling: uniform on the simplex plus the vertices and edge midpoints
    cand = rng.dirichlet(np.ones(k), size=samples)
    cand = np.vstack([cand, np.eye(k), (np.eye(k)[:, None] + np.eye(k)[None]).reshape(-1, k) / 2])
    cand = mins + free * cand
    scores = sign * model.predict(cand)
    best = cand[int(np.argmin(scores))]
    best_score = float(scores.min())
    conc = 50.0
    for _ in range(rounds):                # local refinement around the incumbent
        u = (best - mins) / free
        local = rng.dirichlet(np.maximum(u * conc, 1e-3) + 1e-3, size=2000)
        local = mins + free * local
        s = sign * model.predict(local)
        i = int(np.argmin(s))
        if s[i] < best_score:
            best, best_score = local[i], float(s[i])
        else:
            conc *= 2.0                    # no better point nearby: look closer
        if conc > 1e7:
            break
    return best, sign * best_score
