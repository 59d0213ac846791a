"""What pretraining buys, measured: test accuracy against the number of labels.

The claim of the paradigm (Howard & Ruder 2018; Radford et al. 2018; Devlin et al. 2019) is about
labels: a pretrained body reaches a given accuracy with far fewer of them than the same network
from random weights. finetune.py shows one run; this file draws the curve. For each number of
labelled examples k (a balanced, seeded subsample, tasks.py) and each of 3+ seeds:

    scratch, scratch-mlm     the CLM's (the MLM's) architecture and tokenizer, random weights
    clm, mlm                 the pretrained bodies, fully fine-tuned
    lora                     the CLM body, adapted through low-rank updates only
    prompt                   the CLM body with k demonstrations in its prompt, no gradient step
                             (prompting.py), at 0, 1, 4 and 8 shots, as many as fit its positions
    bag-of-words             logistic regression on the very same k examples: the bar

and reads off what pretraining buys:

    gain(k) = mean accuracy(pretrained, k) - mean accuracy(scratch in its architecture, k)

Every point is a mean over seeds with its sample standard deviation: with a few dozen labels, one
seed's draw can swing accuracy by several points, and a gain smaller than that spread is not one.

The same question asked of compute instead of labels is the transfer curve: bodies kept along a
pretraining run (train_clm.py --keep), each fine-tuned, with scratch at zero compute.

Read finetune.py and prompting.py first; then in this order: 1. the sweep (methods, plan, runs,
resume); 2. the tables, the gain over scratch and the figure; 3. the transfer curve; 4. the
command line.

    python transfer.py --clm out/clm/ckpt.pt --mlm out/mlm/ckpt.pt   # the paradigm in a picture
    python transfer.py --curve --clm out/clm-keep --mlm out/mlm-keep  # accuracy against compute
    python transfer.py --curve --clm out/clm-keep,out/clm-4x --mlm out/mlm-keep   # a line per run
"""
import dataclasses
import functools
import json
import os
import time
from pathlib import Path

import torch

import finetune
import plumbing
import prompting
import tasks
import train_clm
from finetune import FinetuneConfig
from plumbing import UserError


# ----------------------------------------------------------------------------------------------
# 1. The sweep.


# method -> (which checkpoint, init, mode). LoRA adapts the CLM body. Each pretrained method is
# compared with random weights in its own architecture (mask, shape, pooling), which is not the
# same for the two checkpoints: "scratch" has the CLM's, "scratch-mlm" the MLM's.
SWEEP_METHODS = {"scratch": ("clm", "scratch", "full"), "clm": ("clm", "pretrained", "full"),
                 "scratch-mlm": ("mlm", "scratch", "full"), "mlm": ("mlm", "pretrained", "full"),
                 "lora": ("clm", "pretrained", "lora"), "prompt": ("clm", "pretrained", "prompt")}
KINDS = {"clm": "causal", "mlm": "bidirectional"}   # the body each of --clm and --mlm must hold
PROMPT_SHOTS = (0, 1, 4, 8)   # prompting's rows: its "labels" are the demonstrations in the prompt
SWEEP_SIZES = "32,128,256,512,2048,all"


def sweep(args, cfg):
    """Every method at every size for --seeds seeds, beside bag-of-words; prompting at PROMPT_SHOTS
    demonstrations. Each pretrained method is compared with scratch in its own architecture. On a
    CPU the runs go one per core, each in its own process with one thread (--workers)."""
    device = plumbing.pick_device(cfg.device)
    if not args.clm:
        raise UserError("give --clm CKPT (and --mlm CKPT for the MLM rows)")
    methods = plumbing.parse_choices(args.methods, SWEEP_METHODS, "--methods")
    paths = {which: path for which, path in (("clm", args.clm), ("mlm", args.mlm)) if path}
    # Read here once, so that a bad checkpoint stops the command before any worker starts.
    checkpoints = {which: train_clm.load_pretrained(path, KINDS[which], args.data_dir, args.cache_dir)
                   for which, path in paths.items()}
    skipped = [m for m in methods if SWEEP_METHODS[m][0] not in paths]
    methods = [m for m in methods if m not in skipped]
    if skipped:
        print(f"skipping {', '.join(skipped)}: no --mlm checkpoint given")
    if not methods:
        raise UserError("--methods: nothing left to run; give --mlm CKPT or other methods")
    for m in methods:                                   # each row's settings, before any worker starts
        which, _, mode = SWEEP_METHODS[m]
        finetune.check_settings(dataclasses.replace(cfg, mode=mode), device, checkpoints[which][0]["kind"])
    labelled = tasks.load_labelled(args.task, args.data_dir, args.cache_dir)
    sizes = plumbing.parse_sizes(args.sizes, len(labelled.train))
    seeds = range(cfg.seed, cfg.seed + args.seeds)
    cfg = dataclasses.replace(cfg, eval_points=0, n_train=None)        # the sweep scores at the end only
    # method -> (checkpoint, init, mode): what fine_tune_point builds for each row.
    bodies = {m: (paths[SWEEP_METHODS[m][0]], *SWEEP_METHODS[m][1:]) for m in methods}

    # The plan: every (method, labels, seed) point; bag-of-words is a row at every size, beside the
    # Transformers trained on the very same subsample (same size, same seed).
    plan = [(m, k, s) for k in sizes for s in seeds for m in ["bow"] + methods if m != "prompt"]
    if "prompt" in methods:
        # Prompting's "labels" are the demonstrations in its prompt: its rows are at PROMPT_SHOTS,
        # as many of them as fit the body's positions, beside the fine-tuning rows of equal size.
        checkpoint, enc = checkpoints["clm"]
        shots = prompting.shots_that_fit(finetune.body_from(checkpoint, "pretrained", cfg.seed), enc,
                                         labelled, PROMPT_SHOTS, cfg)
        plan += [("prompt", k, s) for k in shots for s in seeds]
        sizes = sorted(set(sizes) | set(shots))
    # Records made with other settings (or from a checkpoint since rewritten, or when --pooling auto
    # meant another pooling) are never mixed in.
    settings = [args.task, {p: os.path.getmtime(p) for p in paths.values() if os.path.isfile(p)},
                args.clm, args.mlm, dataclasses.asdict(cfg), finetune.AUTO_POOLING]
    workers = plumbing.default_workers(args.workers, device)
    print(f"sweep on {args.task}: methods {', '.join(methods)} (+ bag-of-words), sizes {sizes}, seeds {list(seeds)}")
    lock = plumbing.lock_folder(args.out_dir)          # one sweep at a time writes this folder
    context = (args.task, bodies, cfg, args.data_dir, args.cache_dir)
    records = run_sweep(plan, context, os.path.join(args.out_dir, "sweep.jsonl"), settings, workers)
    # Each pretrained method's gain is read against scratch in its own architecture.
    twin = {m: next((s for s in methods if SWEEP_METHODS[s][:2] == (SWEEP_METHODS[m][0], "scratch")), None)
            for m in methods if m != "prompt" and SWEEP_METHODS[m][1] == "pretrained"}
    print(write_sweep_report(records, ["bow"] + methods, sizes, labelled, twin, args.out_dir))
    print(f"saved {args.out_dir}/sweep.jsonl, sweep.md and sweep.png")
    if lock:                                           # None for --out-dir ''
        lock.release()


def fine_tune_point(context, method, k, seed):
    """One point: bag-of-words, or the body `bodies[method]` = (checkpoint, init, mode) fine-tuned on
    k labels (prompting: shown k demonstrations). Plain data in, so that a worker process
    (plumbing.in_processes) can run it: it reads the task and the checkpoint itself, a few
    hundredths of a second against a run's second or more. A fresh body for each run: fine-tuning
    changes it in place, and scratch weights are seeded."""
    task, bodies, cfg, data_dir, cache_dir = context
    labelled = tasks.load_labelled(task, data_dir, cache_dir)
    if method == "bow":
        train = tasks.subsample_balanced(labelled.train, k, seed)
        return tasks.bag_of_words_baseline(train, labelled.dev, labelled.test, len(labelled.label_names))
    path, init, mode = bodies[method]
    checkpoint, enc = train_clm.load_pretrained(path, None, data_dir, cache_dir)
    body = finetune.body_from(checkpoint, init, seed)
    # Prompting takes no training set: its k demonstrations are drawn, with this seed, by prompting.py
    # from the same training split the fine-tuned rows subsample.
    train = [] if mode == "prompt" else tasks.subsample_balanced(labelled.train, k, seed)
    run_cfg = dataclasses.replace(cfg, seed=seed, mode=mode, shots=k)
    return finetune.run_one(body, enc, labelled, train, run_cfg, plumbing.pick_device(cfg.device),
                            log=lambda *a: None)[0]


def run_sweep(plan, context, path, settings, workers=1):
    """Every (method, size, seed) of `plan` through fine_tune_point(context, ...), a record appended
    to the JSONL file at `path` as each run finishes: a sweep that is stopped resumes where it
    was, skipping what is done. Records carry an id of `settings`, so results made with other
    settings are never mixed in. One line per run, with the time left. workers > 1: that many
    runs at once, in worker processes (plumbing.in_processes)."""
    sid = plumbing.fingerprint(json.dumps(settings, sort_keys=True))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    records = [r for r in plumbing.read_jsonl(path) if r.get("sweep_id") == sid]     # this sweep's alone
    plumbing.check_records(path, records, {"method": str, "n_train": int, "seed": int,
                                           "test.accuracy": plumbing.NUMBER, "test.macro_f1": plumbing.NUMBER})
    done = {(r["method"], r["n_train"], r["seed"]) for r in records}
    todo = [item for item in plan if item not in done]
    print(f"{len(todo)} runs to do ({len(records)} done in {path}), {min(workers, max(len(todo), 1))} at a time")
    start = time.perf_counter()
    runs = plumbing.in_processes(functools.partial(fine_tune_item, context), todo, workers)
    for i, ((method, k, seed), result) in enumerate(runs, 1):
        record = dict(sweep_id=sid, method=method, n_train=k, seed=seed, dev=result["dev"],
                      test=result["test"], trainable=result.get("trainable"), lr=result.get("lr"),
                      seconds=result.get("seconds"))
        plumbing.append_jsonl(path, record, durable=True)
        records.append(record)
        elapsed = time.perf_counter() - start
        print(f"[{i}/{len(todo)}] {method:8s} {k:5d} labels seed {seed}: test accuracy "
              f"{result['test']['accuracy']:.3f}, macro-F1 {result['test']['macro_f1']:.3f} "
              f"({elapsed:.0f}s elapsed, about {elapsed / i * (len(todo) - i):.0f}s left)", flush=True)
    return records


def fine_tune_item(context, item):
    """(item, its result): results from worker processes arrive in the order they finish."""
    return item, fine_tune_point(context, *item)


# ----------------------------------------------------------------------------------------------
# 2. What the sweep shows: each method's mean and spread over seeds at each number of labels, and
#    what pretraining buys, the gain of a pretrained body over the same architecture from random
#    weights.

def summarise(records, method, k, split="test", metric="accuracy"):
    """(mean, sample standard deviation, n) of one point over its seeds, or None if none ran. The
    sample std (n - 1 in the denominator) estimates the spread of one more seed's draw: it is the
    error bar a reader needs to tell a gain from luck. One seed has no spread to estimate: 0 is
    returned, and the sweep's table prints n = 1 beside it."""
    values = torch.tensor([r[split][metric] for r in records if r["method"] == method and r["n_train"] == k],
                          dtype=torch.float64)
    if len(values) == 0:
        return None
    return values.mean().item(), (values.std().item() if len(values) > 1 else 0.0), len(values)


def summary_table(records, methods, sizes, labelled, metric="accuracy"):
    """Markdown: the test metric, mean ± sample standard deviation over seeds."""
    lines = [f"Test {metric.replace('_', '-')} on {labelled.name} ({len(labelled.test)} examples, "
             f"{len(labelled.label_names)} classes), mean ± std over seeds (n = seeds):", "",
             "| method | " + " | ".join(f"{k} labels" for k in sizes) + " |",
             "|---" * (len(sizes) + 1) + "|"]
    for method in methods:
        cells = []
        for k in sizes:
            s = summarise(records, method, k, metric=metric)
            cells.append("–" if s is None else f"{s[0]:.3f} ± {s[1]:.3f} (n={s[2]})")
        lines.append(f"| {'bag-of-words' if method == 'bow' else method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

def gains_over_scratch(records, methods, sizes, baselines):
    """What pretraining buys, in test-accuracy points: mean(method) - mean(its scratch) at each size.
    baselines: method -> the scratch method in its architecture (or None)."""
    lines = []
    for method in methods:
        baseline = baselines.get(method)
        if baseline is None:
            continue
        gains = [(k, summarise(records, method, k), summarise(records, baseline, k)) for k in sizes]
        cells = [f"{100 * (a[0] - b[0]):+.1f} at {k}" for k, a, b in gains if a and b]
        if cells:
            lines.append(f"- {method} minus {baseline}, test accuracy points: {', '.join(cells)} labels")
    return "\n".join(lines)

def plot_sweep(records, methods, sizes, labelled, path):
    """Test accuracy against labelled examples (log scale), mean and std over seeds, with chance.
    Read it from the left: where the pretrained lines stand far above scratch with few labels and
    meet it as labels grow, pretraining bought labels; bag-of-words (grey, dashed) is the bar any
    Transformer must clear to be worth its compute."""
    with plumbing.figure(path) as (fig, ax):
        for method in methods:
            points = [(k, summarise(records, method, k)) for k in sizes]
            points = [(k, s) for k, s in points if s is not None]
            if not points:
                continue
            ks, means, stds = [k for k, _ in points], [s[0] for _, s in points], [s[1] for _, s in points]
            style = dict(linestyle="--", color="grey") if method == "bow" else {}
            ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3,
                        label="bag-of-words" if method == "bow" else method, **style)
        ax.axhline(1 / len(labelled.label_names), color="black", linewidth=0.8, linestyle=":", label="chance")
        # Labels on a log axis: the sizes run from a few to thousands, and each doubling gets the same
        # width. symlog is linear below 1, so zero-shot prompting (0 demonstrations) still has a place.
        ax.set_xscale("symlog", base=2, linthresh=1)
        ax.set_xticks(sizes, [str(k) for k in sizes])
        ax.minorticks_off()
        ax.set(xlabel="labelled examples (prompting: demonstrations in the prompt)",
               ylabel="test accuracy (mean ± std over seeds)",
               title=f"{os.path.basename(labelled.name)}: what pretraining buys, label by label", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend()

def write_sweep_report(records, methods, sizes, labelled, baselines, out_dir):
    """sweep.md (test accuracy and macro-F1 tables, gains over scratch) and sweep.png."""
    tables = [summary_table(records, methods, sizes, labelled, metric) for metric in ("accuracy", "macro_f1")]
    table = "\n\n".join(tables + [gains_over_scratch(records, methods, sizes, baselines)])
    plumbing.write_atomic(os.path.join(out_dir, "sweep.md"), (table + "\n").encode())
    plot_sweep(records, methods, sizes, labelled, os.path.join(out_dir, "sweep.png"))
    return table


# ----------------------------------------------------------------------------------------------
# 3. The transfer curve: accuracy after fine-tuning against the compute spent pretraining the body.
#
# The bridge between scaling.py (pretraining loss against compute) and the sweep above (accuracy
# against labels): one pretraining run keeps its body at a few fractions of its budget
# (`train_clm.py --keep 0.01,0.03,0.1,0.3`), and each kept body is fine-tuned at a few label counts.
# Scratch, the same architecture with random weights, is the point at zero compute. Does more
# pretraining compute give a better fine-tuned classifier, and does the pretraining loss predict by
# how much?

def kept_bodies(folder, kind):
    """[(step, FLOPs, validation loss, path)] of a run folder's kept checkpoints and its final
    ckpt.pt, by compute; each checkpoint records the FLOPs and tokens it was trained with, and is
    refused unless it holds a `kind` (causal or bidirectional) model."""
    bodies = {}                                       # step -> body; the final ckpt.pt wins a tie
    for path in sorted(Path(folder).glob("ckpt-step*.pt")) + [Path(folder) / "ckpt.pt"]:
        checkpoint = plumbing.load_checkpoint(str(path), kind)
        bad = plumbing.invalid_fields(checkpoint, {"state.step": int, "state.flops": plumbing.NUMBER,
                                                   "metrics.val_loss": plumbing.NUMBER})
        if bad:   # a checkpoint edited by hand, or one no pretraining run of ours wrote
            raise UserError(f"{path} has no valid {', '.join(bad)}: --curve places a body by the step, "
                            f"FLOPs and loss its pretraining run recorded; give folders of train_clm.py or "
                            f"train_mlm.py runs")
        state = checkpoint["state"]
        bodies[state["step"]] = (state["step"], state["flops"], checkpoint["metrics"]["val_loss"], str(path))
    return sorted(bodies.values())


def curve(args, cfg):
    """Every kept body of --clm and --mlm (run folders, comma-separated for several), and scratch in
    each run's architecture, fine-tuned at every size for --seeds seeds; curve.md and curve.png. On
    a CPU the runs go one per core, each in its own process with one thread (--workers)."""
    device = plumbing.pick_device(cfg.device)
    runs = [(kind, folder.strip()) for kind, given in (("clm", args.clm), ("mlm", args.mlm)) if given
            for folder in given.split(",")]
    if not runs or not all(os.path.isdir(folder) for _, folder in runs):
        raise UserError("--curve takes run folders: --clm out/clm (and --mlm out/mlm), pretrained with --keep")
    # Every row is full fine-tuning, of a causal body (--clm) or a bidirectional one (--mlm).
    for kind in {KINDS[flag] for flag, _ in runs}:
        finetune.check_settings(dataclasses.replace(cfg, mode="full"), device, kind)
    # One line of the figure per run: named by its kind when it is the only run of that kind, else
    # by its folder (--clm out/clm-keep,out/clm-4x: "clm-keep", "clm-4x").
    kinds = {(kind if sum(k == kind for k, _ in runs) == 1 else Path(folder).name): kind for kind, folder in runs}
    if len(kinds) < len(runs):
        raise UserError("--curve: two run folders of one kind have the same name; give each run its own name")
    # Every kept body of every run; each is one x on the figure: the compute its run had spent.
    bodies = {name: kept_bodies(folder, KINDS[kind]) for name, (kind, folder) in zip(kinds, runs)}
    labelled = tasks.load_labelled(args.task, args.data_dir, args.cache_dir)
    sizes = plumbing.parse_sizes(args.sizes, len(labelled.train))
    seeds = range(cfg.seed, cfg.seed + args.seeds)
    cfg = dataclasses.replace(cfg, eval_points=0, n_train=None, mode="full")
    workers = plumbing.default_workers(args.workers, device)
    # A point is named run@step: clm@0 is scratch, clm@420 the body after 420 steps. The plan is
    # the sweep's, with these names as its methods, so one runner (and one resume) serves both.
    methods = ["bow"] + [f"{name}@{step}" for name in bodies for step in [0] + [s for s, *_ in bodies[name]]]
    plan = [(m, k, s) for k in sizes for s in seeds for m in methods]
    settings = ["curve", args.task, {name: [(s, f) for s, f, *_ in b] for name, b in bodies.items()},
                dataclasses.asdict(cfg), finetune.AUTO_POOLING]
    # Scratch (step 0) takes the final body's architecture and tokenizer, and random weights.
    points = {f"{name}@{step}": (path, "pretrained", "full") for name in bodies for step, *_, path in bodies[name]}
    points.update({f"{name}@0": (bodies[name][-1][3], "scratch", "full") for name in bodies})
    context = (args.task, points, cfg, args.data_dir, args.cache_dir)
    lock = plumbing.lock_folder(args.out_dir)
    records = run_sweep(plan, context, os.path.join(args.out_dir, "curve.jsonl"), settings, workers)
    majority = tasks.majority_baseline(labelled.train, labelled.dev, labelled.test)["test"]["accuracy"]
    print(write_curve_report(records, bodies, kinds, sizes, labelled, majority, args.out_dir))
    print(f"saved {args.out_dir}/curve.jsonl, curve.md and curve.png")
    if lock:                                           # None for --out-dir ''
        lock.release()


def log_trend(flops, accuracy, n_boot=2000, seed=0):
    """The simplest trend: accuracy = a + b log10(FLOPs), least squares over every fine-tuning run
    of the pretrained bodies. Returns b, the change per decade of pretraining compute, and its 95%
    bootstrap interval (the runs resampled with replacement). The interval counts the fine-tuning
    seeds' spread only: each body comes from one pretraining run, whose own variance is not in it."""
    x, y = torch.tensor(flops, dtype=torch.float64).log10(), torch.tensor(accuracy, dtype=torch.float64)

    def slope(x, y):                                   # (..., n) -> (...): cov(x, y) / var(x)
        dx = x - x.mean(-1, keepdim=True)
        return (dx * (y - y.mean(-1, keepdim=True))).sum(-1) / (dx ** 2).sum(-1)
    resample = torch.randint(len(x), (n_boot, len(x)), generator=torch.Generator().manual_seed(seed))
    boots = slope(x[resample], y[resample])            # (n_boot,); NaN where a draw has one x only
    low, high = torch.quantile(boots[boots.isfinite()], torch.tensor([0.025, 0.975], dtype=torch.float64))
    return slope(x, y).item(), low.item(), high.item()


def write_curve_report(records, bodies, kinds, sizes, labelled, majority, out_dir):
    """curve.md: test accuracy of every body at every size, with its pretraining FLOPs and loss;
    curve.png: accuracy against pretraining FLOPs, and against the pretraining validation loss."""
    lines = [f"Test accuracy on {labelled.name} after full fine-tuning, mean ± std over seeds, against the "
             f"body's pretraining compute (majority class {majority:.3f}):", "",
             "| body | step | pretraining FLOPs | pretraining val loss | " + " | ".join(f"{k} labels" for k in sizes)
             + " |", "|---" * (4 + len(sizes)) + "|"]
    bow = [summarise(records, "bow", k) for k in sizes]
    lines.append("| bag-of-words | | | | " + " | ".join(f"{s[0]:.3f} ± {s[1]:.3f}" for s in bow) + " |")
    points = {}                                      # (run, k) -> [(FLOPs, loss, mean, std)]
    for name, kept in bodies.items():
        for step, flops, loss in [(0, 0.0, None)] + [(s, f, v) for s, f, v, _ in kept]:
            cells = []
            for k in sizes:
                s = summarise(records, f"{name}@{step}", k)
                cells.append("–" if s is None else f"{s[0]:.3f} ± {s[1]:.3f}")
                if s is not None:
                    points.setdefault((name, k), []).append((flops, loss, s[0], s[1]))
            row_name = f"{name} (scratch)" if step == 0 else name
            lines.append(f"| {row_name} | {step} | {flops:.3g} | {'' if loss is None else f'{loss:.3f}'} | "
                         + " | ".join(cells) + " |")
    # The trend, per kind of body and label count, over every run of that kind's pretrained bodies.
    flops_of = {f"{name}@{step}": f for name, kept in bodies.items() for step, f, *_ in kept}
    lines += ["", "Trend: test accuracy = a + b log10(pretraining FLOPs), least squares over the fine-tuning "
              "runs of the pretrained bodies (scratch left out); b per decade, with a 95% bootstrap interval "
              "over those runs (one pretraining run per body: its own variance is not counted):"]
    for kind in dict.fromkeys(kinds.values()):
        for k in sizes:
            runs = [(flops_of[r["method"]], r["test"]["accuracy"]) for r in records
                    if r["method"] in flops_of and kinds[r["method"].rsplit("@", 1)[0]] == kind and r["n_train"] == k]
            if len({f for f, _ in runs}) < 2:
                lines.append(f"- {kind}, {k} labels: fewer than two pretrained bodies, no trend")
                continue
            b, low, high = log_trend(*zip(*runs))
            lines.append(f"- {kind}, {k} labels: {b:+.3f} per decade ({low:+.3f} to {high:+.3f}), {len(runs)} runs "
                         f"from {min(runs)[0]:.2g} to {max(runs)[0]:.2g} FLOPs")
    table = "\n".join(lines)
    plumbing.write_atomic(os.path.join(out_dir, "curve.md"), (table + "\n").encode())
    # Two panels, one question each. Left: accuracy against the compute spent pretraining the body,
    # which is what a budget buys. Right: the same points against the body's pretraining loss; if
    # they fall on one line, loss alone predicts transfer, whatever compute or run gave it.
    with plumbing.figure(os.path.join(out_dir, "curve.png"), ncols=2, size=(12, 4.5)) as (fig, (left, right)):
        # A log axis of compute, with scratch (zero compute) drawn a decade left of the cheapest body.
        zero = min(f for kept in bodies.values() for _, f, *_ in kept) / 10
        for i, k in enumerate(sizes):
            colour = plumbing.colormap("tab10", i / 10)
            for j, name in enumerate(bodies):         # a marker per run; solid causal, dashed masked
                style = "osD^vP"[j % 6] + ("-" if kinds[name] == "clm" else "--")
                row = points.get((name, k), [])
                if not row:
                    continue
                # Scratch stands alone at the left: a line from it would draw decades never measured.
                for _, _, mean, std in (p for p in row if p[0] == 0):
                    left.errorbar([zero], [mean], yerr=[std], fmt=style[0], color=colour, capsize=3)
                trained = [p for p in row if p[0] > 0]
                if trained:
                    flops, losses, means, stds = zip(*trained)
                    for ax, x in ((left, flops), (right, losses)):
                        ax.errorbar(x, means, yerr=stds, fmt=style, color=colour, capsize=3,
                                    label=f"{name}, {k} labels")
            left.axhline(bow[i][0], color=colour, lw=0.8, ls=":", label=f"bag-of-words, {k} labels")
        for ax in (left, right):
            ax.axhline(majority, color="black", lw=0.8, ls="-.", label="majority class")
            ax.grid(alpha=0.3)
        left.set_xscale("log")
        left.annotate("scratch", (zero, majority), xytext=(0, -12), textcoords="offset points", ha="center",
                      fontsize=8)
        left.set(xlabel="pretraining FLOPs (scratch, zero compute, at the left)",
                 ylabel="test accuracy (mean ± std over seeds)",
                 title=f"{os.path.basename(labelled.name)}: more pretraining compute, better transfer?")
        right.set(xlabel="the body's pretraining validation loss (nats per token)", ylabel="test accuracy",
                  title="does the pretraining loss predict the gain?")
        right.invert_xaxis()
        left.legend(fontsize=7)
    return table


# ----------------------------------------------------------------------------------------------
# 4. The command line: the sweep's own flags, and every fine-tuning knob of finetune.py.

def main(argv=None):
    parser = plumbing.build_parser(__doc__.split("\n")[0], FinetuneConfig, None, epilog=(
        "The sweep sets --mode, --shots, --n-train and --eval-points itself, row by row; the other "
        "fine-tuning flags apply to every row."))
    parser.add_argument("--clm", metavar="CKPT", help="CLM checkpoint (scratch, lora and prompt use it)")
    parser.add_argument("--mlm", metavar="CKPT", help="MLM checkpoint (the mlm and scratch-mlm rows)")
    parser.add_argument("--task", default="pydocs-topic", help="pydocs-topic (offline), sst2, sms-spam, "
                        "or a path to a text<TAB>label .tsv file")
    parser.add_argument("--methods", default="scratch,clm,scratch-mlm,mlm,lora,prompt",
                        help=f"from {', '.join(SWEEP_METHODS)} (prompt: at {PROMPT_SHOTS} demonstrations)")
    parser.add_argument("--sizes", default=SWEEP_SIZES,
                        help="labelled set sizes (capped at the train split)")
    plumbing.add_flag(parser, "--seeds", 3, "seeds per point (from --seed on)", "[1, inf)")
    parser.add_argument("--data-dir", help="folder searched for data files (None: $PTFT_DATA_DIR)")
    parser.add_argument("--cache-dir", help="cache folder (None: $PTFT_CACHE_DIR or ~/.cache/ptft)")
    parser.add_argument("--out-dir", default="out/sweep", help="sweep.jsonl (results, kept as each run "
                        "finishes: the same command resumes), sweep.md and sweep.png; with --curve, "
                        "out/curve and curve.jsonl, curve.md, curve.png")
    plumbing.add_flag(parser, "--workers", 0, "runs at once, each in its own process with one thread "
                      "(0: one per core on a CPU, one on a GPU)", "[0, inf)")
    parser.add_argument("--curve", action="store_true", help="the transfer curve instead: --clm and --mlm "
                        "are run folders (comma-separated for several) whose kept checkpoints (train_clm.py "
                        "--keep) are fine-tuned, with scratch at zero compute; sizes default to 32,256")
    args = parser.parse_args(argv)
    cfg = plumbing.config_from_args(args, FinetuneConfig)
    if not args.out_dir:          # '' saves nothing elsewhere; a sweep's results are what it makes
        raise UserError("--out-dir '': a sweep keeps its results in a folder and resumes from them; "
                        "give one (. for the current folder)")
    if args.curve:
        # The curve fine-tunes every kept body at every size and seed, many runs per size, so it
        # defaults to two sizes (few labels, where pretraining matters most, and more) and a folder
        # of its own.
        args.sizes = args.sizes if args.sizes != SWEEP_SIZES else "32,256"
        args.out_dir = args.out_dir if args.out_dir != "out/sweep" else "out/curve"
        return curve(args, cfg)
    return sweep(args, cfg)


if __name__ == "__main__":
    plumbing.run_cli(main)
