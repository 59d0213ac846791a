"""Scaling laws from scratch: train a grid of tiny models, fit the laws, plot loss against compute.

A language model's loss falls as a power law in its size N and its training tokens D, down to the
entropy of the text, E (Kaplan et al. 2020; Hoffmann et al. 2022, eq. 2):

    L(N, D) = E + A / N^alpha + B / D^beta

Training costs C ~ 6 N D FLOPs, so at a fixed budget C a bigger model sees fewer tokens: the best
split is where the two terms trade off. Minimising L under C = 6ND (section 3) gives

    N_opt = G (C/6)^a,  D_opt = (C/6) / N_opt,  G = (alpha A / (beta B))^(1/(alpha+beta)),
    a = beta / (alpha + beta)

Chinchilla found a ~ 0.5 and D/N ~ 20 tokens per parameter. This file measures it for itself.

What we count (section 1). N is every parameter that takes part in a matrix multiply: the
non-embedding weights plus the tied output head (vocab x width), as Hoffmann et al. 2022 and
Porian et al. 2024 advise, not Kaplan et al.'s non-embedding count (Pearce & Song 2024 trace
much of the Kaplan/Chinchilla disagreement to that choice: at small N the head is a large share).
C = model.flops_per_token() * D: 6N plus attention's 12 * n_layer * T * width (PaLM), which at
these widths is 10-30% of the total, so C = 6ND alone would be wrong here. Because the head
grows with the vocabulary, the sweep uses a byte tokenizer: with a 50k vocabulary the "model"
would be mostly head.

How we measure (section 4). An IsoFLOP grid (Hoffmann et al.'s approach 2): a few compute
budgets, and at each budget 5 model sizes ~2x apart around a guess of the optimum, each trained
for D = C / flops_per_token tokens. Every run has its own warmup + cosine schedule that ends
exactly at its own budget (a schedule longer than the run leaves its loss too high, the mistake
Hoffmann et al. found in Kaplan et al.), a peak learning rate that falls as 1/width and initial
weights whose std falls as 1/sqrt(width) (one setting for every size tunes one and mistunes the
rest, a bias that changes with N and that the law then extrapolates: with one setting at every
width our 3x extrapolation missed by 8-9%; with both rules, by 1.1%), the same validation set
(the whole held-out split), at least min_steps optimiser steps where it can (500 in the cpu
preset; smaller batches for the runs with few tokens), and at most ~4 epochs over the data
(beyond that, repeated tokens are worth less than fresh ones, Muennighoff et al. 2023). A few
configurations run with 3 seeds to measure the noise. Each finished run is appended to a JSONL
file, so a killed sweep resumes where it stopped. The runs are independent, so on a CPU they train
side by side, one process with one thread per core (--workers): the results do not change.

How we fit (section 2), with numpy and torch only:
  approach 3  the law above, on all runs at once: Huber loss on log-loss residuals, starts from a
              grid, refined with L-BFGS (Hoffmann et al. sec 3.3, Besiroglu et al. 2024);
  approach 2  one parabola in log N per budget: its vertex is that budget's N_opt and D_opt;
              then N_opt ~ C^a and D_opt ~ C^b, and D_opt / N_opt, tokens per parameter.
              Expect it to differ from Chinchilla's ~20: their tokens are ~4 bytes of BPE, ours
              are single bytes (a quarter of the information each); their models are 1e7-1e10
              parameters at 1e18+ FLOPs, ours 1e4-1e5 at 1e11, where the head is a large share of
              N and attention a large share of C; and the ratio moves with C unless a = 0.5;
  frontier    the best loss per budget, L*(C) = E + A C^-gamma.
Every exponent gets a 95% bootstrap interval (resampling runs). Then the honesty check: one run
at >= 3x the largest fitted budget, sized by the fit, is predicted BEFORE it is trained; we report
the error and whether the interval covered it.

Read in this order: 1. counting; 2. the fits; 3. the closed-form optimum and what rounding did to
Chinchilla's constants; 4. the sweep (presets, plan, probe, runs, resume); 5. the report and
plots; 6. the command line.

    python scaling.py                    # the cpu preset: the whole study, minutes on 2 cores (RESULTS.md)
    python scaling.py --dry-run          # the plan and the predicted wall time, nothing trained
    python scaling.py --plot-only        # refit and replot from runs/scaling-cpu/results.jsonl
"""
import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

import data
import plumbing
import train_clm
from model import ModelConfig, Transformer
from plumbing import UserError, knob

# ----------------------------------------------------------------------------------------------
# 1. Counting: N and FLOPs per token of a shape, read off model.py so there is one definition.

def shape_counts(shape, vocab_size, block_size):
    """(N, training FLOPs per token) for shape = (n_layer, n_head, n_embd).

    N = non-embedding parameters + the tied head (vocab_size * n_embd): the weights that do matrix
    multiplies (Hoffmann et al. 2022; Porian et al. 2024). The position table is a lookup and is
    left out.
    """
    n_layer, n_head, n_embd = shape
    model = Transformer(ModelConfig(vocab_size=vocab_size, block_size=block_size,
                                    n_layer=n_layer, n_head=n_head, n_embd=n_embd))
    return model.num_params(non_embedding=True) + vocab_size * n_embd, model.flops_per_token()


def cost_per_token(ladder_counts):
    """FLOPs per token as a function of N between the rungs of a ladder (log-log interpolation of
    flops_per_token / N), so a fitted law can be minimised under our real cost, attention included."""
    logN = np.log([n for n, _ in ladder_counts])
    ratio = np.array([f / n for n, f in ladder_counts])
    order = np.argsort(logN)
    return lambda N: np.asarray(N) * np.interp(np.log(N), logN[order], ratio[order])


# ----------------------------------------------------------------------------------------------
# 2. The fits. Everything below takes plain arrays, so it is tested on synthetic losses with known
#    constants before it ever sees a real run.

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
# 3. The compute-optimal split, in closed form and by brute force, and Chinchilla's constants.

CHINCHILLA = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)   # Hoffmann et al. 2022, eq. 10
# Besiroglu et al. 2024 ("Chinchilla Scaling: A replication attempt"), refit of approach 3 to the
# data they reconstructed from Hoffmann et al.'s figures.
BESIROGLU = dict(E=1.82, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)
# What rounding does. Minimising L(N, D) at fixed C = 6ND gives (compute_optimum below)
#     N_opt = G (C/6)^a,  D_opt = (C/6) / N_opt,  G = (alpha A / (beta B))^(1/(alpha+beta)),
#     a = beta / (alpha + beta),  tokens per parameter D/N = G^-2 (C/6)^((alpha-beta)/(alpha+beta)).
# The exponent of C in D/N is a small difference of two fitted numbers, multiplied by
# log(C/6) ~ 54 at Chinchilla's budget (5.76e23 FLOPs), so two-decimal rounding is amplified:
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


# ----------------------------------------------------------------------------------------------
# 4. The sweep: presets, the plan, the speed probe, the runs, the results file.

@dataclass
class SweepPreset:
    ladder: list                 # model shapes (n_layer, n_head, n_embd), about 2x apart in N
    budgets: list                # the IsoFLOP rows, in FLOPs, about 2x apart
    train: dict                  # TrainConfig settings shared by every run
    optimum_guess: tuple         # (C_ref, N_ref, a): rows are centred on N ~ N_ref (C / C_ref)^a
    sizes_per_row: int = 5       # model sizes per budget
    seed_configs: int = 3        # this many configurations (the centre of the first rows) x 3 seeds
    holdout_factor: float = 3.0  # held-out budget / the largest fitted budget
    max_epochs: float = 4.0      # Muennighoff et al. 2023: up to ~4 epochs is as good as fresh data
    min_steps: int = 1000        # halve a run's batch (down to min_batch) until it has this many steps
    min_batch: int = 4
    lr_width: int = 0            # the width at which train["lr"] is the peak; other widths get
                                 # lr * lr_width / width (0: one learning rate for every width)
    init_width: int = 0          # the width at which the initial weights' std is 0.02; other widths
                                 # get 0.02 * sqrt(init_width / width) (0: 0.02 at every width)
    threads: int = 0             # torch CPU threads for the sweep (0: leave torch's default)


SWEEP_PRESETS = {
    # The default: minutes on 2 CPU cores (timed in RESULTS.md). Byte tokens (vocab 260, padded to 320)
    # keep the head small. ONE layer, width 16 to 144 (8k to 295k parameters): two-layer models
    # learn induction heads at a seed-dependent moment (Olsson et al. 2022), a sudden drop no
    # smooth law fits. Training is limited by steps at ~1e11 FLOPs, so: short context (64), small
    # batches (halved for runs with fewer than 500 steps) and a cosine that ends near zero. The
    # peak learning rate falls as 1/width (8e-3 at width 36) and the initial std as 1/sqrt(width)
    # (0.02 at GPT-2's 768): one setting at every width tunes one size and mistunes the rest, a
    # bias that changes with N and that the law then extrapolates. The probes behind each choice
    # are listed in RESULTS.md. ALiBi on, as in train_clm.py.
    "cpu": SweepPreset(
        ladder=[(1, 1, 16), (1, 1, 24), (1, 2, 36), (1, 2, 52), (1, 3, 72), (1, 4, 104), (1, 6, 144)],
        budgets=[1.25e11, 2.5e11, 5e11, 1e12], optimum_guess=(5e11, 28e3, 0.55), min_steps=500,
        threads=1, lr_width=36, init_width=768,
        train=dict(corpus="pydocs", tokenizer="bytes", block_size=64, batch_size=8, lr=8e-3,
                   min_lr=8e-5, warmup=0.05, precision="fp32", alibi=True)),
    # About an hour on one recent GPU, if it sustains ~1.2M tokens/s on these small models (3.7B
    # tokens in all; the probe measures the real rate before launching). Never run, so not
    # calibrated: the optimum guess is Besiroglu et al.'s fit of Chinchilla, and the learning
    # rate and init follow the cpu preset's width rules. pydocs is far too small for it: pass
    # --corpus with a folder of ~200 MB of .txt files (the plan refuses more than 4 epochs).
    "gpu": SweepPreset(
        ladder=[(4, 2, 128), (4, 3, 192), (6, 4, 224), (6, 5, 320), (8, 6, 384), (8, 8, 512),
                (10, 10, 640)],
        budgets=[1e15, 2e15, 4e15, 8e15], optimum_guess=(1e16, 7.6e6, 0.51), lr_width=256,
        init_width=768,
        train=dict(corpus="pydocs", tokenizer="bpe:1020", block_size=256, batch_size=64, lr=2e-3,
                   min_lr=2e-5, warmup=0.02, precision="auto", compile=True)),
    # For tests and smoke runs: a 2 x 2 grid of micro models, seconds. Too small to fit anything.
    "tiny": SweepPreset(
        ladder=[(1, 1, 8), (1, 2, 16)], budgets=[1e7, 2e7], optimum_guess=(1e7, 5e3, 0.5),
        sizes_per_row=2, seed_configs=0,
        train=dict(corpus="pydocs", tokenizer="bytes", block_size=16, batch_size=4, lr=3e-3,
                   min_lr=3e-4, warmup=0.1, precision="fp32", device="cpu")),
}
CURVE_POINTS = 40                # training-loss points kept per run, for the loss-vs-compute plot


@dataclass
class Setup:
    """What every run of one sweep shares."""
    preset: SweepPreset
    settings: dict               # TrainConfig settings (the preset's, with command-line overrides)
    n_train_tokens: int          # tokens in the training split
    seed: int
    counts: dict                 # shape -> (N, FLOPs per token), see shape_counts


def make_setup(preset, settings, vocab_size, n_train_tokens, seed):
    counts = {tuple(s): shape_counts(s, vocab_size, settings["block_size"]) for s in preset.ladder}
    return Setup(preset, settings, n_train_tokens, seed, counts)


@dataclass
class Run:
    role: str                    # "grid" (fitted) or "holdout" (predicted, never fitted)
    budget: float                # the IsoFLOP row it belongs to, FLOPs
    shape: tuple                 # (n_layer, n_head, n_embd)
    seed: int
    N: int                       # parameters, counted as in section 1
    flops_per_token: int
    batch_size: int              # sequences per step, and the peak learning rate that goes with it
    lr: float
    init_std: float              # std of the initial weights
    steps: int
    tokens: int                  # D
    flops: float                 # C actually spent: flops_per_token * D (whole steps)
    epochs: float                # D / training tokens in the corpus

    @property
    def key(self):
        return f"{self.role}:{self.budget:.4g}:{'-'.join(map(str, self.shape))}:{self.seed}"


def make_run(setup, role, budget, shape, seed):
    """D = budget / flops_per_token, in whole optimiser steps.

    Steps, not only tokens: the big models of a small budget see few tokens, and with a fixed batch
    they would get too few steps to leave the early plateau (loss ~ the unigram entropy), which no
    power law describes. So a run's batch is halved, down to min_batch sequences, until it has
    min_steps steps. That is cheap (few tokens) and sound: early in training the useful batch is
    small (the critical batch grows as the loss falls, McCandlish et al. 2018). The peak learning
    rate follows the square-root rule for Adam, lr ~ sqrt(batch) (Malladi et al. 2022), and, where
    the preset sets lr_width, falls as 1/width: under Adam a weight matrix's update is ~lr per entry
    whatever its gradient's scale, so its effect on the output grows with fan-in, and the stable
    rate of the hidden matrices falls as 1/width (muP, Yang et al. 2022, Table 3). One rate for all
    sizes would tune one size and mistune the others, a bias that changes with N and that a power
    law then extrapolates.
    """
    preset, settings = setup.preset, setup.settings
    N, fpt = setup.counts[tuple(shape)]
    batch = settings["batch_size"]
    while batch > preset.min_batch and budget / fpt / (batch * settings["block_size"]) < preset.min_steps:
        batch //= 2
    tokens_per_step = batch * settings["block_size"] * settings.get("grad_accum", 1)
    steps = max(1, round(budget / (fpt * tokens_per_step)))
    tokens = steps * tokens_per_step
    lr = settings["lr"] * math.sqrt(batch / settings["batch_size"])
    if preset.lr_width:
        lr *= preset.lr_width / shape[2]
    init_std = ModelConfig.init_std                    # GPT-2's 0.02, the model's default
    if preset.init_width:
        init_std *= math.sqrt(preset.init_width / shape[2])
    return Run(role, float(budget), tuple(shape), seed, N, fpt, batch, lr, init_std, steps, tokens,
               float(fpt * tokens), tokens / setup.n_train_tokens)


def plan_sweep(setup):
    """The grid: for each budget, sizes_per_row neighbouring shapes of the ladder around the shape
    closest to the guessed optimum; the centre of the first rows gets 3 seeds.

    A row is centred on the guess when it can be. At the largest budgets the smallest shapes would
    repeat the data more than max_epochs times; then the row slides up the ladder, as long as the
    guess stays strictly inside it (an IsoFLOP minimum on the edge of its row locates nothing).
    """
    preset = setup.preset
    k, ladder = preset.sizes_per_row, preset.ladder
    runs = []
    for i, budget in enumerate(preset.budgets):
        row = [make_run(setup, "grid", budget, s, setup.seed) for s in ladder]
        c_ref, n_ref, a = preset.optimum_guess
        centre = int(np.argmin([abs(math.log(r.N / (n_ref * (budget / c_ref) ** a))) for r in row]))
        firsts = sorted(range(len(ladder) - k + 1), key=lambda f: abs(f + k // 2 - centre))
        fits = [f for f in firsts if (f < centre < f + k - 1 or k < 3)
                and all(r.epochs <= preset.max_epochs for r in row[f:f + k])]
        if not fits:
            worst = max(row[max(0, centre - k // 2):][:k], key=lambda r: r.epochs)
            raise UserError(f"budget {budget:.3g}: no row of {k} sizes around the guessed optimum "
                            f"({row[centre].N:,} parameters) stays within {preset.max_epochs} epochs of "
                            f"the data ({worst.key} needs {worst.epochs:.1f}); use a bigger --corpus, "
                            f"smaller budgets or a longer ladder")
        runs += row[fits[0]:fits[0] + k]
        if i < preset.seed_configs:
            runs += [make_run(setup, "grid", budget, ladder[centre], setup.seed + s) for s in (1, 2)]
    return runs


def plan_holdout(setup, law=None):
    """The honesty check's run: holdout_factor x the largest budget, at the ladder shape that the
    fitted law says is best there (within the epoch limit). It is planned, and its loss predicted,
    before it is trained. Without a law (for the time estimate) the shape nearest the guess."""
    preset = setup.preset
    budget = preset.holdout_factor * max(preset.budgets)
    candidates = [make_run(setup, "holdout", budget, s, setup.seed) for s in preset.ladder]
    allowed = [r for r in candidates if r.epochs <= preset.max_epochs]
    if not allowed:
        raise UserError(f"the held-out budget {budget:.3g} would repeat the data more than "
                        f"{preset.max_epochs} times at every size; use a bigger --corpus")
    if law is None:
        c_ref, n_ref, a = preset.optimum_guess
        return min(allowed, key=lambda r: abs(math.log(r.N / (n_ref * (budget / c_ref) ** a))))
    best = min(allowed, key=lambda r: loss_law(law, r.N, r.tokens))
    if best is not min(candidates, key=lambda r: loss_law(law, r.N, r.tokens)):
        print(f"note: the fit's best shape at {budget:.3g} FLOPs would repeat the data more than "
              f"{preset.max_epochs} times; the held-out run uses the best shape within that limit")
    elif best.shape in (tuple(preset.ladder[0]), tuple(preset.ladder[-1])):
        print("note: the held-out shape is at the end of the ladder; the fit's optimum may lie beyond it")
    return best


def settings_id(settings, dataset):
    """A fingerprint of everything shared by the runs (knobs, corpus, tokenizer): results made
    with other settings must never be mixed into one fit."""
    blob = json.dumps([settings, dataset.corpus, data.tokenizer_identity(dataset.enc)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def train_config(run, settings, **overrides):
    """The TrainConfig of one run: the shared settings plus the run's shape, batch, learning rate and
    budget. max_iters is the budget, so warmup + cosine end exactly there (train_clm.learning_rate);
    no evaluation on the way: only the final one, over the whole validation split, counts."""
    n_layer, n_head, n_embd = run.shape
    lr_scale = run.lr / settings["lr"]
    return train_clm.TrainConfig(**{
        **settings, "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd,
        "batch_size": run.batch_size, "lr": run.lr, "min_lr": settings["min_lr"] * lr_scale,
        "init_std": run.init_std,
        "max_iters": run.steps, "max_tokens": None, "max_seconds": None, "seed": run.seed,
        "eval_interval": run.steps + 1, "log_interval": max(1, run.steps // CURVE_POINTS),
        "out_dir": "", "quiet": True, "sample_tokens": 0, **overrides})


def train_run(run, settings, dataset):
    """The single call into train_clm.train for a run of the sweep; returns its results record."""
    start = time.perf_counter()
    result = train_clm.train(train_config(run, settings), dataset=dataset)
    curve = [[r["flops"], round(r["train_loss"], 4)] for r in result["history"] if "train_loss" in r]
    return dict(dataclasses.asdict(run), key=run.key, val_loss=result["val_loss"],
                val_bpb=result["val_bpb"], train_seconds=round(result["seconds"], 2),
                wall_seconds=round(time.perf_counter() - start, 2), curve=curve)


def probe(runs, settings, dataset, steps=8):
    """Measure before launching. For each (shape, batch) of the runs: a few real training steps (the
    rate over the second half, after the first steps' allocations) and the cost of starting a run;
    the final evaluation is priced as a forward pass, ~1/3 of a training step per token.
    Returns {(shape, batch): (seconds per step, fixed seconds per run)}."""
    block = settings["block_size"]
    short_val = dataclasses.replace(dataset, val=dataset.val[:2 * block + 1])   # setup, not eval
    timing = {}
    for shape, batch in sorted({(r.shape, r.batch_size) for r in runs}):
        run = next(r for r in runs if (r.shape, r.batch_size) == (shape, batch))
        start = time.perf_counter()
        result = train_clm.train(train_config(run, settings, max_iters=steps, log_interval=steps // 2),
                                 dataset=short_val)
        per_step = batch * block / result["history"][-2]["tokens_per_s"]
        setup = max(0.0, time.perf_counter() - start - steps * per_step)
        timing[shape, batch] = (per_step, setup + len(dataset.val) / (batch * block) * per_step / 3)
    return timing


def predict_seconds(runs, timing):
    return sum(r.steps * timing[r.shape, r.batch_size][0] + timing[r.shape, r.batch_size][1]
               for r in runs)


def load_results(path, expected_id=None):
    """The records in a results file (plumbing.read_jsonl), refused if made with other settings."""
    records = plumbing.read_jsonl(path)
    if expected_id is not None and {r.get("settings_id") for r in records} - {expected_id}:
        raise UserError(f"{path} holds runs made with other settings (preset, corpus, tokenizer or "
                        f"training knobs); use another --out-dir or move that file away")
    return records


def run_all(runs, settings, dataset, path, sid, workers=1):
    """Train `runs`, appending each record to the results file as the run finishes. workers > 1:
    that many runs at once, each in its own process with one thread. The runs are independent,
    and a model this small cannot keep two cores busy by itself."""
    if workers > 1:
        records = plumbing.in_processes(train_run_in_worker, [(run, settings) for run in runs], workers)
    else:
        records = (train_run(run, settings, dataset) for run in runs)
    for i, record in enumerate(records, 1):
        plumbing.append_jsonl(path, dict(record, settings_id=sid), durable=True)
        print(f"[{i}/{len(runs)}] {record['key']:32s} N={record['N']:>8,} D={record['tokens']:>10,} "
              f"loss {record['val_loss']:.4f} ({record['wall_seconds']:.1f} s)", flush=True)


def train_run_in_worker(job):
    """train_run in a worker process: one thread, and the dataset opened from the cache (memory-
    mapped, so every worker reads the same file instead of receiving a copy)."""
    run, settings = job
    torch.set_num_threads(1)
    dataset = data.prepare_dataset(settings["corpus"], settings["tokenizer"], settings.get("data_dir"),
                                   settings.get("cache_dir"), verbose=False)
    return train_run(run, settings, dataset)


# ----------------------------------------------------------------------------------------------
# 5. The report: fits with intervals, the held-out prediction, plots.

def seed_noise(grid):
    """Pooled standard deviation of the final loss between seeds of the same configuration."""
    groups = {}
    for r in grid:
        groups.setdefault((r["budget"], tuple(r["shape"])), []).append(r["val_loss"])
    repeated = [np.array(v) for v in groups.values() if len(v) >= 2]
    if not repeated:
        return dict(sd=0.0, configs=0)
    dof = sum(len(v) - 1 for v in repeated)
    sd = math.sqrt(sum(((v - v.mean()) ** 2).sum() for v in repeated) / dof)
    return dict(sd=sd, configs=len(repeated), seeds=max(len(v) for v in repeated))


def columns(runs):
    return (np.array([r[k] for r in runs], dtype=np.float64) for k in ("budget", "N", "tokens", "val_loss"))


def analyse(records, n_boot=200, seed=0, progress=False):
    """Everything the report and the plots need, from the results records alone."""
    grid = [r for r in records if r["role"] == "grid"]
    holdout = next((r for r in records if r["role"] == "holdout"), None)
    rows = {}
    for r in grid:
        rows.setdefault(r["budget"], set()).add(tuple(r["shape"]))
    if sum(len(s) >= 3 for s in rows.values()) < 3:
        return dict(fits=None, reason="too few runs to fit: need 3 budgets with 3 sizes or more")
    C, N, D, L = columns(grid)
    fits = fit_all(C, N, D, L)
    start = time.perf_counter()
    boots = [b for b in bootstrap(C, N, D, L, n_boot, seed, warm=fits) if b]
    if progress:
        print(f"bootstrap: {n_boot} refits on resampled runs in {time.perf_counter() - start:.0f} s")
    ci = intervals([headline(b) for b in boots])
    cost = cost_per_token({(r["N"], r["flops_per_token"]) for r in records})
    law3 = [dict(C=c, N_opt=n, D_opt=d) for c in sorted(rows)
            for n, d in [search_optimum(fits["law"], c, cost)]]
    report = dict(fits=fits, boots=boots, ci=ci, headline=headline(fits), noise=seed_noise(grid),
                  law3_optimum=law3, n_runs=len(grid), n_boot=len(boots))
    if holdout is not None:
        pred = float(loss_law(fits["law"], holdout["N"], holdout["tokens"]))
        spread = np.array([loss_law(b["law"], holdout["N"], holdout["tokens"]) for b in boots])
        lo, hi = np.percentile(spread, [2.5, 97.5])
        # The fit's uncertainty (bootstrap) and a new run's own seed noise add in quadrature.
        z_noise = 1.96 * report["noise"]["sd"]
        lo, hi = pred - math.hypot(pred - lo, z_noise), pred + math.hypot(hi - pred, z_noise)
        measured = holdout["val_loss"]
        frontier = fits["frontier"] and float(frontier_law(fits["frontier"], holdout["flops"]))
        report["holdout"] = dict(run=holdout["key"], N=holdout["N"], D=holdout["tokens"],
                                 C=holdout["flops"], factor=holdout["budget"] / max(rows),
                                 predicted=pred, interval=(float(lo), float(hi)), measured=measured,
                                 error=(pred - measured) / measured, covered=bool(lo <= measured <= hi),
                                 frontier_predicted=frontier)
    return report


def print_report(report):
    if report["fits"] is None:
        print(f"fits skipped: {report['reason']}")
        return
    h, ci, fits = report["headline"], report["ci"], report["fits"]
    show = lambda name, fmt=".3f": f"{name} = {h[name]:{fmt}} [{ci[name][0]:{fmt}}, {ci[name][1]:{fmt}}]"
    print(f"\n{report['n_runs']} runs fitted; 95% intervals from {report['n_boot']} bootstrap resamples")
    print("approach 3, L(N, D) = E + A/N^alpha + B/D^beta:")
    print(f"  {show('E')}  {show('A', '.4g')}  {show('B', '.4g')}")
    print(f"  {show('alpha')}  {show('beta')}  -> N_opt ~ C^a with {show('a3')}")
    if h["E"] < 0.05 * min(r["L_opt"] for r in fits["iso"]["rows"]):
        print("  warning: E went to zero: these runs are too far from the loss floor to locate it, and the "
              "law extrapolates as if there were none (too optimistic far beyond the fitted budgets)")
    print("approach 2, IsoFLOP parabolas:")
    for row in fits["iso"]["rows"]:
        print(f"  C = {row['C']:.3g}: N_opt = {row['N_opt']:,.0f}, D_opt = {row['D_opt']:,.0f}, "
              f"{row['D_opt'] / row['N_opt']:.1f} tokens/parameter, L_opt = {row['L_opt']:.4f}"
              f"{'' if row['inside'] else '  (best size at the edge of its row: not used)'}")
    print(f"  N_opt ~ C^a, {show('a2')};  D_opt ~ C^b, {show('b2')}")
    for row in report["law3_optimum"]:
        print(f"  approach 3 at C = {row['C']:.3g}: N_opt = {row['N_opt']:,.0f}, "
              f"{row['D_opt'] / row['N_opt']:.1f} tokens/parameter")
    if fits["frontier"]:
        print(f"frontier, L*(C) = E + A C^-gamma: {show('gamma')}  {show('E_frontier')}")
    noise = report["noise"]
    if noise["configs"]:
        print(f"seed noise: sd {noise['sd']:.4f} nats over {noise['configs']} configurations x "
              f"{noise['seeds']} seeds")
    hold = report.get("holdout")
    if hold:
        print(f"held-out run {hold['run']} ({hold['factor']:.1f}x the largest fitted budget, "
              f"N = {hold['N']:,}, D = {hold['D']:,}): predicted {hold['predicted']:.4f} "
              f"[{hold['interval'][0]:.4f}, {hold['interval'][1]:.4f}] (fit bootstrap + seed noise), "
              f"measured {hold['measured']:.4f}")
        if hold["frontier_predicted"]:
            print(f"  (the frontier L*(C) predicts {hold['frontier_predicted']:.4f} for a compute-optimal "
                  f"model at that budget)")
        print(f"held-out prediction error: {100 * abs(hold['error']):.1f}% "
              f"({'inside' if hold['covered'] else 'OUTSIDE'} the interval)")


def save_report(report, path):
    """fits.json: the numbers the README quotes, at full precision (see the rounding note)."""
    keep = {k: v for k, v in report.items() if k != "boots"}
    with open(path, "w") as f:
        json.dump(keep, f, indent=1, default=float)


def plot_all(records, report, out_dir):
    """loss_vs_compute.png (always), isoflop.png and optimal_size.png (with fits); returns paths."""
    plots = [("loss_vs_compute.png", plot_loss_vs_compute, 1, (8, 5.5))]
    if report["fits"] is not None:
        plots += [("isoflop.png", plot_isoflop, 1, (7, 5)), ("optimal_size.png", plot_optimal_size, 2, (11, 4.5))]
    for name, draw, ncols, size in plots:
        with plumbing.figure(os.path.join(out_dir, name), ncols, size, dpi=110) as (fig, ax):
            draw(ax, records, report)
    return [os.path.join(out_dir, name) for name, *_ in plots]


def plot_loss_vs_compute(ax, records, report):
    """Every run's training curve against compute so far, its final validation loss, the frontier
    fit with its bootstrap band, and the held-out run against its prediction."""
    sizes = sorted({r["N"] for r in records})
    colour = {n: plumbing.colormap("viridis", i / max(1, len(sizes) - 1)) for i, n in enumerate(sizes)}
    for r in records:
        flops, loss = np.array(r["curve"]).T
        k = min(5, len(loss))                           # single-batch losses: smooth a little
        ax.plot(flops[k - 1:], np.convolve(loss, np.ones(k) / k, mode="valid"), color=colour[r["N"]],
                alpha=0.3, lw=0.8)
        ax.plot(r["flops"], r["val_loss"], "o", color=colour[r["N"]], ms=4)
    for n in sizes:
        ax.plot([], [], "o-", color=colour[n], label=f"N = {n:,}")
    fits, hold = report["fits"], report.get("holdout")
    if fits and fits["frontier"]:
        C = np.geomspace(min(r["flops"] for r in records) / 2, 1.5 * max(r["flops"] for r in records), 100)
        ax.plot(C, frontier_law(fits["frontier"], C), "k-", lw=1.5,
                label=f"frontier E + A C^-{fits['frontier']['gamma']:.3f}")
        band = [frontier_law(b["frontier"], C) for b in report["boots"] if b["frontier"]]
        if band:
            ax.fill_between(C, *np.percentile(band, [2.5, 97.5], axis=0), color="k", alpha=0.12,
                            label="95% bootstrap band")
    if hold:
        low, high = hold["interval"]
        ax.errorbar(hold["C"], hold["predicted"], yerr=[[hold["predicted"] - low], [high - hold["predicted"]]],
                    fmt="_", color="red", capsize=4, label="held-out prediction (approach 3)")
        ax.plot(hold["C"], hold["measured"], "r*", ms=14, label=f"held-out run, {100 * abs(hold['error']):.1f}% off")
    ax.set(xscale="log", yscale="log", xlabel="training compute C (FLOPs: 6N + attention, per token)",
           ylabel="loss (nats per byte)", title="lines: training loss so far; dots: final validation loss")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, which="both")


def plot_isoflop(ax, records, report):
    """Validation loss against N at each budget: the parabolas of approach 2 (solid), the law of
    approach 3 along the same rows (dotted), and the minima (x)."""
    grid = [r for r in records if r["role"] == "grid"]
    cost = cost_per_token({(r["N"], r["flops_per_token"]) for r in records})
    budgets = sorted({r["budget"] for r in grid})
    for i, budget in enumerate(budgets):
        colour = plumbing.colormap("plasma", i / len(budgets))
        N = np.array([r["N"] for r in grid if r["budget"] == budget], dtype=np.float64)
        loss = np.array([r["val_loss"] for r in grid if r["budget"] == budget])
        ax.plot(N, loss, "o", color=colour, label=f"C = {budget:.3g}")
        x = np.geomspace(N.min() / 1.3, N.max() * 1.3, 60)
        ax.plot(x, np.polyval(np.polyfit(np.log(N), loss, 2), np.log(x)), "-", color=colour, lw=1)
        ax.plot(x, loss_law(report["fits"]["law"], x, budget / cost(x)), ":", color=colour, lw=1)
    for row in report["fits"]["iso"]["rows"]:
        ax.plot(row["N_opt"], row["L_opt"], "kx", ms=8)
    hold = report.get("holdout")
    if hold:
        ax.plot(hold["N"], hold["measured"], "r*", ms=14, label=f"held-out run, C = {hold['C']:.3g}")
    ax.set(xscale="log", xlabel="parameters N (non-embedding + tied head)", ylabel="validation loss",
           title="IsoFLOP profiles: parabolas (solid), approach 3 (dotted)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")


def plot_optimal_size(axes, records, report):
    """Compute-optimal N and D against C: approach 2's minima and power laws, approach 3's optimum
    under our real cost per token, and the size the held-out run was given."""
    fits, ci, hold = report["fits"], report["ci"], report.get("holdout")
    iso, cost = fits["iso"], cost_per_token({(r["N"], r["flops_per_token"]) for r in records})
    rows = [r for r in iso["rows"] if r["inside"]]
    budgets = [r["budget"] for r in records if r["role"] == "grid"]
    C = np.geomspace(min(budgets) / 2, 2 * max(r["flops"] for r in records), 50)
    optimum = np.array([search_optimum(fits["law"], c, cost) for c in C])            # (50, 2)
    for ax, i, what, k, expo, name in ((axes[0], 0, "N_opt", "kN", "a", "a2"),
                                       (axes[1], 1, "D_opt", "kD", "b", "b2")):
        ax.plot([r["C"] for r in rows], [r[what] for r in rows], "ko", label="approach 2 (parabola minima)")
        if np.isfinite(iso[k]):
            ax.plot(C, iso[k] * C ** iso[expo], "k-", label=f"~ C^{iso[expo]:.2f} "
                    f"[{ci[name][0]:.2f}, {ci[name][1]:.2f}]")
        ax.plot(C, optimum[:, i], "b--", label="approach 3")
        if hold:
            ax.plot(hold["C"], hold["N"] if i == 0 else hold["D"], "r*", ms=12, label="held-out run")
        ax.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", title=f"compute-optimal {what}",
               ylabel="parameters N" if i == 0 else "tokens D")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")


# ----------------------------------------------------------------------------------------------
# 6. The command line.

@dataclass
class ScalingConfig:
    out_dir: Optional[str] = knob(None, "where results.jsonl, fits.json and the plots go "
                                        "(None: runs/scaling-<preset>)")
    plot_only: bool = knob(False, "train nothing: refit and replot from the results file")
    dry_run: bool = knob(False, "print the plan and the predicted wall time, then stop")
    corpus: Optional[str] = knob(None, "override the preset's corpus (pydocs, shakespeare, a path)")
    tokenizer: Optional[str] = knob(None, "override the preset's tokenizer (keep it small: bytes, bpe:N)")
    device: Optional[str] = knob(None, "override the device (auto, cpu, cuda, mps)")
    data_dir: Optional[str] = knob(None, "folder searched for data files (None: $PTFT_DATA_DIR)")
    cache_dir: Optional[str] = knob(None, "tokenizer and dataset cache (None: $PTFT_CACHE_DIR)")
    n_boot: int = knob(200, "bootstrap resamples for the intervals", "[10, inf)")
    seed: int = knob(1337, "seed of the grid's runs; the repeats use +1 and +2", "[0, inf)")
    threads: Optional[int] = knob(None, "torch CPU threads (None: the preset's; cpu: 1)", "[1, inf)")
    workers: Optional[int] = knob(None, "runs trained at once, each in its own process with one thread "
                                        "(None: one per CPU core for a CPU sweep, 1 on a GPU)", "[1, inf)")


def main(argv=None):
    presets = dict.fromkeys(SWEEP_PRESETS, {})       # a preset here is a SweepPreset, chosen by name
    parser = plumbing.build_parser(__doc__.split("\n")[0], ScalingConfig, presets, epilog=(
        "presets: cpu (default), minutes on 2 CPU cores; gpu, ~1 h on one GPU (needs a bigger "
        "--corpus); tiny, a 2 x 2 smoke test"))
    parsed = parser.parse_args(argv)
    args, preset_name = plumbing.config_from_args(parsed, ScalingConfig, presets), parsed.preset
    out_dir = args.out_dir or os.path.join("runs", f"scaling-{preset_name}")
    path = os.path.join(out_dir, "results.jsonl")
    if args.plot_only:
        records = load_results(path)
        if not records:
            raise UserError(f"--plot-only: no results in {path}; run the sweep first (or check --out-dir)")
        return report_and_plot(records, out_dir, args.n_boot, args.seed)

    start = time.perf_counter()
    preset = SWEEP_PRESETS[preset_name]
    # One thread for the cpu preset: these models are bound by per-op overhead, which a second
    # thread only adds to, and two threads that share a core with any other job wait on each other
    # (measured here while others ran: 3-16 ms per step with one thread, 60-420 ms with two).
    threads = preset.threads if args.threads is None else args.threads
    if threads > 0:
        torch.set_num_threads(threads)
    settings = {**preset.train, **{k: getattr(args, k) for k in ("corpus", "tokenizer", "device",
                                   "data_dir", "cache_dir") if getattr(args, k) is not None}}
    dataset = data.prepare_dataset(settings["corpus"], settings["tokenizer"], settings.get("data_dir"),
                                   settings.get("cache_dir"))
    setup = make_setup(preset, settings, train_clm.padded_vocab_size(dataset.enc.n_vocab),
                       len(dataset.train), args.seed)
    on_cpu = plumbing.pick_device(settings.get("device", "auto")).type == "cpu"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = args.workers or (cores if on_cpu else 1)
    if not sweep(setup, dataset, out_dir, args.dry_run, args.n_boot, workers):
        return None
    report = report_and_plot(load_results(path), out_dir, args.n_boot, args.seed)
    print(f"wall time: {(time.perf_counter() - start) / 60:.1f} min in all")
    return report


def sweep(setup, dataset, out_dir, dry_run, n_boot, workers=1):
    """Plan, probe, train what the results file lacks, then the held-out run. False on a dry run."""
    preset, path = setup.preset, os.path.join(out_dir, "results.jsonl")
    plan = plan_sweep(setup)
    os.makedirs(out_dir, exist_ok=True)
    shared = {k: v for k, v in setup.settings.items() if k not in ("device", "data_dir", "cache_dir")}
    per_width = {k: getattr(preset, k) for k in ("lr_width", "init_width") if getattr(preset, k)}
    sid = settings_id(dict(shared, min_steps=preset.min_steps, min_batch=preset.min_batch, **per_width),
                      dataset)
    done = {r["key"] for r in load_results(path, sid)}
    todo = [r for r in plan if r.key not in done]
    # The held-out run needs a fitted law to size it: 3 budgets x 3 sizes at least.
    need_holdout = (len(preset.budgets) >= 3 and preset.sizes_per_row >= 3
                    and not any(k.startswith("holdout:") for k in done))
    print(f"plan: {len(preset.budgets)} budgets x {preset.sizes_per_row} sizes + seed repeats = "
          f"{len(plan)} runs ({len(plan) - len(todo)} already in {path})"
          + (f", then 1 held-out run at {preset.holdout_factor:g}x {max(preset.budgets):.3g} FLOPs"
             if need_holdout else ""))
    for r in plan:
        print(f"  {r.key:32s} N={r.N:>8,} D={r.tokens:>10,} batch {r.batch_size:>2} x {r.steps:>5,} steps, "
              f"lr {r.lr:.1e}, init std {r.init_std:.3f}, {r.epochs:.2f} epochs"
              f"{'  (done)' if r.key in done else ''}")
    if not (todo or need_holdout):
        print("nothing to train: every run is in the results file")
        return not dry_run
    # For the estimate, the held-out run gets the guessed optimal shape (the fit chooses later).
    pending = todo + ([plan_holdout(setup)] if need_holdout else [])
    t0 = time.perf_counter()
    timing = probe(pending, setup.settings, dataset)
    todo.sort(key=lambda r: -predict_seconds([r], timing))           # longest first: packs best
    train_s = plumbing.makespan([predict_seconds([r], timing) for r in todo], workers)
    train_s += predict_seconds(pending[len(todo):], timing)          # the held-out run comes after
    fit_s = 0.15 * n_boot
    print(f"probe ({time.perf_counter() - t0:.0f} s): {len(pending)} run(s) to train, {workers} at a time; "
          f"predicted wall time {(train_s + fit_s) / 60:.1f} min (training {train_s / 60:.1f}, fits "
          f"~{fit_s / 60:.1f})", flush=True)
    if dry_run:
        return False
    run_all(todo, setup.settings, dataset, path, sid, workers)
    if need_holdout:
        grid = [r for r in load_results(path, sid) if r["role"] == "grid"]
        C, N, D, L = columns(grid)
        law = fit_loss_law(N, D, L)
        run = plan_holdout(setup, law)
        print(f"held-out run, sized by the fit of the {len(grid)} runs above: {run.key}, predicted "
              f"loss {loss_law(law, run.N, run.tokens):.4f}", flush=True)
        run_all([run], setup.settings, dataset, path, sid)
    return True


def report_and_plot(records, out_dir, n_boot, seed):
    report = analyse(records, n_boot, seed, progress=True)
    print_report(report)
    if report["fits"] is not None:
        save_report(report, os.path.join(out_dir, "fits.json"))
    paths = plot_all(records, report, out_dir)
    print(f"wrote {', '.join(paths)}" + (f" and {out_dir}/fits.json" if report["fits"] else ""))
    return report


if __name__ == "__main__":
    plumbing.run_cli(main, interrupted="interrupted: finished runs are kept in the results file; "
                                        "the same command resumes")
