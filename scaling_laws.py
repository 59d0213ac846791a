"""Scaling laws: the law, how to fit it to runs, and what it says about the best model for a budget.

A language model's loss falls as a power law in its size N and its training tokens D, down to the
entropy of the text, E (Kaplan et al. 2020; Hoffmann et al. 2022, eq. 2):

    L(N, D) = E + A / N^alpha + B / D^beta

Training costs C ~ 6 N D FLOPs, so at a fixed budget C a bigger model sees fewer tokens: the best
split is where the two terms trade off. Minimising L under C = 6ND (section 2) gives

    N_opt = G (C/6)^a,  D_opt = (C/6) / N_opt,  G = (alpha A / (beta B))^(1/(alpha+beta)),
    a = beta / (alpha + beta)

Chinchilla found a ~ 0.5 and D/N ~ 20 tokens per parameter; scaling.py measures it for itself.

How we fit (section 1), with numpy and torch only:
  approach 3  the law above, on all runs at once: Huber loss on log-loss residuals, starts from a
              grid, refined with L-BFGS (Hoffmann et al. sec 3.3, Besiroglu et al. 2024);
  approach 2  one parabola in log N per budget: its vertex is that budget's N_opt and D_opt;
              then N_opt ~ C^a and D_opt ~ C^b, and D_opt / N_opt, tokens per parameter.
              Expect it to differ from Chinchilla's ~20: their tokens are ~4 bytes of BPE, ours
              are single bytes (a quarter of the information each); their models are 1e7-1e10
              parameters at 1e18+ FLOPs, ours 1e4-1e5 at 1e11, where the head is a large share of
              N and attention a large share of C; and the ratio moves with C unless a = 0.5;
  frontier    the best loss per budget, L*(C) = E + A C^-gamma.
Every exponent gets a 95% bootstrap interval (resampling runs).

Everything here takes plain arrays of (C, N, D, loss), so the tests check it on synthetic losses
with known constants and on Chinchilla's published ones before it meets a real run.

Read in this order: 1. the fits (the Huber objective, the start grid, L-BFGS, approach 3, the
frontier, approach 2, all three at once, the bootstrap); 2. the compute-optimal split in closed
form and by brute force (under 6N, or under a grid's real cost per token), and what rounding did
to Chinchilla's constants.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------
# 1. The fits: approach 3, the frontier and approach 2, then the bootstrap.

HUBER_DELTA = 1e-3   # Hoffmann et al. 2022, sec 3.3: Huber loss on log-loss residuals, delta = 1e-3


def huber(residual, delta=HUBER_DELTA):
    """Huber (1964): quadratic for |r| <= delta, linear beyond, so a single bad run cannot drag
    the fit. With delta = 1e-3 and ~1% noise on the loss nearly every residual is in the linear
    part: in practice this is a least-absolute-deviations fit, robust to outliers."""
    a = np.abs(residual)
    return np.where(a <= delta, 0.5 * residual ** 2, delta * (a - 0.5 * delta))


def _grid_starts(log_x, loss, delta, n_starts, exponent_grid):
    """Starting points for the non-linear fit, by variable projection.

    For fixed exponents s the law L = E + sum_j A_j x_j^-s_j is LINEAR in (E, A_j), so ordinary
    least squares gives the best constants for every point of an exponent grid at once. We score
    each grid point with the real objective and keep the n_starts best as starting points.
    log_x: (n, k) centred logs of the k variables; loss: (n,). Returns (n_starts, 1 + 2k) thetas.
    """
    n, k = log_x.shape
    S = np.stack(np.meshgrid(*[exponent_grid] * k, indexing="ij"), -1).reshape(-1, k)  # (P, k)
    X = np.concatenate([np.ones((len(S), n, 1)),
                        np.exp(-S[:, None, :] * log_x[None])], axis=2)                  # (P, n, 1+k)
    coef = (np.linalg.pinv(X) @ loss[:, None])[..., 0]                                  # (P, 1+k)
    coef = np.maximum(coef, 1e-6)        # the law's constants are positive; clip for the logs
    pred = (X @ coef[..., None])[..., 0]                                                 # (P, n)
    score = huber(np.log(pred) - np.log(loss), delta).mean(axis=1)                       # (P,)
    best = np.argsort(score)[:n_starts]
    return np.concatenate([np.log(coef[best]), S[best]], axis=1)           # [log E, log A_j, s_j]


def _refine(theta, log_x, log_loss, delta, max_iter=300):
    """Minimise mean Huber(log L_hat - log L) with L-BFGS from one start; returns (theta, objective).

    The law is written in log space as log L_hat = logsumexp(e, a_1 - s_1 log x_1, ...), with
    e = log E and a_j = log A_j (Hoffmann et al. 2022, eq. 3): positivity of E and A_j is then
    automatic and the problem is smooth. We divide the objective by delta so that it and its
    gradient are O(1): with delta = 1e-3 the raw objective is ~1e-5 and an optimiser with default
    tolerances stops at once -- Besiroglu et al. 2024 trace part of the gap between Chinchilla's
    published fit and its data to exactly this (the optimiser stopped before convergence).
    L-BFGS in torch (float64, strong-Wolfe line search) rather than a hand-written numpy
    optimiser: autograd gives the exact gradient and the line search makes it safe on the
    almost-L1 surface that a small delta produces.
    """
    lx = torch.as_tensor(log_x, dtype=torch.float64)                          # (n, k)
    ly = torch.as_tensor(log_loss, dtype=torch.float64)                       # (n,)
    k = lx.shape[1]
    theta = torch.tensor(theta, dtype=torch.float64, requires_grad=True)      # (1 + 2k,)

    def objective():
        e, a, s = theta[:1], theta[1:1 + k], theta[1 + k:]
        terms = torch.cat([e.expand(len(lx), 1), a - s * lx], dim=1)         # (n, 1 + k)
        return F.huber_loss(torch.logsumexp(terms, dim=1), ly, delta=delta) / delta

    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = objective()
        value.backward()
        return value

    opt.step(closure)
    with torch.no_grad():
        return theta.detach().numpy().copy(), float(objective())


def fit_power_sum(xs, loss, delta=HUBER_DELTA, n_starts=4, warm_start=None,
                  exponent_grid=np.linspace(0.02, 1.5, 38)):
    """Fit L = E + sum_j A_j / x_j^s_j to observed losses (k = len(xs) terms).

    Approach 3 is k = 2 with x = (N, D); the compute frontier is k = 1 with x = C. The recipe is
    Hoffmann et al.'s (Huber on log residuals, many starts, L-BFGS) with the start grid replaced by
    variable projection (see _grid_starts), which finds the right basin with far fewer L-BFGS runs.
    warm_start: an earlier result to refine as well (the bootstrap passes the full-data fit).
    Returns dict(E, coef=[A_j], expo=[s_j], objective).
    """
    loss = np.asarray(loss, dtype=np.float64)
    log_x = np.log(np.stack([np.asarray(x, dtype=np.float64) for x in xs], axis=1))   # (n, k)
    # Centre log x: the constants become O(1) (A_j for N ~ 1e5 would be ~e^10 otherwise), which
    # keeps least squares well conditioned and L-BFGS well scaled. Undone before returning.
    centre = log_x.mean(axis=0)                                                        # (k,)
    log_x = log_x - centre
    starts = list(_grid_starts(log_x, loss, delta, n_starts, exponent_grid))
    if warm_start is not None:
        s = np.asarray(warm_start["expo"])
        starts.append(np.concatenate([[math.log(warm_start["E"])],
                                      np.log(warm_start["coef"]) - s * centre, s]))
    best = min((_refine(t, log_x, np.log(loss), delta) for t in starts), key=lambda r: r[1])
    theta, objective = best
    k = log_x.shape[1]
    expo = theta[1 + k:]
    coef = np.exp(theta[1:1 + k] + expo * centre)     # A x'^-s with x' = x / e^centre
    return dict(E=float(np.exp(theta[0])), coef=[float(c) for c in coef],
                expo=[float(s) for s in expo], objective=objective)


def fit_loss_law(N, D, loss, warm=None, **kw):
    """Chinchilla approach 3: L(N, D) = E + A / N^alpha + B / D^beta, from every run at once."""
    if warm is not None:
        kw["warm_start"] = dict(E=warm["E"], coef=[warm["A"], warm["B"]],
                                expo=[warm["alpha"], warm["beta"]])
    r = fit_power_sum([N, D], loss, **kw)
    return dict(E=r["E"], A=r["coef"][0], B=r["coef"][1], alpha=r["expo"][0], beta=r["expo"][1])


def loss_law(law, N, D):
    """The fitted (or published) L(N, D)."""
    return law["E"] + law["A"] / np.power(N, law["alpha"]) + law["B"] / np.power(D, law["beta"])


def fit_frontier(C, loss, warm=None, **kw):
    """The compute frontier L*(C) = E + A C^-gamma, fitted to the best loss at each budget."""
    if warm is not None:
        kw["warm_start"] = dict(E=warm["E"], coef=[warm["A"]], expo=[warm["gamma"]])
    r = fit_power_sum([C], loss, **kw)
    return dict(E=r["E"], A=r["coef"][0], gamma=r["expo"][0])


def frontier_law(fit, C):
    return fit["E"] + fit["A"] * np.power(C, -fit["gamma"])


def fit_isoflop(C, N, D, loss):
    """Chinchilla approach 2: one parabola in log N per compute budget (an IsoFLOP profile).

    Along a row of equal compute, loss against log N is a valley: small models are too weak,
    big ones saw too few tokens. The parabola's vertex gives that budget's N_opt and L_opt; D_opt
    is read from the same row (log D is linear in log N along it, as D = C / cost(N)). Straight
    lines in log-log then give N_opt ~ C^a and D_opt ~ C^b.
    Returns dict(rows=[{C, N_opt, D_opt, L_opt, inside, curvature}], a, b, kN, kD) where inside
    says the vertex lies strictly within the row's sizes (only such rows enter the power laws).
    """
    C, N, D, loss = (np.asarray(v, dtype=np.float64) for v in (C, N, D, loss))
    rows = []
    for budget in np.unique(C):
        m = C == budget
        logN = np.log(N[m])
        if len(np.unique(logN)) < 3:                     # a parabola needs three distinct sizes
            continue
        c2, c1, c0 = np.polyfit(logN, loss[m], 2)
        vertex = -c1 / (2 * c2) if c2 > 0 else np.nan
        inside = bool(c2 > 0 and logN.min() < vertex < logN.max())
        L_opt = float(np.polyval([c2, c1, c0], vertex))
        if not inside:                                   # no valley inside the row: the best run
            vertex, L_opt = logN[np.argmin(loss[m])], float(loss[m].min())   # is all we know
        slope, icpt = np.polyfit(logN, np.log(D[m]), 1)
        rows.append(dict(C=float(budget), N_opt=float(np.exp(vertex)),
                         D_opt=float(np.exp(icpt + slope * vertex)), L_opt=L_opt,
                         inside=inside, curvature=float(c2)))
    out = dict(rows=rows, a=np.nan, b=np.nan, kN=np.nan, kD=np.nan)
    good = [r for r in rows if r["inside"]]
    if len(good) >= 2:
        logC = np.log([r["C"] for r in good])
        out["a"], logkN = np.polyfit(logC, np.log([r["N_opt"] for r in good]), 1)
        out["b"], logkD = np.polyfit(logC, np.log([r["D_opt"] for r in good]), 1)
        out["kN"], out["kD"] = float(np.exp(logkN)), float(np.exp(logkD))
    return out


def fit_all(C, N, D, loss, warm=None, n_starts=4):
    """The three fits on one set of runs: approach 3, approach 2, and the frontier through the
    IsoFLOP minima. C is each run's compute budget (the row it belongs to). warm: an earlier
    fit_all result whose optima are refined too (the bootstrap passes the full-data fit)."""
    law = fit_loss_law(N, D, loss, warm=warm and warm["law"], n_starts=n_starts)
    iso = fit_isoflop(C, N, D, loss)
    frontier = None
    if len(iso["rows"]) >= 3:                       # three constants need three budgets at least
        frontier = fit_frontier([r["C"] for r in iso["rows"]], [r["L_opt"] for r in iso["rows"]],
                                warm=warm and warm["frontier"], n_starts=n_starts)
    return dict(law=law, iso=iso, frontier=frontier)


def headline(fits):
    """The scalars we put intervals on: every fitted exponent, and the constants behind them."""
    law, iso, fr = fits["law"], fits["iso"], fits["frontier"] or {}
    return dict(alpha=law["alpha"], beta=law["beta"], E=law["E"], A=law["A"], B=law["B"],
                a3=law["beta"] / (law["alpha"] + law["beta"]),      # N_opt ~ C^a3 (approach 3)
                a2=iso["a"], b2=iso["b"],                           # N_opt ~ C^a2, D_opt ~ C^b2
                gamma=fr.get("gamma", np.nan), E_frontier=fr.get("E", np.nan),
                A_frontier=fr.get("A", np.nan))


def bootstrap(C, N, D, loss, n_boot=200, seed=0, warm=None):
    """Refit on n_boot resamples of the runs; returns a list of fit_all results (None = failed).

    Resampling is over runs (each run is one noisy measurement), with replacement and WITHIN each
    compute budget, so every resample keeps the IsoFLOP design (a row can still lose its valley if
    it draws too few distinct sizes; that replicate's approach-2 numbers are then NaN). The spread
    of a quantity over the resamples is its uncertainty; we report the 2.5th-97.5th percentiles
    (Efron & Tibshirani 1993).

    When the budgets are not shared (every run its own C, as in Chinchilla's published points),
    resampling within a budget would redraw each run itself and return the original data every
    time: intervals of zero width. Then the runs are resampled as one pool, and a note says so.
    """
    C, N, D, loss = (np.asarray(v, dtype=np.float64) for v in (C, N, D, loss))
    rng = np.random.default_rng(seed)
    rows = [np.flatnonzero(C == c) for c in np.unique(C)]
    if max(len(r) for r in rows) < 2:
        print("note: no two runs share a compute budget; the bootstrap resamples all runs as one pool")
        rows = [np.arange(len(C))]
    fits = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(r, size=len(r), replace=True) for r in rows])
        try:
            fits.append(fit_all(C[idx], N[idx], D[idx], loss[idx], warm=warm, n_starts=1))
        except (np.linalg.LinAlgError, ValueError):
            fits.append(None)
    return fits


def intervals(samples, level=95.0):
    """name -> (low, high) percentile interval over bootstrap replicates, NaNs dropped."""
    names = samples[0].keys() if samples else []
    lo, hi = (100 - level) / 2, 100 - (100 - level) / 2
    out = {}
    for name in names:
        v = np.array([s[name] for s in samples], dtype=np.float64)
        v = v[np.isfinite(v)]
        out[name] = (float(np.percentile(v, lo)), float(np.percentile(v, hi))) if len(v) else (np.nan, np.nan)
    return out


# ----------------------------------------------------------------------------------------------
# 2. The compute-optimal split, in closed form and by brute force, and Chinchilla's constants.

CHINCHILLA = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)   # Hoffmann et al. 2022, eq. 10
# Besiroglu et al. 2024 ("Chinchilla Scaling: A replication attempt"), refit of approach 3 to the
# data they reconstructed from Hoffmann et al.'s figures.
BESIROGLU = dict(E=1.82, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)
# What rounding does. Minimising L(N, D) at fixed C = 6ND gives (compute_optimum below)
#     N_opt = G (C/6)^a,  D_opt = (C/6) / N_opt,  G = (alpha A / (beta B))^(1/(alpha+beta)),
#     a = beta / (alpha + beta),  tokens per parameter D/N = G^-2 (C/6)^((alpha-beta)/(alpha+beta)).
# The exponent of C in D/N is a small difference of two fitted numbers, multiplied by
# log(C/6) = 52.9 at Chinchilla's budget (5.76e23 FLOPs), so two-decimal rounding is amplified:
#   published E=1.69 A=406.4 B=410.7 alpha=.34 beta=.28: a = 0.452 (Hoffmann et al.'s Table 2 says
#       0.46 for approach 3 and ~0.50 for approaches 1 and 2); at 5.76e23 N_opt = 32B and
#       D/N = 93, not Chinchilla's own 70B params on 1.4T tokens (D/N = 20);
#   any alpha in [.335, .345] and beta in [.275, .285] (all round to the published values) gives
#       D/N anywhere from 44 to 196 at that budget (and 26 to 96 at 1e21 FLOPs);
#   Besiroglu et al.'s refit (alpha = .3478, beta = .3658): a = 0.513, N_opt = 72B, D/N = 18.4,
#       in line with approaches 1 and 2 and with Chinchilla itself.
# So a fitted law is only as useful as its least rounded exponent: we keep full precision in the
# JSON, and report intervals for a and b, not only for alpha and beta.


def compute_optimum(law, C):
    """Closed-form compute-optimal N and D for L = E + A/N^alpha + B/D^beta under C = 6 N D."""
    alpha, beta = law["alpha"], law["beta"]
    G = (alpha * law["A"] / (beta * law["B"])) ** (1.0 / (alpha + beta))
    N = G * np.power(np.asarray(C, dtype=np.float64) / 6.0, beta / (alpha + beta))
    return N, np.asarray(C, dtype=np.float64) / (6.0 * N)


def search_optimum(law, C, flops_per_token=lambda N: 6.0 * N, N_range=(1e2, 1e14)):
    """Brute force: the N minimising L(N, C / flops_per_token(N)), on a log grid refined twice.

    With the default cost 6N it must agree with compute_optimum (a test checks it); with our
    models' real cost per token (6N + attention) it is how the fitted law plans a run.
    """
    lo, hi = np.log(N_range[0]), np.log(N_range[1])
    for _ in range(3):
        N = np.exp(np.linspace(lo, hi, 1001))
        best = int(np.argmin(loss_law(law, N, C / flops_per_token(N))))
        step = (hi - lo) / 1000
        lo, hi = np.log(N[best]) - 2 * step, np.log(N[best]) + 2 * step
    N_opt = float(N[best])
    return N_opt, float(C / flops_per_token(N_opt))


def cost_per_token(ladder_counts):
    """FLOPs per token as a function of N between the rungs of a ladder (log-log interpolation of
    flops_per_token / N), so a fitted law can be minimised under our real cost, attention included."""
    logN = np.log([n for n, _ in ladder_counts])
    ratio = np.array([f / n for n, f in ladder_counts])
    order = np.argsort(logN)
    return lambda N: np.asarray(N) * np.interp(np.log(N), logN[order], ratio[order])
