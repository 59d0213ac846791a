"""Causal language-model pretraining (GPT-style), and the training loop train_mlm.py reuses.

The objective is next-token prediction. For a text x_1 .. x_T the model is trained to minimise

    L = -(1/T) sum_t log p(x_t | x_<t)          (nats per token; the causal LM loss)

No human labels: the text is its own supervision, since every position's target is simply the
next token. A model that does this well has had to learn spelling, grammar, facts and style,
which is why its weights are a good start for other tasks (finetune.py measures that).

Reported in nats per token, as nanoGPT does, and as bits per byte, loss * (tokens / bytes) / ln 2,
so that models with different tokenizers (or none: bytes) can be compared, as in GPT-2's
evaluations (data.bits_per_unit).

The loop, as nanoGPT's: set up (the data, the model with its `causal` flag, the optimiser); then
for each step set the learning rate from the fraction of the budget spent, draw a batch, run the
model forward to its loss, backward, clip and step; every so often evaluate, log and save.
What is not this lesson (checking flags, devices, DDP, checkpoint files, logs and plots) is a
call into plumbing.py, which a reader may skip.

Read in this order:
  1. TrainConfig and PRESETS: every knob, with its default, its allowed range and why.
  2. The data and the model: how a batch is drawn and scored, and the model's shape.
     train_mlm.py swaps the batch and the scoring, and turns the mask off.
  3. train(): the loop. How a gradient becomes a step (AdamW and its decay groups, Muon, warmup +
     cosine, clipping, mixed precision) is optim.py's lesson, read before this one.
  4. What pretraining leaves: its loss curves (drawn from the records train() returns), its final
     numbers, sampling, loading a checkpoint (ours or GPT-2's); the command line.
"""
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Optional

import numpy as np
import torch

import data
import optim
import plumbing
from model import ModelConfig, Transformer, padded_vocab_size
from plumbing import UserError, knob


# ----------------------------------------------------------------------------------------------
# 1. Configuration. `within` is the interval a number must lie in; plumbing checks every one
#    before a run starts, so a bad value is refused in one line instead of failing mid-run.

@dataclass
class TrainConfig:
    # data
    corpus: str = knob("pydocs", "pydocs (embedded, default), shakespeare, or a path to .txt file(s)")
    tokenizer: str = knob("bpe:4096", "gpt2, bytes, or bpe:N (a BPE with N tokens trained on the corpus)")
    data_dir: Optional[str] = knob(None, "folder searched for data files first (None: $PTFT_DATA_DIR)")
    cache_dir: Optional[str] = knob(None, "tokenizer, data and speed cache (None: $PTFT_CACHE_DIR, ~/.cache/ptft)")
    # model (see model.ModelConfig)
    n_layer: int = knob(4, "Transformer blocks", "[1, inf)")
    n_head: int = knob(4, "attention heads per block", "[1, inf)")
    n_embd: int = knob(128, "width of the residual stream", "[1, inf)")
    block_size: int = knob(128, "context length in tokens", "[1, inf)")
    dropout: float = knob(0.0, "dropout probability (0 when data is plentiful)", "[0, 1)")
    bias: bool = knob(False, "biases in Linear and LayerNorm layers")
    alibi: bool = knob(True, "add ALiBi's distance penalty to attention scores (model.alibi_slopes): "
                             "measured, it lifts the masked LM off its plateau and helps the causal LM")
    init_std: float = knob(0.02, "std of the initial weights: GPT-2's 0.02 suits widths near 768; "
                                 "scaling.py uses 0.02 * sqrt(768 / width) for narrow models", "(0, inf)")
    attention: str = knob("auto", "fast (fused SDPA), explicit (the readable reference) or auto "
                                  "(whichever is faster here, see model.SelfAttention)")
    # optimisation
    batch_size: int = knob(32, "sequences per micro-batch", "[1, inf)")
    grad_accum: int = knob(1, "micro-batches per optimiser step", "[1, inf)")
    lr: float = knob(2e-3, "peak learning rate (AdamW's)", "(0, inf)")
    muon_lr: float = knob(0.0, "peak learning rate of Muon (optim.py) for the blocks' matrices; 0: AdamW "
                               "for every parameter", "[0, inf)")
    min_lr: float = knob(2e-4, "final learning rate (1/10 of the peak, as Chinchilla); at most --lr",
                         "[0, inf)")
    warmup: float = knob(0.05, "warmup length, as a fraction of the whole budget", "[0, 1)")
    weight_decay: float = knob(0.1, "AdamW weight decay on the matrices AdamW steps (GPT-3's 0.1); with "
                                    "--muon-lr > 0 the blocks' matrices go to Muon, which applies none",
                               "[0, inf)")
    beta1: float = knob(0.9, "AdamW beta1", "[0, 1)")
    beta2: float = knob(0.95, "AdamW beta2 (0.95 as GPT-3: steadier for large batches)", "[0, 1)")
    grad_clip: float = knob(1.0, "clip the global gradient norm to this (0: off)", "[0, inf)")
    # budget: training stops at whichever comes first; the cosine schedule ends exactly there
    max_iters: Optional[int] = knob(None, "stop after this many optimiser steps", "[1, inf)")
    max_tokens: Optional[int] = knob(None, "stop after this many training tokens", "[1, inf)")
    max_seconds: Optional[float] = knob(None, "stop after this many seconds of the training loop", "(0, inf)")
    # bookkeeping
    eval_interval: int = knob(100, "evaluate (and checkpoint) every N steps", "[1, inf)")
    eval_batches: int = knob(8, "validation batches in each periodic evaluation (fixed set)", "[1, inf)")
    log_interval: int = knob(10, "print a log line every N steps", "[1, inf)")
    device: str = knob("auto", "auto (cuda, then mps, then cpu), cuda, cuda:N, mps or cpu")
    precision: str = knob("auto", "auto (fastest measured, cached per machine), fp32, bf16 or fp16")
    compile: bool = knob(False, "torch.compile the model (slow start, faster steps)")
    seed: int = knob(1337, "random seed (same seed + same device = same losses on CPU)", "[0, inf)")
    out_dir: Optional[str] = knob("out/clm", "where checkpoint, log and plot go ('' to save nothing); "
                                             "without the flag: out/clm for the cpu preset on pydocs, "
                                             "out/PRESET for another preset, -CORPUS added for another corpus")
    resume: bool = knob(False, "continue the run saved in --out-dir")
    init_from: Optional[str] = knob(None, "pretrain this checkpoint (or gpt2) further on --corpus (domain-"
                                          "adaptive pretraining), with a fresh optimiser and schedule; its "
                                          "weights bring their shape and tokenizer: the model flags do not apply")
    overwrite: bool = knob(False, "replace a run already saved in --out-dir")
    quiet: bool = knob(False, "print only errors and the final summary")
    sample_tokens: int = knob(200, "tokens to sample at the end (causal models)", "[0, inf)")
    keep: Optional[str] = knob(None, "also keep a checkpoint at these fractions of the budget, e.g. "
                                     "0.01,0.03,0.1,0.3 (ckpt-stepN.pt beside ckpt.pt): bodies pretrained for "
                                     "less compute, for the transfer curve")


PRESETS = {
    # The default: the main job, a few minutes on a 2-core laptop CPU. A fixed step count (not a
    # time budget) so that the checkpoint, and what finetune.py measures with it, is reproducible.
    # 420 steps x 4,096 tokens = 1.7M tokens, about 3.5 passes over pydocs' training split: within
    # the repetition that still helps as much as fresh data (Muennighoff et al. 2023). Muon for the
    # matrices and the initial std scaled to the width, 0.02 * sqrt(768 / 128) = 0.049 (as
    # scaling.py): measured in RESULTS.md, these reach a lower loss in fewer steps than AdamW alone,
    # so the run is shorter and still better.
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=128, batch_size=32, max_iters=420,
                eval_interval=105, lr=3e-3, min_lr=3e-4, muon_lr=0.02, init_std=0.049),
    # nanoGPT's CPU recipe on tinyshakespeare, raced in the README: nanoGPT's shape and block, a
    # BPE of 1,024 tokens, Muon and the width-scaled init as above, and a budget in steps, so that
    # the quality is the same on every machine (the settings come from the runs in RESULTS.md).
    "shakespeare": dict(corpus="shakespeare", tokenizer="bpe:1024", n_layer=4, n_head=4, n_embd=128,
                        block_size=64, batch_size=32, lr=3e-3, min_lr=3e-4, muon_lr=0.02, init_std=0.049,
                        max_iters=380, eval_interval=100_000),
    # The top of the transfer curve, for a GPU (not run on one yet): the main job with GPT-2 small's
    # depth and width (12 x 768, 88M parameters) and four times its steps (14 passes over pydocs),
    # the two levers that raised fine-tuned accuracy on the CPU: about 250x the main job's compute
    # (RESULTS.md, with a wall-time estimate). Init std 0.02 * sqrt(768 / 768). No dropout, as
    # measured; a body this large memorises sooner: try --dropout 0.1 if its val loss turns up early.
    "large": dict(n_layer=12, n_head=12, n_embd=768, block_size=128, batch_size=32, max_iters=1680,
                  eval_interval=210, lr=3e-3, min_lr=3e-4, muon_lr=0.02, init_std=0.02, compile=True),
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
# 2. The data and the model. A batch is a dict of the model's own arguments, so that the loop's
#    forward pass reads `model(**batch)` for either objective; train_mlm.py defines its own.

def get_clm_batch(tokens, cfg, enc, generator, device):
    """B random windows of the training split, as the model's inputs and targets, (B, T) each,
    targets shifted by one. Random starts, not a fixed tiling: over many steps every offset is
    seen, so the model cannot learn where a window begins."""
    idx, targets = data.get_batch(tokens, cfg.batch_size, cfg.block_size, device, generator)
    return dict(idx=idx, targets=targets)


def fixed_windows(tokens, block_size, n_windows):
    """Evenly spaced windows over the whole split, so every evaluation sees the same text and
    covers all of it (n_windows=None: every non-overlapping window)."""
    starts = np.arange(0, len(tokens) - block_size, block_size)  # a window needs block_size + 1 tokens
    if n_windows is not None and n_windows < len(starts):
        starts = starts[np.linspace(0, len(starts) - 1, n_windows).round().astype(int)]
    return [np.asarray(tokens[s:s + block_size + 1], dtype=np.int64) for s in starts]


def evaluate_clm(model, dataset, cfg, n_batches, device):
    """Validation loss on fixed windows of the validation split (the same ones at every evaluation,
    so the curve measures the model and not the luck of the draw; n_batches=None: all of it), as
    the mean over every scored token, and in bits per byte and per character of the validation
    text (data.bits_per_unit). Every position is a prediction target at once, which is why causal
    pretraining gets more signal per sequence than a masked LM's 15%."""
    n_windows = None if n_batches is None else n_batches * cfg.batch_size
    windows = fixed_windows(dataset.val, cfg.block_size, n_windows)
    total, count = 0.0, 0
    for i in range(0, len(windows), cfg.batch_size):
        chunk = torch.from_numpy(np.stack(windows[i:i + cfg.batch_size])).to(device)    # (B, T + 1)
        logits, loss = model(chunk[:, :-1], chunk[:, 1:])
        total += loss.item() * chunk[:, 1:].numel()
        count += chunk[:, 1:].numel()
    val_loss, meta = total / count, dataset.meta
    return dict(val_loss=val_loss,
                val_bpb=data.bits_per_unit(val_loss, meta["n_val_tokens"], meta["val_bytes"]),
                val_bpc=data.bits_per_unit(val_loss, meta["n_val_tokens"], meta["val_chars"]))


KINDS = {True: "causal", False: "bidirectional"}     # what a checkpoint calls each kind of model


def describe(model, enc):
    """What a checkpoint records beside the weights, so that the model and its tokenizer can be
    rebuilt exactly: the shape, the kind (and so the mask and the objective), the tokenizer."""
    return dict(model_config=asdict(model.config), kind=KINDS[model.config.causal],
                tokenizer=data.tokenizer_identity(enc), tokenizer_state=data.tokenizer_state(enc))


def model_config(cfg, causal, start_from=None):
    """The model's shape from the run's flags, checked before any data is read; its vocabulary is
    the tokenizer's, which train() sets once the data is loaded. causal=True is GPT (each position
    sees only its left); causal=False is BERT (train_mlm.py). --init-from (start_from): the
    checkpoint's own shape and vocabulary, since its weights must fit."""
    if start_from is not None:
        config = ModelConfig(**{**start_from["model_config"], "dropout": cfg.dropout,
                                "attention": cfg.attention})
        if cfg.block_size > config.block_size:
            raise UserError(f"--block-size {cfg.block_size} is longer than {cfg.init_from}'s position "
                            f"table ({config.block_size}); give at most that")
        return config
    try:
        return ModelConfig(block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                           dropout=cfg.dropout, bias=cfg.bias, alibi=cfg.alibi, init_std=cfg.init_std,
                           attention=cfg.attention, causal=causal)
    except ValueError as error:
        raise UserError(f"invalid model settings: {error}") from None


# ----------------------------------------------------------------------------------------------
# 3. The loop. Gradient accumulation: grad_accum micro-batches add their gradients into .grad
#    before one step, so a big batch fits in little memory; dividing each loss by grad_accum makes
#    the sum the gradient of the mean loss over the big batch.

def train(cfg: TrainConfig, causal=True, get_batch=get_clm_batch, evaluate=evaluate_clm, dataset=None):
    """Pretrain a Transformer on cfg: causal=True with next-token batches (this file), or causal=False
    with train_mlm.py's masked batches and evaluation. Returns the final metrics, the log records
    (plot_losses draws them), the model and the dataset (scaling.py passes a dataset already loaded)."""
    run = plumbing.open_run(cfg)    # set up: every input checked before --out-dir is touched (plumbing)
    device, dist = run.device, run.dist
    start_from, tokenizer = None, cfg.tokenizer
    if cfg.init_from and run.resume_from is None:   # another run's weights (or GPT-2's), and its tokenizer
        start_from, tokenizer = load_pretrained(cfg.init_from, KINDS[causal], cfg.data_dir, cfg.cache_dir)
    # The model's shape. `causal` is the one flag between a GPT (True) and a BERT (False): model.py.
    config = model_config(cfg, causal, start_from)
    if dataset is None:                             # the corpus as token ids, split 90/10 (data.py)
        dataset = data.prepare_dataset(cfg.corpus, tokenizer, cfg.data_dir, cfg.cache_dir, verbose=run.verbose)
    plumbing.check_fits(dataset, cfg.block_size)    # a window fits in each split
    if start_from is None:                          # the vocabulary: the tokenizer's, padded (model.py)
        config = replace(config, vocab_size=padded_vocab_size(dataset.enc.n_vocab))
    torch.manual_seed(cfg.seed)                     # same seed on every rank: same init
    model = Transformer(config).to(device)
    optimizer = optim.make_optimizer(model, cfg, device, cfg.muon_lr)
    description = describe(model, dataset.enc)      # what its checkpoints record about it
    # Each rank draws its own batches (seed + rank); the state of this generator IS the data position.
    batch_generator = torch.Generator().manual_seed(cfg.seed + 1000 * dist["rank"])
    state, history, precision = plumbing.restore(run, description, model, optimizer, batch_generator, start_from)
    plumbing.start_run(run)                         # all checked: only now is --out-dir made, its log begun
    train_model = plumbing.wrap_for_training(model, cfg.compile, device, dist)   # compile, DDP
    if precision == "auto":                         # measured once per machine and shape
        probe = get_batch(dataset.train, cfg, dataset.enc, torch.Generator().manual_seed(0), device)
        precision = plumbing.broadcast_from_rank0(plumbing.choose_precision(
            model, lambda m, batch: m(**batch)[1], probe, device, cfg.cache_dir), dist)
    autocast, scaler = optim.precision_context(device, precision)    # asked or saved: open_run checked it
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum * dist["world_size"]
    meter = plumbing.Meter(model.flops_per_token(), plumbing.peak_flops(device, precision, cfg.cache_dir),
                           devices=dist["world_size"])
    plumbing.log_model(run, model, precision, tokens_per_step, meter.peak, len(dataset.train))

    def evaluate_now(n_batches):                    # no dropout, no gradients, the run's precision
        model.eval()
        with torch.no_grad(), autocast():
            metrics = evaluate(model, dataset, cfg, n_batches, device)
        model.train()
        return metrics

    save = lambda metrics: plumbing.save_run(run, description, model, optimizer, scaler, batch_generator,
                                             state, history, precision, metrics)     # ckpt.pt, atomically
    plumbing.restore_random_state(run, scaler)      # last: set-up drew random numbers too
    last_metrics = next((r for r in reversed(history) if "val_loss" in r), None)
    loop_start = time.perf_counter() - state["seconds"]
    progress = optim.budget_progress(cfg, state)    # the fraction of the budget spent (resumed: > 0)
    with plumbing.StopSignals() as stop:            # SIGTERM: finish the step, save, exit 143
        while plumbing.agree_max(max(progress, stop.budget), device, dist) < 1.0:   # all ranks agree
            lr = optim.learning_rate(optim.step_progress(cfg, state, tokens_per_step), cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            loss_sum = 0.0
            for micro in range(cfg.grad_accum):             # gradient accumulation (see above)
                batch = get_batch(dataset.train, cfg, dataset.enc, batch_generator, device)  # (B, T) tensors
                with plumbing.sync_gradients(train_model, last=micro == cfg.grad_accum - 1):  # DDP: once a step
                    with autocast():
                        logits, loss = train_model(**batch)          # forward: the model scores itself
                    scaler.scale(loss / cfg.grad_accum).backward()   # backward: gradients add up
                loss_sum += loss.detach() / cfg.grad_accum      # stays on the device: no wait here
            optim.optimizer_step(model, optimizer, scaler, cfg.grad_clip)

            plumbing.count_step(state, meter, tokens_per_step, time.perf_counter() - loop_start)
            progress = optim.budget_progress(cfg, state)
            is_eval = plumbing.keep_due(run, progress) or state["step"] % cfg.eval_interval == 0
            if is_eval or state["step"] % cfg.log_interval == 0:
                loss = plumbing.agree_mean(float(loss_sum), device, dist)   # read only here: it waits for the device
                plumbing.check_finite(loss, "loss", state["step"])   # NaN: stop before a checkpoint holds it
                record = plumbing.step_record(state, meter, lr=lr, train_loss=loss)     # reads the meter
                if is_eval:
                    last_metrics = evaluate_now(cfg.eval_batches)
                    plumbing.check_finite(last_metrics["val_loss"], "validation loss", state["step"])
                    record.update(last_metrics)
                history.append(record)
                plumbing.log_step(run, record, last_metrics, progress)
                if is_eval:
                    save(last_metrics)
                meter.restart()                                # evaluation is not training
        if stop.received:                           # stopped by a signal: keep every step done
            save(last_metrics)
            plumbing.terminated(run, state["step"])

    # Final evaluation over the WHOLE validation split, by rank 0 alone; its numbers go to every rank.
    final = plumbing.broadcast_from_rank0(evaluate_now(None) if dist["rank"] == 0 else None, dist)
    plumbing.check_finite(final["val_loss"], "validation loss", state["step"])      # on every rank
    history.append(dict(plumbing.counters(state), final=True, **final))
    save(final)
    plumbing.finish_run(run, history)               # the last log record; the folder freed; DDP closed
    return dict(final, tokens=state["tokens"], flops=state["flops"], steps=state["step"], seconds=state["seconds"],
                n_params=model.num_params(non_embedding=False), precision=precision, history=history,
                model=model, dataset=dataset)


# ----------------------------------------------------------------------------------------------
# 4. What pretraining leaves: its loss curves and final numbers, a model to sample from, and a
#    checkpoint to load. The command line.

def plot_losses(cfg, history, objective, note=""):
    """--out-dir's loss.png (drawn once, by rank 0): training and validation loss against tokens
    seen, and against training compute (C ~ 6ND, plus attention), the x axis of scaling.py's curves."""
    if not (cfg.out_dir and plumbing.is_main_process()):
        return
    train_records = [r for r in history if "train_loss" in r]
    val_records = [r for r in history if "val_loss" in r]
    with plumbing.figure(os.path.join(cfg.out_dir, "loss.png"), ncols=2, size=(11, 4)) as (fig, axes):
        for ax, x in zip(axes, ("tokens", "flops")):
            ax.plot([r[x] for r in train_records], [r["train_loss"] for r in train_records], label="train", alpha=0.6)
            ax.plot([r[x] for r in val_records], [r["val_loss"] for r in val_records], "o-", label="validation")
            ax.set_xlabel("training tokens" if x == "tokens" else "training FLOPs (6N + attention) x tokens")
            ax.set_ylabel("loss (nats per token)")
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(f"{objective} pretraining on {os.path.basename(cfg.corpus)}\n{note}".strip())


def report(cfg, result, start, extra_lines=()):
    """The lines a pretraining run ends with (once, from rank 0 under torchrun): what it cost, and
    the validation loss in nats per token, bits per byte and bits per character, in a fixed format
    that the README's tables quote."""
    if not plumbing.is_main_process():
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


def sample(model, enc, prompt, max_new_tokens, device, temperature=0.8, top_k=50, seed=0):
    """The prompt and its continuation, drawn token by token from the model's own predictions
    (model.generate): temperature below 1 sharpens them, top-k cuts the long tail of unlikely
    tokens. Seeded, so one checkpoint, prompt and seed always give the same text."""
    model.eval()
    ids = enc.encode_ordinary(prompt) or [data.special_ids(enc)["eot"]]
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator,
                         n_vocab=data.n_ordinary(enc))                   # text tokens only
    return prompt + enc.decode(out[0, len(ids):].tolist())


def load_pretrained(path, kind=None, data_dir=None, cache_dir=None):
    """(checkpoint, tokenizer) for a model that was pretrained: a ckpt.pt of train_clm.py or
    train_mlm.py (read by plumbing.load_checkpoint, its model built once to see that this code
    can, its tokenizer rebuilt and checked to be the one it records), or GPT-2 (`gpt2`, or a
    Hugging Face GPT-2 folder), read into the same format.
    kind: "causal" or "bidirectional" when only one will do."""
    if path == "gpt2" or os.path.isdir(path):
        plumbing.check_kind(dict(kind="causal"), kind, path)   # GPT-2 is causal: said before its files are read
        return gpt2_checkpoint(path, data_dir, cache_dir)
    checkpoint = plumbing.load_checkpoint(path, kind)
    checkpoint.pop("optimizer", None)               # only a resumed run needs it: free the memory
    try:   # a shape and weights that this code's Transformer takes (not another version's, nor edited)
        Transformer.from_checkpoint(checkpoint)
    except (TypeError, ValueError, RuntimeError) as error:
        lines = str(error).strip().splitlines() or [type(error).__name__]
        raise UserError(f"{path} holds a model this code cannot build ({lines[-1].strip()[:160]}); use a "
                        f"checkpoint that this version of train_clm.py or train_mlm.py wrote") from None
    enc = data.tokenizer_from_state(checkpoint["tokenizer_state"], checkpoint["tokenizer"])
    return checkpoint, enc


def gpt2_checkpoint(name_or_folder, data_dir=None, cache_dir=None):
    """GPT-2 as a checkpoint of ours, and its tokenizer: `gpt2` (config.json and model.safetensors
    in the data dir's gpt2/ folder, else the cache's, else downloaded and checked) or a Hugging
    Face GPT-2 folder; gpt2/gpt2.tiktoken is found the same way. No train_config: its pretraining
    text is not here."""
    if name_or_folder != "gpt2" and not os.path.isfile(os.path.join(name_or_folder, "config.json")):
        raise UserError(f"{name_or_folder} is a folder without config.json; give a checkpoint file, gpt2, "
                        f"or a Hugging Face GPT-2 folder")
    enc = data.get_tokenizer("gpt2", data_dir=data_dir, cache_dir=cache_dir)
    folder = name_or_folder
    if name_or_folder == "gpt2":
        config_path, weights_path = (plumbing.obtain_data_file(f"gpt2/{name}", data_dir, cache_dir)
                                     for name in ("config.json", "model.safetensors"))
        if config_path.parent != weights_path.parent:
            raise UserError(f"{config_path} and {weights_path} must be in the same folder; move one of them")
        folder = config_path.parent
    config = plumbing.read_json(os.path.join(folder, "config.json"))
    vocab_size = config.get("vocab_size") if isinstance(config, dict) else None
    # GPT-2's 50,257 tokens are our 50,256 ordinary ones plus <|endoftext|> (our first special).
    if vocab_size != data.n_ordinary(enc) + 1:
        raise UserError(f"{folder}: {vocab_size} tokens in config.json, but GPT-2's tokenizer has "
                        f"{data.n_ordinary(enc) + 1}; use GPT-2's own config and weights")
    try:   # the table grows to a multiple of 64, with room for our other specials
        model = Transformer.from_gpt2(config, plumbing.read_weights(folder), vocab_size=padded_vocab_size(enc.n_vocab))
    except (KeyError, RuntimeError, ValueError) as error:
        raise UserError(f"{folder} is not a GPT-2 model this code can read ({type(error).__name__}: "
                        f"{str(error).splitlines()[0][:160]})") from None
    return dict(describe(model, enc), model=model.state_dict()), enc       # as a checkpoint of ours records it


# What a checkpoint's saved flags must hold to find its pretraining text again and score on it.
PRETRAINING_FIELDS = {"train_config.corpus": str, "train_config.tokenizer": str,
                      **dict.fromkeys(("train_config.batch_size", "train_config.block_size"),
                                      lambda n: isinstance(n, int) and n > 0),
                      **dict.fromkeys(("train_config.data_dir", "train_config.cache_dir"),   # None: the defaults
                                      (str, type(None)))}


def pretraining_dataset(checkpoint, path, data_dir=None, cache_dir=None):
    """The dataset the checkpoint read from `path` was pretrained on (its run's saved --corpus and
    --tokenizer; data_dir and cache_dir, if given, say where to look instead), checked to give the
    checkpoint's vocabulary."""
    bad = plumbing.invalid_fields(checkpoint, PRETRAINING_FIELDS)
    if bad:                                         # edited, or not written by train_clm.py / train_mlm.py
        raise UserError(f"{path}: the run's saved flags have no valid {', '.join(bad)}, so its pretraining "
                        f"text cannot be found again; use a ckpt.pt that train_clm.py or train_mlm.py wrote")
    saved = checkpoint["train_config"]
    dataset = data.prepare_dataset(saved["corpus"], saved["tokenizer"], data_dir or saved.get("data_dir"),
                                   cache_dir or saved.get("cache_dir"), verbose=False)
    plumbing.check_tokenizer(checkpoint, data.tokenizer_identity(dataset.enc))
    return dataset


def main(argv=None):
    parser = plumbing.build_parser(__doc__.split("\n")[0], TrainConfig, PRESETS)
    parser.add_argument("--sample", metavar="CKPT", help="don't train: generate text from this checkpoint "
                        "(or gpt2, or a Hugging Face GPT-2 folder)")
    parser.add_argument("--prompt", default="\n", help="with --sample: text to continue")
    plumbing.add_flag(parser, "--num-tokens", 300, "with --sample: tokens to generate", "[1, inf)")
    plumbing.add_flag(parser, "--temperature", 0.8, "with --sample: softmax temperature", "(0, inf)")
    plumbing.add_flag(parser, "--top-k", 50, "with --sample: keep the k likeliest tokens", "[1, inf)")
    args = parser.parse_args(argv)
    if args.sample:                 # no training: a causal checkpoint continues --prompt
        checkpoint, enc = load_pretrained(args.sample, "causal", getattr(args, "data_dir", None),
                                          getattr(args, "cache_dir", None))
        device = plumbing.pick_device(getattr(args, "device", "auto"))        # --device, as training
        model = Transformer.from_checkpoint(checkpoint).to(device)
        print(sample(model, enc, args.prompt, args.num_tokens, device, args.temperature, args.top_k,
                     getattr(args, "seed", 0)))
        return
    cfg = plumbing.config_from_args(args, TrainConfig, PRESETS, kind="clm")
    start = time.perf_counter()
    result = train(cfg, causal=True)
    plot_losses(cfg, result["history"], "clm")          # the curves, beside the checkpoint
    if plumbing.is_main_process() and not cfg.quiet and cfg.sample_tokens > 0:
        # A sample of generated text: the quickest check of what the model learned, by eye.
        model = result["model"]
        text = sample(model, result["dataset"].enc, "\n", cfg.sample_tokens, next(model.parameters()).device,
                      seed=cfg.seed)
        print(f"--- sample ({cfg.sample_tokens} tokens, temperature 0.8, top-k 50) ---\n{text}\n---")
    report(cfg, result, start)


if __name__ == "__main__":
    plumbing.run_cli(main)
