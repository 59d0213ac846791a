"""Scaling laws from scratch: train a grid of tiny models, fit the laws, plot loss against compute.

A language model's loss falls as a power law in its size N and its training tokens D, down to the
entropy of the text, E (Kaplan et al. 2020; Hoffmann et al. 2022, eq. 2):

    L(N, D) = E + A / N^alpha + B / D^beta

Training costs C ~ 6 N D FLOPs, so at a fixed budget C a bigger model sees fewer tokens, and
the compute-optimal model grows as N_opt ~ C^a with a = beta / (alpha + beta). Chinchilla found
a ~ 0.5 and D/N ~ 20 tokens per parameter. The law, its fits and that optimum are the lesson of
scaling_laws.py (read it first); this file measures them for itself, on a grid of real runs.

What we count (section 1). N is every parameter that takes part in a matrix multiply: the
non-embedding weights plus the tied output head (vocab x width), as Hoffmann et al. 2022 and
Porian et al. 2024 advise, not Kaplan et al.'s non-embedding count (Pearce & Song 2024 trace
much of the Kaplan/Chinchilla disagreement to that choice: at small N the head is a large share).
C = model.flops_per_token() * D: 6N plus attention's 12 * n_layer * T * width (PaLM), which in
the cpu grid (one layer, T = 64, widths 16-144: 768 C of 72 C^2 + 2,688 C) is 6-20% of the
total, so C = 6ND alone would be wrong here. Because the head grows with the vocabulary, the
sweep uses a byte tokenizer: with a 50k vocabulary the "model" would be mostly head.

How we measure (section 2). An IsoFLOP grid (Hoffmann et al.'s approach 2): a few compute
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

How we fit and test (section 3): scaling_laws.py's three fits on the finished runs, every
exponent with a 95% bootstrap interval. Then the honesty check: one run at >= 3x the largest
fitted budget, sized by the fit, is predicted BEFORE it is trained; we report the error and
whether the interval covered it.

Read scaling_laws.py first, then in this order: 1. counting; 2. the sweep (presets, plan, probe,
runs, resume); 3. the report; 4. the command line; 5. the plots.

    python scaling.py                    # the cpu preset: the whole study, minutes on 2 cores (RESULTS.md)
    python scaling.py --dry-run          # the plan and the predicted wall time, nothing trained
    python scaling.py --plot-only        # refit and replot from out/scaling-cpu/results.jsonl
"""
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

import data
import plumbing
import scaling_laws
import train_clm
from model import ModelConfig, Transformer, padded_vocab_size
from plumbing import NUMBER, UserError, knob

# ----------------------------------------------------------------------------------------------
# 1. Counting: N and FLOPs per token of a shape, read off model.py so there is one definition.

def shape_counts(shape, vocab_size, block_size):
    """(N, training FLOPs per token) for shape = (n_layer, n_head, n_embd).

    N = non-embedding parameters + the tied head (vocab_size * n_embd): the weights that do matrix
    multiplies (Hoffmann et al. 2022; Porian et al. 2024). The position table is a lookup and is
    left out.
    """
    n_layer, n_head, n_embd = shape
    with torch.device("meta"):          # shapes only: no memory, no time spent initialising weights
        model = Transformer(ModelConfig(vocab_size=vocab_size, block_size=block_size,
                                        n_layer=n_layer, n_head=n_head, n_embd=n_embd))
    return model.num_params(non_embedding=True) + vocab_size * n_embd, model.flops_per_token()


# ----------------------------------------------------------------------------------------------
# 2. The sweep: presets, the plan, the speed probe, the runs, the results file.

@dataclass
class SweepPreset:
    """A study's design. The ladder is the sizes a row may use; the budgets are the rows; the guess
    places each row's sizes around the expected optimum, so that the valley of every IsoFLOP
    profile lies inside its row; the remaining knobs keep each run in the regime the law
    describes (enough steps, few enough epochs) and tune it for its width."""
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
    """Counts N and FLOPs per token once per ladder shape, for every run that uses it."""
    counts = {tuple(s): shape_counts(s, vocab_size, settings["block_size"]) for s in preset.ladder}
    return Setup(preset, settings, n_train_tokens, seed, counts)


@dataclass
class Run:
    """One planned training run, with everything the plan derived for it (section 1's counts, its
    batch, learning rate and init, its steps and tokens). The key names it in the results file:
    a resumed sweep trains only the keys that file lacks."""
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
    best = min(allowed, key=lambda r: scaling_laws.loss_law(law, r.N, r.tokens))
    if best is not min(candidates, key=lambda r: scaling_laws.loss_law(law, r.N, r.tokens)):
        print(f"note: the fit's best shape at {budget:.3g} FLOPs would repeat the data more than "
              f"{preset.max_epochs} times; the held-out run uses the best shape within that limit")
    elif best.shape in (tuple(preset.ladder[0]), tuple(preset.ladder[-1])):
        print("note: the held-out shape is at the end of the ladder; the fit's optimum may lie beyond it")
    return best


def settings_id(settings, dataset):
    """A fingerprint of everything shared by the runs (knobs, corpus, tokenizer): results made
    with other settings must never be mixed into one fit."""
    blob = json.dumps([settings, dataset.corpus, data.tokenizer_identity(dataset.enc)], sort_keys=True)
    return plumbing.fingerprint(blob)


def train_config(run, settings, **overrides):
    """The TrainConfig of one run: the shared settings plus the run's shape, batch, learning rate and
    budget. max_iters is the budget, so warmup + cosine end exactly there (optim.learning_rate);
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
    """The probe's estimate for runs trained one after another: steps x seconds per step, plus each
    run's fixed cost (start-up and the final evaluation)."""
    return sum(r.steps * timing[r.shape, r.batch_size][0] + timing[r.shape, r.batch_size][1]
               for r in runs)


RECORD_FIELDS = dict(     # what the fits and plots read from a record (train_run writes it)
    key=str, role=lambda role: role in ("grid", "holdout"), budget=NUMBER, N=int, flops_per_token=NUMBER,
    shape=lambda shape: isinstance(shape, list) and len(shape) == 3 and all(isinstance(n, int) for n in shape),
    tokens=int, flops=NUMBER, val_loss=NUMBER,
    curve=lambda curve: isinstance(curve, list) and len(curve) > 0 and all(   # [[FLOPs, train loss], ...]
        isinstance(point, list) and len(point) == 2 and all(isinstance(v, NUMBER) for v in point)
        for point in curve))


def load_results(path, expected_id=None):
    """The records in a results file (plumbing.read_jsonl), refused if made with other settings or edited."""
    records = plumbing.read_jsonl(path)
    if any("settings_id" not in r for r in records):       # every record of ours carries one
        raise UserError(f"{path} holds records that scaling.py did not write; use another --out-dir "
                        f"or move that file away")
    if expected_id is not None and {r["settings_id"] for r in records} - {expected_id}:
        raise UserError(f"{path} holds runs made with other settings (preset, corpus, tokenizer or "
                        f"training knobs); use another --out-dir or move that file away")
    plumbing.check_records(path, records, RECORD_FIELDS)
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
    """train_run in a worker process (one thread, plumbing.in_processes), the dataset opened from
    the cache (memory-mapped, so every worker reads the same file instead of receiving a copy)."""
    run, settings = job
    dataset = data.prepare_dataset(settings["corpus"], settings["tokenizer"], settings.get("data_dir"),
                                   settings.get("cache_dir"), verbose=False)
    return train_run(run, settings, dataset)


# ----------------------------------------------------------------------------------------------
# 3. The report: fits with intervals and the held-out prediction (its plots: section 5).

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
    """The four arrays every fit takes: each run's budget C, size N, tokens D and final loss."""
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
    fits = scaling_laws.fit_all(C, N, D, L)
    start = time.perf_counter()
    # The intervals: the same three fits on resampled runs, each warm-started from the full fit.
    boots = [b for b in scaling_laws.bootstrap(C, N, D, L, n_boot, seed, warm=fits) if b]
    if progress:
        print(f"bootstrap: {n_boot} refits on resampled runs in {time.perf_counter() - start:.0f} s")
    ci = scaling_laws.intervals([scaling_laws.headline(b) for b in boots])
    # Approach 3's optimum under our models' real cost per token (6N plus attention), not 6N alone:
    # that is how the fitted law would size a run on this grid.
    cost = scaling_laws.cost_per_token({(r["N"], r["flops_per_token"]) for r in records})
    law3 = [dict(C=c, N_opt=n, D_opt=d) for c in sorted(rows)
            for n, d in [scaling_laws.search_optimum(fits["law"], c, cost)]]
    report = dict(fits=fits, boots=boots, ci=ci, headline=scaling_laws.headline(fits), noise=seed_noise(grid),
                  law3_optimum=law3, n_runs=len(grid), n_boot=len(boots), cost=cost)
    if holdout is not None:
        pred = float(scaling_laws.loss_law(fits["law"], holdout["N"], holdout["tokens"]))
        spread = np.array([scaling_laws.loss_law(b["law"], holdout["N"], holdout["tokens"]) for b in boots])
        lo, hi = np.percentile(spread, [2.5, 97.5])
        # The fit's uncertainty (bootstrap) and a new run's own seed noise add in quadrature.
        z_noise = 1.96 * report["noise"]["sd"]
        lo, hi = pred - math.hypot(pred - lo, z_noise), pred + math.hypot(hi - pred, z_noise)
        measured = holdout["val_loss"]
        frontier = fits["frontier"] and float(scaling_laws.frontier_law(fits["frontier"], holdout["flops"]))
        report["holdout"] = dict(run=holdout["key"], N=holdout["N"], D=holdout["tokens"],
                                 C=holdout["flops"], factor=holdout["budget"] / max(rows),
                                 predicted=pred, interval=(float(lo), float(hi)), measured=measured,
                                 error=(pred - measured) / measured, covered=bool(lo <= measured <= hi),
                                 frontier_predicted=frontier)
    return report


def print_report(report):
    """The numbers to read, in the order to read them. Approach 3's constants, then its exponent a
    of N_opt ~ C^a; approach 2's minimum at each budget (a row whose valley is at its edge has no
    minimum inside it and is left out of the power laws); the frontier; the noise between seeds,
    which is the floor on how well any law can fit; and last the held-out run, predicted before it
    was trained: the error, and whether the interval (fit uncertainty and seed noise) covered it."""
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
    """fits.json: the numbers the README quotes, at full precision (see the rounding note); not the
    bootstrap's refits, nor the cost function the plots reuse."""
    keep = {k: v for k, v in report.items() if k not in ("boots", "cost")}
    plumbing.write_atomic(path, json.dumps(keep, indent=1, default=float).encode())


# ----------------------------------------------------------------------------------------------
# 4. The command line.

@dataclass
class ScalingConfig:
    """The command line's knobs; the study's design is the preset's (SWEEP_PRESETS)."""
    out_dir: Optional[str] = knob(None, "where results.jsonl, fits.json and the plots go "
                                        "(None: out/scaling-<preset>)")
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
    """Plan, probe, train what the results file lacks, fit, predict and train the held-out run,
    then report and plot (--plot-only: the last step alone, from the results file)."""
    presets = dict.fromkeys(SWEEP_PRESETS, {})       # a preset here is a SweepPreset, chosen by name
    parser = plumbing.build_parser(__doc__.split("\n")[0], ScalingConfig, presets, epilog=(
        "presets: cpu (default), minutes on 2 CPU cores; gpu, ~1 h on one GPU (needs a bigger "
        "--corpus); tiny, a 2 x 2 smoke test"))
    parsed = parser.parse_args(argv)
    args, preset_name = plumbing.config_from_args(parsed, ScalingConfig, presets), parsed.preset
    if args.out_dir == "":        # '' saves nothing elsewhere; a sweep's results are what it makes
        raise UserError("--out-dir '': a sweep keeps its results in a folder and resumes from them; "
                        "give one (. for the current folder)")
    out_dir = args.out_dir or os.path.join("out", f"scaling-{preset_name}")
    path = os.path.join(out_dir, "results.jsonl")
    if args.plot_only:
        records = load_results(path)
        if not records:
            raise UserError(f"--plot-only: no results in {path}; run the sweep first (or check --out-dir)")
        return report_and_plot(records, out_dir, args.n_boot, args.seed)

    start = time.perf_counter()
    preset = SWEEP_PRESETS[preset_name]
    # One thread for the cpu preset: these models are bound by per-op overhead, which a second
    # thread only adds to, and two threads that share a core with any other job wait on each other.
    threads = preset.threads if args.threads is None else args.threads
    if threads > 0:
        torch.set_num_threads(threads)
    settings = {**preset.train, **{k: getattr(args, k) for k in ("corpus", "tokenizer", "device",
                                   "data_dir", "cache_dir") if getattr(args, k) is not None}}
    dataset = data.prepare_dataset(settings["corpus"], settings["tokenizer"], settings.get("data_dir"),
                                   settings.get("cache_dir"))
    setup = make_setup(preset, settings, padded_vocab_size(dataset.enc.n_vocab),
                       len(dataset.train), args.seed)
    # A CPU sweep trains one run per core, each with one thread (run_all); a GPU one run at a time.
    device = plumbing.pick_device(settings.get("device", "auto"))
    workers = plumbing.default_workers(args.workers, device)
    cores = plumbing.cpu_cores() if device.type == "cpu" else None
    if not sweep(setup, dataset, out_dir, args.dry_run, args.n_boot, workers, cores):
        return None
    report = report_and_plot(load_results(path), out_dir, args.n_boot, args.seed)
    print(f"wall time: {(time.perf_counter() - start) / 60:.1f} min in all")
    return report


def sweep(setup, dataset, out_dir, dry_run, n_boot, workers=1, cores=None):
    """Plan, probe, train what the results file lacks, then the held-out run. False on a dry run.
    cores: the CPU cores that the workers share (None: as many as there are workers)."""
    preset, path = setup.preset, os.path.join(out_dir, "results.jsonl")
    plan = plan_sweep(setup)
    plumbing.lock_folder(out_dir, create=not dry_run)     # one sweep at a time; a dry run makes no folder
    shared = {k: v for k, v in setup.settings.items() if k not in ("device", "data_dir", "cache_dir")}
    per_width = {k: getattr(preset, k) for k in ("lr_width", "init_width") if getattr(preset, k)}
    sid = settings_id(dict(shared, min_steps=preset.min_steps, min_batch=preset.min_batch, **per_width),
                      dataset)
    # Resuming: a run already in the results file, made with these exact settings, is not trained
    # again (a file made with other settings is refused by load_results).
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
    # Measure before launching: a few real steps of each shape predict the wall time, and a plan
    # too long for the machine is caught before it has cost anything (--dry-run stops here).
    t0 = time.perf_counter()
    timing = probe(pending, setup.settings, dataset)
    todo.sort(key=lambda r: -predict_seconds([r], timing))           # longest first: packs best
    at_once = min(workers, max(len(todo), 1))
    # Processes beyond the cores take turns on them: a run with one thread each, at most one a core.
    train_s = plumbing.makespan([predict_seconds([r], timing) for r in todo], min(at_once, cores or at_once))
    train_s += predict_seconds(pending[len(todo):], timing)          # the held-out run comes after
    fit_s = 0.15 * n_boot
    print(f"probe ({time.perf_counter() - t0:.0f} s): {len(pending)} run(s) to train, {at_once} at a time; "
          f"predicted wall time {(train_s + fit_s) / 60:.1f} min (training {train_s / 60:.1f}, fits "
          f"~{fit_s / 60:.1f})", flush=True)
    if dry_run:
        return False
    run_all(todo, setup.settings, dataset, path, sid, workers)
    if need_holdout:
        # Sized by a fit of the grid alone, and its loss predicted and printed before it trains.
        grid = [r for r in load_results(path, sid) if r["role"] == "grid"]
        C, N, D, L = columns(grid)
        law = scaling_laws.fit_loss_law(N, D, L)
        run = plan_holdout(setup, law)
        print(f"held-out run, sized by the fit of the {len(grid)} runs above: {run.key}, predicted "
              f"loss {scaling_laws.loss_law(law, run.N, run.tokens):.4f}", flush=True)
        run_all([run], setup.settings, dataset, path, sid)
    return True


def report_and_plot(records, out_dir, n_boot, seed):
    """Fit, print, save fits.json and draw the plots, from the results records alone."""
    report = analyse(records, n_boot, seed, progress=True)
    print_report(report)
    if report["fits"] is not None:
        save_report(report, os.path.join(out_dir, "fits.json"))
    paths = plot_scaling(records, report, out_dir)
    print(f"wrote {', '.join(paths)}" + (f" and {out_dir}/fits.json" if report["fits"] else ""))
    return report


# ----------------------------------------------------------------------------------------------
# 5. The plots: what the study shows, drawn from the results records and the report of analyse.

def plot_scaling(records, report, out_dir):
    """scaling.py's plots: loss_vs_compute.png (always), isoflop.png and optimal_size.png (with
    fits), from the results records and the report of scaling.analyse; returns their paths."""
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
        ax.plot(C, scaling_laws.frontier_law(fits["frontier"], C), "k-", lw=1.5,
                label=f"frontier E + A C^-{fits['frontier']['gamma']:.3f}")
        band = [scaling_laws.frontier_law(b["frontier"], C) for b in report["boots"] if b["frontier"]]
        if band:
            ax.fill_between(C, *np.percentile(band, [2.5, 97.5], axis=0), color="k", alpha=0.12,
                            label="95% bootstrap band")
    if hold:
        low, high = hold["interval"]
        ax.errorbar(hold["C"], hold["predicted"], yerr=[[hold["predicted"] - low], [high - hold["predicted"]]],
                    fmt="_", color="red", capsize=4, label="held-out prediction (approach 3)")
        ax.plot(hold["C"], hold["measured"], "r*", ms=14, label=f"held-out run, {100 * abs(hold['error']):.1f}% off")
    ax.set(xscale="log", yscale="log", xlabel="training compute C (FLOPs: 6N + attention, per token)",
           ylabel="loss (nats per token)", title="lines: training loss so far; dots: final validation loss")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, which="both")

def plot_isoflop(ax, records, report):
    """Validation loss against N at each budget: the parabolas of approach 2 (solid), the law of
    approach 3 along the same rows (dotted), and the minima (x)."""
    grid, cost = [r for r in records if r["role"] == "grid"], report["cost"]
    budgets = sorted({r["budget"] for r in grid})
    for i, budget in enumerate(budgets):
        colour = plumbing.colormap("plasma", i / len(budgets))
        N = np.array([r["N"] for r in grid if r["budget"] == budget], dtype=np.float64)
        loss = np.array([r["val_loss"] for r in grid if r["budget"] == budget])
        ax.plot(N, loss, "o", color=colour, label=f"C = {budget:.3g}")
        x = np.geomspace(N.min() / 1.3, N.max() * 1.3, 60)
        ax.plot(x, np.polyval(np.polyfit(np.log(N), loss, 2), np.log(x)), "-", color=colour, lw=1)
        ax.plot(x, scaling_laws.loss_law(report["fits"]["law"], x, budget / cost(x)), ":", color=colour, lw=1)
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
    iso, cost = fits["iso"], report["cost"]
    rows = [r for r in iso["rows"] if r["inside"]]
    budgets = [r["budget"] for r in records if r["role"] == "grid"]
    C = np.geomspace(min(budgets) / 2, 2 * max(r["flops"] for r in records), 50)
    optimum = np.array([scaling_laws.search_optimum(fits["law"], c, cost) for c in C])            # (50, 2)
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


if __name__ == "__main__":
    plumbing.run_cli(main, interrupted="interrupted: finished runs are kept in the results file; "
                                        "the same command resumes")
