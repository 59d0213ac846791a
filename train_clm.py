"""Causal language-model pretraining (GPT-style), and the one training loop every script reuses.

The objective is next-token prediction. For a text x_1 .. x_T the model is trained to minimise

    L = -(1/T) sum_t log p(x_t | x_<t)          (nats per token; the causal LM loss)

No human labels: the text is its own supervision, since every position's target is simply the
next token. A model that does this well has had to learn spelling, grammar, facts and style,
which is why its weights are a good start for other tasks (finetune.py measures that).

Reported as bits per byte, loss * (tokens / bytes) / ln 2, so that models with different
tokenizers (or none: characters) can be compared, as in nanoGPT's and GPT-2's evaluations.

Read in this order:
  1. TrainConfig and PRESETS: every knob, with its default and why.
  2. The CLM objective: how a batch is drawn and scored. train_mlm.py swaps exactly this part.
  3. The optimiser and the learning-rate schedule (AdamW with decay groups, warmup + cosine).
  4. train(): the loop (accumulation, clipping, evaluation, logging, checkpoints).
  5. Devices, precision and MFU; checkpoints; sampling; the command line.
"""
import argparse
import contextlib
import dataclasses
import json
import math
import os
import pickle
import sys
import time
import zipfile
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

import data
from data import UserError
from model import ModelConfig, Transformer


# ----------------------------------------------------------------------------------------------
# 1. Configuration.

def knob(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # data
    corpus: str = knob("pydocs", "pydocs (embedded, default), shakespeare, or a path to .txt file(s)")
    tokenizer: str = knob("bpe:4096", "gpt2, bytes, or bpe:N (a BPE with N tokens trained on the corpus)")
    data_dir: Optional[str] = knob(None, "folder searched for data files before the network "
                                         "(default: $PTFT_DATA_DIR)")
    cache_dir: Optional[str] = knob(None, "cache for tokenizers and encoded data (default: "
                                          "$PTFT_CACHE_DIR or ~/.cache/ptft)")
    # model (see model.ModelConfig)
    n_layer: int = knob(4, "Transformer blocks")
    n_head: int = knob(4, "attention heads per block")
    n_embd: int = knob(128, "width of the residual stream")
    block_size: int = knob(128, "context length in tokens")
    dropout: float = knob(0.0, "dropout probability (0 when data is plentiful)")
    bias: bool = knob(False, "biases in Linear and LayerNorm layers")
    alibi: bool = knob(True, "add ALiBi's distance penalty to attention scores (model.alibi_slopes): "
                             "measured, it lifts the masked LM off its plateau and helps the causal LM")
    init_std: float = knob(0.02, "std of the initial weights: GPT-2's 0.02 suits widths near 768; "
                                 "scaling.py uses 0.02 * sqrt(768 / width) for narrow models")
    attention: str = knob("auto", "fast (fused SDPA), explicit (the readable reference) or auto "
                                  "(whichever is faster here: model.prefer_explicit)")
    # optimisation
    batch_size: int = knob(32, "sequences per micro-batch")
    grad_accum: int = knob(1, "micro-batches per optimiser step")
    lr: float = knob(2e-3, "peak learning rate")
    min_lr: float = knob(2e-4, "final learning rate (1/10 of the peak, as Chinchilla)")
    warmup: float = knob(0.05, "warmup length, as a fraction of the whole budget")
    weight_decay: float = knob(0.1, "AdamW weight decay on matrices (GPT-3's 0.1)")
    beta1: float = knob(0.9, "AdamW beta1")
    beta2: float = knob(0.95, "AdamW beta2 (0.95 as GPT-3: steadier for large batches)")
    grad_clip: float = knob(1.0, "clip the global gradient norm to this (0: off)")
    # budget: training stops at whichever comes first; the cosine schedule ends exactly there
    max_iters: Optional[int] = knob(None, "stop after this many optimiser steps")
    max_tokens: Optional[int] = knob(None, "stop after this many training tokens")
    max_seconds: Optional[float] = knob(None, "stop after this many seconds of the training loop")
    # bookkeeping
    eval_interval: int = knob(100, "evaluate (and checkpoint) every N steps")
    eval_batches: int = knob(8, "validation batches in each periodic evaluation (fixed set)")
    log_interval: int = knob(10, "print a log line every N steps")
    device: str = knob("auto", "auto (cuda, then mps, then cpu), cuda, cuda:N, mps or cpu")
    precision: str = knob("auto", "auto (fastest measured), fp32, bf16 or fp16")
    compile: bool = knob(False, "torch.compile the model (slow start, faster steps)")
    seed: int = knob(1337, "random seed (same seed + same device = same losses on CPU)")
    out_dir: Optional[str] = knob("out/clm", "where checkpoint, log and plot go ('' to save nothing)")
    resume: bool = knob(False, "continue the run saved in --out-dir")
    init_from: Optional[str] = knob(None, "start from this checkpoint's weights and tokenizer and pretrain "
                                          "them further on --corpus (domain-adaptive pretraining); a new "
                                          "run: fresh optimiser and schedule, same model flags")
    overwrite: bool = knob(False, "replace a run already saved in --out-dir")
    quiet: bool = knob(False, "print only errors and the final summary")
    sample_tokens: int = knob(200, "tokens to sample at the end (causal models)")


PRESETS = {
    # The default: the main job, a few minutes on a 2-core laptop CPU. A fixed step count (not a
    # time budget) so that the checkpoint, and what finetune.py measures with it, is reproducible.
    # 500 steps x 4,096 tokens = 2.0M tokens, about 4 passes over pydocs' training split: the most
    # repetition that still helps as much as fresh data (Muennighoff et al. 2023).
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=128, batch_size=32, max_iters=500,
                eval_interval=100),
    # nanoGPT's CPU race, on tinyshakespeare: see README ("Time to quality"). nanoGPT's shape and
    # block; the budget leaves ~8 s of the 78 s for start-up and the final evaluation. Measured at
    # 58 s (2026-11-23, val bits per character): block 128 x batch 16 2.295 (2.481 without ALiBi),
    # lr 5e-3 2.354, batch 32 2.416, width 192 2.544, block 64 x batch 32 2.279.
    "shakespeare": dict(corpus="shakespeare", tokenizer="bpe:1024", n_layer=4, n_head=4, n_embd=128,
                        block_size=64, batch_size=32, lr=3e-3, min_lr=3e-4, max_seconds=68,
                        eval_interval=100_000),
    # For tests and smoke runs: seconds.
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8, max_iters=20,
                 eval_interval=10, eval_batches=2, log_interval=5, tokenizer="bytes"),
    # GPT-2 small (124M) shape, for a GPU: vocab padded to a multiple of 64 by the loader.
    "gpt2": dict(tokenizer="gpt2", n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=16,
                 grad_accum=8, lr=6e-4, min_lr=6e-5, warmup=0.02, max_iters=5000, eval_interval=250,
                 eval_batches=20, compile=True,
                 alibi=False),   # GPT-2 as published; and an additive bias rules out flash attention
}


# ----------------------------------------------------------------------------------------------
# 2. The objective: what a batch is and how it is scored. train_mlm.py defines its own.

@dataclass
class Objective:
    name: str                   # "clm" or "mlm": recorded in checkpoints
    causal: bool                # the model's one flag
    train_batch: Callable       # (tokens, cfg, dataset, generator, device) -> dict of tensors
    loss: Callable              # (model, batch) -> scalar loss
    eval_batches: Callable      # (tokens, cfg, dataset, n_batches, device) -> fixed list of batches
    metrics: Callable           # (model, batches, dataset) -> dict with at least "val_loss"
    finish: Callable            # (model, dataset, cfg, device) -> None: a demo at the end


def clm_train_batch(tokens, cfg, dataset, generator, device):
    idx, targets = data.get_batch(tokens, cfg.batch_size, cfg.block_size, device, generator)
    return dict(idx=idx, targets=targets)                   # (B, T) each, targets shifted by one


def clm_loss(model, batch):
    return model(batch["idx"], batch["targets"])[1]


def fixed_windows(tokens, block_size, n_windows):
    """Evenly spaced windows over the whole split, so every evaluation sees the same text and
    covers all of it (n_windows=None: every non-overlapping window)."""
    stride = block_size
    starts = np.arange(0, len(tokens) - block_size, stride)    # a window needs block_size + 1 tokens
    if n_windows is not None and n_windows < len(starts):
        starts = starts[np.linspace(0, len(starts) - 1, n_windows).round().astype(int)]
    return [np.asarray(tokens[s:s + block_size + 1], dtype=np.int64) for s in starts]


def clm_eval_batches(tokens, cfg, dataset, n_batches, device):
    windows = fixed_windows(tokens, cfg.block_size, None if n_batches is None else n_batches * cfg.batch_size)
    batches = []
    for i in range(0, len(windows), cfg.batch_size):
        chunk = torch.from_numpy(np.stack(windows[i:i + cfg.batch_size]))     # (B, T + 1)
        batches.append(dict(idx=chunk[:, :-1].to(device), targets=chunk[:, 1:].to(device)))
    return batches


def clm_metrics(model, batches, dataset):
    total, count = 0.0, 0
    for batch in batches:
        total += clm_loss(model, batch).item() * batch["targets"].numel()
        count += batch["targets"].numel()
    val_loss = total / count
    return dict(val_loss=val_loss, **unit_metrics(val_loss, dataset))


def unit_metrics(nats_per_token, dataset):
    """Loss in bits per byte and per character of the validation text (see data.bits_per_unit)."""
    meta = dataset.meta
    return dict(val_bpb=data.bits_per_unit(nats_per_token, meta["n_val_tokens"], meta["val_bytes"]),
                val_bpc=data.bits_per_unit(nats_per_token, meta["n_val_tokens"], meta["val_chars"]))


def clm_finish(model, dataset, cfg, device):
    if cfg.sample_tokens > 0:
        text = sample(model, dataset.enc, "\n", cfg.sample_tokens, device, seed=cfg.seed)
        print(f"--- sample ({cfg.sample_tokens} tokens, temperature 0.8, top-k 50) ---\n{text}\n---")


CLM = Objective("clm", True, clm_train_batch, clm_loss, clm_eval_batches, clm_metrics, clm_finish)


# ----------------------------------------------------------------------------------------------
# 3. Optimiser and schedule.

def make_optimizer(model, cfg, device):
    """AdamW (Loshchilov & Hutter 2019) with two groups. Weight decay pulls parameters toward zero;
    that is a sensible prior for matrices (embeddings, projections), whose size sets how strongly
    features mix, but not for LayerNorm gains and biases, whose job is to set a scale or an offset:
    decaying them fights the network for no regularising benefit (as in GPT-2/nanoGPT and BERT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [dict(params=[p for p in params if p.dim() >= 2], weight_decay=cfg.weight_decay),
              dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0)]
    # The fused kernel updates all parameters in one pass: much less per-tensor overhead.
    fused = device.type in ("cuda", "cpu", "mps")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def learning_rate(progress, cfg):
    """Linear warmup to the peak over the first `warmup` fraction of the budget, then a cosine down to
    min_lr exactly at the end of the budget (progress = 1). Expressing it in progress, not steps,
    is what lets a wall-clock budget (--max-seconds) end its schedule on time: Hoffmann et al.
    2022 show that a cosine longer than the run leaves loss on the table."""
    if progress < cfg.warmup:
        return cfg.lr * progress / cfg.warmup
    decay = min(1.0, (progress - cfg.warmup) / max(1e-12, 1.0 - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * decay))


def budget_progress(cfg, step, tokens, seconds):
    """Fraction of the budget spent: the largest of the three stopping rules' fractions."""
    fractions = [step / cfg.max_iters if cfg.max_iters else 0.0,
                 tokens / cfg.max_tokens if cfg.max_tokens else 0.0,
                 seconds / cfg.max_seconds if cfg.max_seconds else 0.0]
    return max(fractions)


# ----------------------------------------------------------------------------------------------
# 4. The loop.

def check_config(cfg):
    """Refuse knobs that would otherwise fail deep inside the loop, or never end it."""
    for name in ("max_iters", "max_tokens", "max_seconds"):
        if getattr(cfg, name) is not None and getattr(cfg, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if not (cfg.max_iters or cfg.max_tokens or cfg.max_seconds):
        raise UserError("no budget: give --max-iters, --max-tokens or --max-seconds")
    for name in ("batch_size", "grad_accum", "eval_interval", "eval_batches", "log_interval"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise UserError(f"unknown precision {cfg.precision!r}; use auto, fp32, bf16 or fp16")


def train(cfg: TrainConfig, objective: Objective = CLM, dataset=None):
    """Pretrain a model on cfg; returns a dict of final metrics, the history of log records and
    the trained model. Used by the command line below, by train_mlm.py and by scaling.py."""
    # Every input is checked, on every rank, before anything in --out-dir is created, changed or
    # deleted: a run refused for bad input leaves an existing run exactly as it was.
    check_config(cfg)
    dist = setup_distributed(cfg.device)
    master = dist["rank"] == 0
    log = print if (master and not cfg.quiet) else (lambda *a, **k: None)
    device = pick_device(cfg.device, dist)
    if device.type == "cpu":
        keep_freed_memory()                   # 10-15% of a CPU step was page faults (bench.py)
    check_out_dir(cfg)
    checkpoint = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt")) if cfg.resume else None

    # --init-from: another run's weights, pretrained further on this corpus with that run's
    # tokenizer (Gururangan et al. 2020's domain-adaptive pretraining). A resumed run has them already.
    start_from = load_checkpoint(cfg.init_from) if cfg.init_from and checkpoint is None else None
    if dataset is None:
        tokenizer = data.tokenizer_from_state(start_from["tokenizer_state"]) if start_from else cfg.tokenizer
        dataset = data.prepare_dataset(cfg.corpus, tokenizer, cfg.data_dir, cfg.cache_dir,
                                       verbose=master and not cfg.quiet)
    data.check_fits(dataset, cfg.block_size)
    model_config = make_model_config(cfg, dataset.enc, objective.causal)
    if checkpoint is not None:
        check_compatible(checkpoint, dataset.enc, objective)
        check_resumable(checkpoint, model_config, dist)
    if start_from is not None:
        check_compatible(start_from, dataset.enc, objective)
        check_same_model(start_from, model_config, "--init-from")
    # All input is valid: only now is --out-dir touched.
    out_dir = prepare_out_dir(cfg, checkpoint["history"] if checkpoint else []) if master else None

    torch.manual_seed(cfg.seed)                           # same seed on every rank: same init
    model = Transformer(model_config).to(device)
    optimizer = make_optimizer(model, cfg, device)
    # Each rank draws its own batches (seed + rank); the state of this generator IS the data position.
    batch_generator = torch.Generator().manual_seed(cfg.seed + 1000 * dist["rank"])
    state = dict(step=0, tokens=0, seconds=0.0, flops=0.0)
    history = []
    precision = cfg.precision
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        state = dict(checkpoint["state"])
        history = list(checkpoint["history"])
        precision = checkpoint["precision"]
        batch_generator.set_state(checkpoint["rng"]["batches"][dist["rank"]])
        log(f"resumed from {cfg.out_dir}/ckpt.pt at step {state['step']}")
    if start_from is not None:
        model.load_state_dict(start_from["model"])
        log(f"weights and tokenizer from {cfg.init_from} (step {start_from['state']['step']} of its run)")

    train_model = model
    if cfg.compile:
        train_model = torch.compile(model)
    if dist["world_size"] > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)

    sample_batch = objective.train_batch(dataset.train, cfg, dataset, torch.Generator().manual_seed(0), device)
    if precision == "auto":
        precision = broadcast_from_rank0(choose_precision(model, objective, sample_batch, device), dist)
    autocast, scaler = precision_context(device, precision)
    eval_batches = objective.eval_batches(dataset.val, cfg, dataset, cfg.eval_batches, device)
    peak = peak_flops(device, precision)
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum * dist["world_size"]
    flops_per_step = model.flops_per_token() * tokens_per_step
    log(f"model: {model.num_params(non_embedding=False):,} parameters "
        f"({model.num_params():,} non-embedding), {'causal' if objective.causal else 'bidirectional'}; "
        f"device {device}, precision {precision}, {tokens_per_step:,} tokens/step, "
        f"peak {peak / 1e12:.2f} TFLOP/s for MFU")

    def evaluate(batches):
        model.eval()
        with torch.no_grad(), autocast():
            metrics = objective.metrics(model, batches, dataset)
        model.train()
        return metrics

    def save(metrics):
        data_positions = gather_generator_states(batch_generator, dist)   # every rank takes part
        if master and out_dir:
            save_checkpoint(os.path.join(out_dir, "ckpt.pt"), dict(
                model=model.state_dict(), optimizer=optimizer.state_dict(), state=state,
                history=history, precision=precision, model_config=dataclasses.asdict(model_config),
                train_config=dataclasses.asdict(cfg), objective=objective.name,
                kind="causal" if objective.causal else "bidirectional",
                tokenizer=data.tokenizer_identity(dataset.enc),
                tokenizer_state=data.tokenizer_state(dataset.enc), metrics=metrics,
                scaler=scaler.state_dict(),                  # fp16's loss scale ({} otherwise)
                rng=dict(torch=torch.get_rng_state(), batches=data_positions,
                         cuda=torch.cuda.get_rng_state(device) if device.type == "cuda" else None)))

    if checkpoint is not None:
        # The global RNGs (dropout) are restored last: the setup above draws random numbers too
        # (measure_peak_flops), and a resumed run must continue the stream where the killed one was.
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if device.type == "cuda" and checkpoint["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state(checkpoint["rng"]["cuda"], device)
        if checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
    model.train()
    last_metrics = next((r for r in reversed(history) if "val_loss" in r), None)
    loop_start = time.perf_counter() - state["seconds"]
    interval_start, interval_tokens = time.perf_counter(), 0
    while True:
        progress = budget_progress(cfg, state["step"], state["tokens"], state["seconds"])
        if dist["world_size"] > 1:                     # ranks must agree on when a clock says stop
            progress = all_reduce_max(progress, device)
        if progress >= 1.0:
            break
        lr = learning_rate(progress, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr

        draw = lambda: objective.train_batch(dataset.train, cfg, dataset, batch_generator, device)
        loss_sum = accumulate_gradients(train_model, objective.loss, draw, cfg.grad_accum, autocast,
                                        scaler, distributed=dist["world_size"] > 1)
        loss_value = float(loss_sum)
        if dist["world_size"] > 1:     # the whole batch's loss; and all ranks agree when it is NaN
            loss_value = all_reduce_mean(loss_value, device)
        if not math.isfinite(loss_value):
            raise UserError(f"loss became {loss_value} at step {state['step']}; the last good checkpoint "
                            f"is kept. Lower --lr, or use --precision fp32/bf16 instead of fp16")
        optimizer_step(model, optimizer, scaler, cfg.grad_clip)

        state["step"] += 1
        state["tokens"] += tokens_per_step
        state["flops"] += flops_per_step
        state["seconds"] = time.perf_counter() - loop_start
        interval_tokens += tokens_per_step

        is_eval = state["step"] % cfg.eval_interval == 0
        if is_eval or state["step"] % cfg.log_interval == 0:
            tokens_per_second = interval_tokens / max(time.perf_counter() - interval_start, 1e-9)
            mfu = tokens_per_second * model.flops_per_token() / peak
            record = dict(step=state["step"], tokens=state["tokens"], flops=state["flops"],
                          seconds=round(state["seconds"], 3), lr=lr, train_loss=loss_value,
                          tokens_per_s=round(tokens_per_second), mfu=mfu)
            if is_eval:
                last_metrics = evaluate(eval_batches)
                record.update(last_metrics)
                if not math.isfinite(last_metrics["val_loss"]):
                    raise UserError(f"validation loss became {last_metrics['val_loss']} at step "
                                    f"{state['step']}; the last good checkpoint is kept. Lower --lr")
            history.append(record)
            progress = budget_progress(cfg, state["step"], state["tokens"], state["seconds"])
            eta = state["seconds"] / max(progress, 1e-9) * (1 - progress)
            val = (f"val {last_metrics['val_loss']:.4f} | {last_metrics['val_bpb']:.3f} bpb"
                   if last_metrics else "val    -   |   -   bpb")
            log(f"step {state['step']:6d} | train {loss_value:.4f} | {val} | lr {lr:.2e} | "
                f"{tokens_per_second:9,.0f} tok/s | MFU {100 * mfu:5.1f}% | "
                f"{state['seconds']:6.1f}s elapsed, ETA {eta:5.1f}s")
            if master and out_dir:
                append_jsonl(os.path.join(out_dir, "log.jsonl"), record)
            if is_eval:
                save(last_metrics)
            interval_start, interval_tokens = time.perf_counter(), 0   # evaluation is not training

    # Final evaluation over the WHOLE validation split, not a sample of it.
    final = evaluate(objective.eval_batches(dataset.val, cfg, dataset, None, device))
    record = dict(step=state["step"], tokens=state["tokens"], flops=state["flops"],
                  seconds=round(state["seconds"], 3), final=True, **final)
    history.append(record)
    save(final)
    if master and out_dir:
        append_jsonl(os.path.join(out_dir, "log.jsonl"), record)
        plot_history(history, os.path.join(out_dir, "loss.png"), objective.name)
    if master and not cfg.quiet:
        objective.finish(model, dataset, cfg, device)
    teardown_distributed(dist)
    return dict(final, tokens=state["tokens"], flops=state["flops"], steps=state["step"],
                seconds=state["seconds"], n_params=model.num_params(non_embedding=False),
                precision=precision, history=history, model=model, dataset=dataset)


def accumulate_gradients(model, loss_fn, draw_batch, grad_accum, autocast, scaler, distributed=False):
    """Gradient accumulation: grad_accum micro-batches add their gradients into .grad before one
    optimiser step, so a big batch fits in little memory. Each loss is divided by grad_accum, which
    makes the sum of gradients the gradient of the mean loss over the big batch. Under DDP the
    gradients are all-reduced only on the last micro-batch (no_sync on the others): one
    communication per step instead of grad_accum."""
    loss_sum = 0.0
    for micro in range(grad_accum):
        batch = draw_batch()
        last = micro == grad_accum - 1
        with (model.no_sync() if distributed and not last else contextlib.nullcontext()):
            with autocast():
                loss = loss_fn(model, batch) / grad_accum
            scaler.scale(loss).backward()
        loss_sum += loss.detach()
    return loss_sum


def optimizer_step(model, optimizer, scaler, grad_clip):
    """Clip the global gradient norm (Pascanu et al. 2013: one bad batch cannot throw the weights
    far), step, and clear the gradients for the next accumulation. With fp16 the scaler first
    divides the gradients back to their true size, and skips the step if any is inf or NaN."""
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def make_model_config(cfg, enc, causal):
    try:
        return ModelConfig(vocab_size=padded_vocab_size(enc.n_vocab), block_size=cfg.block_size,
                           n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout,
                           bias=cfg.bias, causal=causal, attention=cfg.attention,
                           alibi=cfg.alibi, init_std=cfg.init_std)
    except ValueError as error:
        raise UserError(f"invalid model settings: {error}") from None


def padded_vocab_size(n_vocab, multiple=64):
    """Round the embedding table up to a multiple of 64: matrix shapes that are multiples of 64
    run markedly faster on GPUs (nanoGPT: 50257 -> 50304). The extra rows are never targets."""
    return ((n_vocab + multiple - 1) // multiple) * multiple


# ----------------------------------------------------------------------------------------------
# 5. Devices, precision, MFU.

def pick_device(name, dist):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else (
            "mps" if torch.backends.mps.is_available() else "cpu")
    if not (name in ("cpu", "mps", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())):
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), "
                        f"numbered from 0; use a smaller N")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps asked for, but this machine has no Apple MPS; use --device cpu or auto")
    if name == "cuda" and dist["world_size"] > 1:
        name = f"cuda:{dist['local_rank']}"
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True       # TF32 for any fp32 matmul left: free speed
        torch.backends.cudnn.allow_tf32 = True
    return device


def keep_freed_memory():
    """Ask the C allocator (glibc) to keep the memory a training step frees, for the next step.

    By default glibc returns large freed blocks to the operating system at once, so each step's
    activations come back as fresh pages that the kernel zeroes and maps one page fault at a time:
    10-15% of a CPU training step here (measured with bench.py). Every step allocates the same
    sizes, so keeping the memory costs nothing beyond the peak already reached. The same as setting
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 (jemalloc or tcmalloc keep it by design).
    Linux with glibc only; elsewhere nothing changes. Returns whether the setting took effect."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:                                         # another C library (musl): leave it
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4                   # the option numbers in glibc's malloc.h
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def precision_context(device, precision):
    """Returns (a context manager factory for autocast, a gradient scaler).

    bf16 keeps fp32's exponent range, so it needs no loss scaling; fp16 does (Micikevicius et al.
    2018): the loss is multiplied before backward so small gradients do not underflow to zero,
    and divided back before the step. Parameters and optimiser state stay fp32 in every case."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise UserError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    if precision == "fp32":
        autocast = contextlib.nullcontext
    else:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        autocast = lambda: torch.autocast(device.type, dtype=dtype)
    scaler = torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))
    return autocast, scaler


def choose_precision(model, objective, batch, device):
    """Measure, don't assume: time a few training steps in each candidate precision on this model
    and this device, and keep the fastest. On a GPU bf16 wins (fp16 where bf16 is missing); on a CPU
    it depends on the chip (bf16 units or not) and on the model (tiny models are bound by per-op
    overhead, where autocast's casts cost more than they save)."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "mps":
        return "fp32"   # bf16 autocast on MPS varies by macOS version; fp32 is always correct
    state = {k: v.clone() for k, v in model.state_dict().items()}
    timings = {}
    for precision in ("fp32", "bf16"):
        autocast, _ = precision_context(device, precision)
        for attempt in range(3):                   # the first is a warm-up, the best of the rest counts
            start = time.perf_counter()
            with autocast():
                loss = objective.loss(model, batch)
            loss.backward()
            if attempt:
                timings[precision] = min(timings.get(precision, 1e9), time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)
    return min(timings, key=timings.get)


# Dense bf16/fp16 tensor-core peaks from the vendors' datasheets (FLOP/s), for reference next to
# the measured peak (bench.py prints both).
GPU_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "A10G": 125e12, "L4": 121e12,
                  "L40S": 362e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12}


def peak_flops(device, precision):
    """Peak FLOP/s to measure MFU against (model FLOPs utilisation, Chowdhery et al. 2022):
    measured here with a large matrix product in the precision actually used, on every device.
    CPUs differ too much for any table, and a GPU's datasheet figure assumes clocks and cooling
    that a given card may not have; datasheet_peak_flops gives it for comparison."""
    return measure_peak_flops(device, precision)


def datasheet_peak_flops(device, precision):
    """The vendor's figure for a known GPU (TF32 for fp32: half the bf16 rate); None otherwise."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    value = next((v for key, v in GPU_PEAK_FLOPS.items() if key in name), None)
    return None if value is None else (value / 2 if precision == "fp32" else value)


def measure_peak_flops(device, precision, n=None, repeats=20, warmup_s=0.3):
    # A GPU needs a large product to keep all its units busy; on a CPU 1024 already saturates them.
    n = n or (8192 if device.type == "cuda" else 1024)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if device.type == "cpu" and dtype == torch.float16:
        dtype = torch.float32       # CPUs without fp16 units emulate it (~1 GFLOP/s): not a peak
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    # Warm up first, for a time rather than a count: on the 2-core reference CPU the first
    # products of a process ran slow (once 0.10 TFLOP/s in fp32 against 0.19 warm), and a peak
    # measured then was low enough to report an MFU above 100%.
    start = time.perf_counter()
    while time.perf_counter() - start < warmup_s:
        a @ b
        synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# Distributed data parallel: one process per GPU (or per CPU group, with gloo), launched by torchrun,
# which sets RANK, LOCAL_RANK and WORLD_SIZE. Each process holds a full model; gradients are averaged.

def setup_distributed(device_name="auto"):
    if "RANK" not in os.environ:
        return dict(rank=0, local_rank=0, world_size=1)
    import torch.distributed as torch_dist
    # NCCL talks between GPUs only; gloo between CPU processes (also `--device cpu` on a GPU machine).
    on_gpu = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if not torch_dist.is_initialized():            # scaling.py calls train() many times per process
        torch_dist.init_process_group(backend="nccl" if on_gpu else "gloo")
    return dict(rank=torch_dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                world_size=torch_dist.get_world_size())


def teardown_distributed(dist):
    if dist["world_size"] > 1:
        torch.distributed.destroy_process_group()


def all_reduce_max(value, device):
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return tensor.item()


def all_reduce_mean(value, device):
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)                                   # the sum over ranks
    return tensor.item() / torch.distributed.get_world_size()


def broadcast_from_rank0(value, dist):
    """Decisions taken by measurement (precision) must be the same on every rank: rank 0's wins."""
    if dist["world_size"] == 1:
        return value
    holder = [value]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_generator_states(generator, dist):
    """Every rank's data position, so a resumed run redraws exactly the same batches."""
    state = generator.get_state()
    if dist["world_size"] == 1:
        return [state]
    gathered = [None] * dist["world_size"]
    torch.distributed.all_gather_object(gathered, state)
    return gathered


# ----------------------------------------------------------------------------------------------
# Checkpoints: data, never code.

def check_out_dir(cfg):
    """Read-only: is --out-dir usable for this run? Nothing is created, changed or deleted here."""
    if cfg.resume and not cfg.out_dir:
        raise UserError("--resume needs the --out-dir of the run to continue")
    if not cfg.out_dir:
        return
    path = os.path.join(cfg.out_dir, "ckpt.pt")
    if os.path.exists(path) and not (cfg.resume or cfg.overwrite):
        raise UserError(f"{path} already holds a run; pass --resume to continue it, --overwrite to "
                        f"replace it, or another --out-dir")
    if cfg.resume and not os.path.exists(path):
        raise UserError(f"--resume: no checkpoint at {path}; check --out-dir")
    existing = os.path.abspath(cfg.out_dir)            # the folder, or the ancestor it would go in
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not (os.path.isdir(existing) and os.access(existing, os.W_OK | os.X_OK)):
        raise UserError(f"cannot write to --out-dir {cfg.out_dir}: {existing} is not a writable "
                        f"folder; choose a writable folder")


def prepare_out_dir(cfg, history):
    """Create --out-dir and start log.jsonl from the history the run carries: empty for a new run,
    the checkpoint's for a resumed one (so records that a killed run wrote after its last
    checkpoint are dropped; the resumed run writes them again)."""
    if not cfg.out_dir:
        return None
    try:
        os.makedirs(cfg.out_dir, exist_ok=True)
        data.write_atomic(os.path.join(cfg.out_dir, "log.jsonl"),
                          "".join(json.dumps(record) + "\n" for record in history).encode())
    except OSError as error:
        raise UserError(f"cannot write to --out-dir {cfg.out_dir}: {error.strerror}; choose a writable "
                        f"folder") from None
    return cfg.out_dir


def save_checkpoint(path, payload):
    """Write to a temporary file, flush it to disk, then rename it over the old checkpoint. A
    rename is atomic on POSIX and Windows, so a crash at any instant leaves either the old
    checkpoint or the new one, never half of one."""
    tmp = f"{path}.tmp"                 # a fixed name: a killed run's leftover is simply overwritten
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:      # disk full, Ctrl-C mid-write: the old checkpoint stands
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(error, OSError):
            raise UserError(f"cannot write checkpoint {path}: {error.strerror}; the previous "
                            f"checkpoint is intact") from None
        raise
    with contextlib.suppress(OSError):                     # make the rename itself durable
        directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        os.fsync(directory)
        os.close(directory)


def load_checkpoint(path):
    """weights_only=True: only tensors, numbers, strings and containers are unpickled, so a crafted
    file cannot run code. map_location='cpu': a checkpoint from a GPU loads on any machine, and
    never onto a GPU that is already full. A checkpoint is a zip archive whose members each carry
    a CRC32; torch.load does not check them, so a flipped bit in a tensor would load silently:
    testzip() reads every member and checks it first."""
    if not os.path.exists(path):
        raise UserError(f"no checkpoint at {path}; check the path")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise UserError(f"cannot load checkpoint {path}: it is truncated or not a checkpoint "
                        f"({type(error).__name__}: {error}); use an intact copy") from None
    if damaged is not None:
        raise UserError(f"cannot load checkpoint {path}: {damaged} fails its CRC check, the file is "
                        f"corrupted; use an intact copy")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"refused checkpoint {path}: it holds Python objects other than tensors and "
                        f"plain data, which could run code when unpickled; load only checkpoints "
                        f"these scripts wrote") from None
    except Exception as error:  # noqa: BLE001 -- any other failure: not a readable checkpoint
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot load checkpoint {path}: it is corrupted or not a checkpoint "
                        f"({reason[:160]})") from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dictionary")
    return checkpoint


def check_compatible(checkpoint, enc, objective=None, want_kind=None):
    """A checkpoint is only meaningful with the tokenizer it was trained with, and a causal model
    cannot do a bidirectional model's job (or the reverse): refuse instead of computing garbage."""
    if not {"tokenizer", "kind", "model", "model_config"} <= checkpoint.keys():
        raise UserError("this file is not a pretraining checkpoint (it records no tokenizer or model "
                        "kind); use a ckpt.pt written by train_clm.py or train_mlm.py")
    saved = checkpoint["tokenizer"]
    current = data.tokenizer_identity(enc)
    if saved["fingerprint"] != current["fingerprint"]:
        raise UserError(f"tokenizer mismatch: the checkpoint was trained with {saved['name']} "
                        f"({saved['n_vocab']} tokens, {saved['fingerprint']}), this run uses "
                        f"{current['name']} ({current['n_vocab']} tokens, {current['fingerprint']}); "
                        f"use the same --corpus and --tokenizer")
    want_kind = want_kind or (("causal" if objective.causal else "bidirectional") if objective else None)
    if want_kind and checkpoint["kind"] != want_kind:
        raise UserError(f"this checkpoint holds a {checkpoint['kind']} model, but a {want_kind} one is "
                        f"needed here; use a checkpoint from "
                        f"{'train_clm.py' if want_kind == 'causal' else 'train_mlm.py'}")


def check_same_model(checkpoint, model_config, flag):
    """The checkpoint's weights must fit this run's model, and mean the same thing in it: the same
    shapes, and the same attention (ALiBi's bias has no weights, but a model trained with it
    computes something else without it). Checkpoints from before ALiBi existed had none."""
    fields = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias", "alibi")
    saved = {k: checkpoint["model_config"].get(k, False) for k in fields}
    wanted = {k: getattr(model_config, k) for k in fields}
    if saved != wanted:
        changed = ", ".join(f"{k} {saved[k]} -> {wanted[k]}" for k in fields if saved[k] != wanted[k])
        raise UserError(f"{flag}: this run's model differs from the checkpoint's ({changed}); "
                        f"use the model flags the checkpoint was trained with")


def check_resumable(checkpoint, model_config, dist):
    """--resume continues the same run: the same model (or the weights do not fit) and the same
    number of processes (each one resumes its own data position)."""
    check_same_model(checkpoint, model_config, "--resume")
    saved_ranks = len(checkpoint["rng"]["batches"])
    if saved_ranks != dist["world_size"]:
        raise UserError(f"--resume: the run was saved by {saved_ranks} process(es), this one has "
                        f"{dist['world_size']}; resume with the same torchrun --nproc_per_node")


def model_from_checkpoint(checkpoint):
    model = Transformer(ModelConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    return model


def append_jsonl(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def plot_history(history, path, title):
    """Validation and training loss against tokens seen and against training FLOPs (C ~ 6ND)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    train = [r for r in history if "train_loss" in r]
    val = [r for r in history if "val_loss" in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, x in zip(axes, ("tokens", "flops")):
        ax.plot([r[x] for r in train], [r["train_loss"] for r in train], label="train", alpha=0.6)
        ax.plot([r[x] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
        ax.set_xlabel("training tokens" if x == "tokens" else "training FLOPs (6N + attention) x tokens")
        ax.set_ylabel("loss (nats per token)")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{title} pretraining")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Sampling.

def sample(model, enc, prompt, max_new_tokens, device, temperature=0.8, top_k=50, seed=0):
    model.eval()
    ids = enc.encode_ordinary(prompt) or [data.special_ids(enc)["eot"]]
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)
    new = [t for t in out[0, len(ids):].tolist() if t < data.n_ordinary(enc)]  # drop specials
    return prompt + enc.decode(new)


def sample_from_checkpoint(args):
    checkpoint = load_checkpoint(args.sample)
    if checkpoint.get("kind") != "causal":
        raise UserError(f"{args.sample} holds a bidirectional (masked-LM) model, which cannot generate "
                        f"text left to right; use train_mlm.py --fill for it")
    enc = data.tokenizer_from_state(checkpoint["tokenizer_state"])
    model = model_from_checkpoint(checkpoint)
    print(sample(model, enc, args.prompt, args.num_tokens, torch.device("cpu"), args.temperature,
                 args.top_k, getattr(args, "seed", 0)))


# ----------------------------------------------------------------------------------------------
# The command line.

def build_parser(description, defaults_from=TrainConfig):
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", default="cpu", help=f"named settings: {', '.join(PRESETS)}; "
                        "any flag below overrides the preset")
    for f in dataclasses.fields(defaults_from):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool or f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=f.metadata["help"])
        else:
            kind = {int: int, Optional[int]: int, float: float, Optional[float]: float}.get(f.type, str)
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS,
                                help=f"{f.metadata['help']} (default: {f.default})")
    return parser


def config_from_args(args, config_class=TrainConfig, presets=PRESETS):
    given = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(config_class)}}
    if args.preset not in presets:
        raise UserError(f"unknown preset {args.preset!r}; choose one of {', '.join(presets)}")
    return config_class(**{**presets[args.preset], **given})


def run_cli(main_function, interrupted="interrupted; the last checkpoint is intact (continue with --resume)"):
    """Bad input ends in one line on stderr and exit status 2, never in a traceback."""
    try:
        main_function()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        sys.exit(130)


def report(cfg, result, start, extra_lines=()):
    """The final lines every run prints (once, from rank 0 under torchrun), in a fixed format that
    README tables quote."""
    if int(os.environ.get("RANK", 0)) != 0:
        return
    if cfg.out_dir:
        print(f"saved {cfg.out_dir}/ckpt.pt, {cfg.out_dir}/log.jsonl and {cfg.out_dir}/loss.png")
    print(f"final: {result['steps']} steps, {result['tokens']:,} tokens, {result['seconds']:.1f}s of "
          f"training, precision {result['precision']}")
    print(f"val loss: {result['val_loss']:.4f} nats per token")
    print(f"val bits per byte: {result['val_bpb']:.3f}")
    print(f"val bits per character: {result['val_bpc']:.3f}")
    for line in extra_lines:
        print(line)
    print(f"wall time: {time.perf_counter() - start:.1f}s in all")


def main(argv=None):
    parser = build_parser(__doc__.split("\n")[0])
    parser.add_argument("--sample", metavar="CKPT", help="don't train: generate text from this checkpoint")
    parser.add_argument("--prompt", default="\n", help="with --sample: text to continue")
    parser.add_argument("--num-tokens", type=int, default=300, help="with --sample: tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.8, help="with --sample: softmax temperature")
    parser.add_argument("--top-k", type=int, default=50, help="with --sample: keep the k likeliest tokens")
    args = parser.parse_args(argv)
    if args.sample:
        return sample_from_checkpoint(args)
    cfg = config_from_args(args)
    start = time.perf_counter()
    result = train(cfg, CLM)
    report(cfg, result, start)


if __name__ == "__main__":
    run_cli(main)
