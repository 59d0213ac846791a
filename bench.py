"""How fast does it train? Throughput, MFU and memory of the training step, measured, not guessed.

One number answers "how fast": tokens per second through a full training step, exactly the step
train_clm.train() runs (forward, backward, gradient clipping, fused AdamW):

    tokens per second = batch_size * block_size * steps / seconds

One number answers "how well is the machine used": model FLOPs utilisation (Chowdhery et al. 2022,
PaLM, appendix B), the useful arithmetic done per second over what the matrix units can do:

    MFU = tokens per second * FLOPs per token / peak FLOP/s

FLOPs per token are Transformer.flops_per_token (6N + 12 * n_layer * T * C). The peak is measured
here, on the spot, with a large matrix product in the same precision as the row (a bf16 row is
compared with the bf16 peak, an fp32 row with the fp32 peak); on a GPU the datasheet figure is
reported next to it for reference. MFU is what makes rows of different sizes comparable: a tiny
model is bound by per-operation overhead (low MFU), a wide one by arithmetic (high MFU).

How the measurement is kept honest:
  - every configuration runs in its own fresh Python process, so one row's compiled graphs,
    allocator caches or memory peak cannot leak into the next row's numbers;
  - the first steps are warm-up and are not timed (memory allocation, kernel selection, and under
    torch.compile the compilation itself, whose cost is reported separately as warmup_s);
  - peak memory is the process's maximum resident set size on a CPU (everything: weights, optimiser
    state, activations, and the Python and PyTorch runtime), torch.cuda.max_memory_allocated on a GPU;
  - the tokenizer is measured too (MB/s encoding the default corpus, seconds to train the BPE),
    since a data pipeline slower than the model would make every other number moot.

Other programs running on the same cores distort wall-clock timings (two threads that must meet at
every operation wait for the slower one): each row records the load average, and the table should
only be quoted from a quiet machine.

Side by side: `--reference path/to/nanoGPT/model.py` adds rows for nanoGPT's model trained by
nanoGPT's own step on the same machine, in the same process setup, so "faster than nanoGPT" is a
measurement anyone with a clone of nanoGPT can repeat, not a figure quoted from elsewhere.

Read in this order: SHAPES, measure_training (one row) and time_steps, measure_reference (the same
row for nanoGPT), measure_tokenizer, run_isolated (one fresh process per row), the table, the
command line.
"""
import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

import data
import optim
import plumbing
import train_clm
from model import ModelConfig, Transformer, padded_vocab_size
from plumbing import UserError, knob

# Model shapes, named layers x width. The first three are the shapes of the README's comparison
# with nanoGPT: its README's CPU example (shakespeare_char, 4 layers, width 128, 64-token context,
# batch 12, 65 characters), then two that a bpe:4096 vocabulary and more width make realistic.
# "preset:NAME" measures the shape of a train_clm.py preset (preset:cpu is what a user trains by
# default). The vocabulary is padded to a multiple of 64, as training pads it.
SHAPES = {
    "4x128": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, vocab_size=65),
    "6x384": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=16, vocab_size=4096),
    "8x512": dict(n_layer=8, n_head=8, n_embd=512, block_size=256, batch_size=8, vocab_size=4096),
    "2x32": dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, vocab_size=64),  # --quick
}
SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size")


def parse_shape(text):
    """A name from SHAPES, preset:NAME, or 'n_layer/n_head/n_embd/block_size/batch_size/vocab_size'."""
    if text in SHAPES:
        return text, dict(SHAPES[text])
    if text.startswith("preset:") and text[7:] in train_clm.PRESETS:
        cfg = train_clm.TrainConfig(**train_clm.PRESETS[text[7:]])
        ordinary = {"bytes": 256, "gpt2": 50257}.get(cfg.tokenizer) or int(cfg.tokenizer[4:])   # bpe:N
        return text, dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                          batch_size=cfg.batch_size,           # one micro-batch
                          vocab_size=ordinary + len(data.SPECIAL_TOKENS),
                          alibi=cfg.alibi)                     # the gpt2 preset has none, as GPT-2
    parts = text.split("/")
    if len(parts) != len(SHAPE_KEYS) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UserError(f"unknown shape {text!r}; use one of {', '.join(SHAPES)}, preset:NAME "
                        f"({', '.join(train_clm.PRESETS)}) or layers/heads/width/block/batch/vocab, "
                        f"e.g. 4/4/128/64/12/65")
    shape = dict(zip(SHAPE_KEYS, map(int, parts)))
    try:                                    # refused now, not minutes into the measurements
        shape_config(shape)
    except ValueError as error:             # e.g. a width that the heads do not divide
        raise UserError(f"shape {text!r}: {error}") from None
    return text, shape


def shape_config(shape):
    """The model of a shape, unpadded (its batch size belongs to the step, not to the model)."""
    return ModelConfig(**{k: shape[k] for k in SHAPE_KEYS if k != "batch_size"})


def default_precisions(device):
    """fp16 only where it applies: CUDA has fp16 units; CPUs compute it by converting to fp32."""
    return {"cuda": ["fp32", "bf16", "fp16"], "mps": ["fp32"]}.get(device.type, ["fp32", "bf16"])


# ----------------------------------------------------------------------------------------------
# One row: the training step of one shape in one precision, attention and compile setting.

def measure_training(spec):
    """Time spec["steps"] training steps after spec["warmup"] untimed ones; returns a row (dict).
    With spec["reference"] (a path to nanoGPT's model.py) the row is nanoGPT's, see measure_reference.

    The step is train_clm.train()'s: the same optimiser (optim.make_optimizer, with AdamW for
    every parameter, as nanoGPT's step: Muon's extra work per step is a trade of its own, measured
    in RESULTS.md), autocast and gradient scaler (optim.precision_context), the forward pass to
    the loss, backward, clipping and loss read-out (optim.optimizer_step), on random windows of a
    random token stream drawn by data.get_batch, the training data path. One micro-batch a step,
    as here train() has grad_accum = 1.
    """
    device = plumbing.pick_device(spec["device"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    if spec.get("reference"):
        return measure_reference(spec, device)
    shape = spec["shape"]
    cfg = train_clm.TrainConfig(n_layer=shape["n_layer"], n_head=shape["n_head"], n_embd=shape["n_embd"],
                                block_size=shape["block_size"], batch_size=shape["batch_size"],
                                attention=spec["attention"], device=spec["device"])
    torch.manual_seed(0)
    model_config = ModelConfig(vocab_size=padded_vocab_size(shape["vocab_size"]),
                               block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                               n_embd=cfg.n_embd, attention=cfg.attention,
                               alibi=shape.get("alibi", cfg.alibi))   # a preset's own, else the default
    model = Transformer(model_config).to(device)
    optimizer = optim.make_optimizer(model, cfg, device)          # AdamW, as nanoGPT's step
    autocast, scaler = optim.precision_context(device, plumbing.check_precision(device, spec["precision"]))
    train_model = torch.compile(model) if spec["compiled"] else model
    tokens = np.random.default_rng(0).integers(0, shape["vocab_size"], 1 << 20, dtype=np.uint16)
    generator = torch.Generator().manual_seed(0)

    def step():                                       # the body of train()'s loop, minus logging
        batch = train_clm.get_clm_batch(tokens, cfg, None, generator, device)
        with autocast():
            logits, loss = train_model(**batch)
        scaler.scale(loss / cfg.grad_accum).backward()
        loss_value = float(loss.detach() / cfg.grad_accum)   # train() reads the loss every step
        optim.optimizer_step(model, optimizer, scaler, cfg.grad_clip)
        return loss_value

    return time_steps(step, spec, device, cfg.batch_size * cfg.block_size * cfg.grad_accum,
                      model.flops_per_token())


def time_steps(step, spec, device, tokens_per_step, flops_per_token):
    """Run spec["warmup"] untimed steps, then time spec["steps"] of them, or as many more as fill
    spec["min_seconds"]: a shared machine's speed drifts over seconds, and ten 30 ms steps of a
    small model would sample a moment of it, not the machine. Returns the row."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(spec["warmup"]):
        step()
    plumbing.synchronize(device)
    warmup_s = time.perf_counter() - start
    start, steps = time.perf_counter(), 0
    while steps < spec["steps"] or time.perf_counter() - start < spec.get("min_seconds", 0):
        loss = step()                                 # reads the loss: each step ends synchronised
        steps += 1
    plumbing.synchronize(device)
    seconds = time.perf_counter() - start
    memory_mb = peak_memory_mb(device)                # before the peak measurement's big matrices

    tokens_per_s = tokens_per_step * steps / seconds
    peak = plumbing.peak_flops(device, spec["precision"])   # datasheet on known GPUs, else measured
    return dict(kind="train_step", shape=spec["shape_name"], **spec["shape"], precision=spec["precision"],
                attention=spec["attention"], compiled=spec["compiled"], tokens_per_s=round(tokens_per_s, 1),
                mfu=round(tokens_per_s * flops_per_token / peak, 4), peak_memory_mb=memory_mb,
                memory_kind=("max allocated (CUDA)" if device.type == "cuda" else "max RSS of the process"
                             + ("" if spec.get("isolated", True) else ", cumulative over the rows it ran")),
                step_ms=round(1000 * seconds / steps, 2), warmup_s=round(warmup_s, 2),
                steps=steps, warmup=spec["warmup"], final_loss=round(loss, 4),
                flops_per_token=flops_per_token,
                measured_peak_flops=plumbing.measured_peak_flops(device, spec["precision"]),
                datasheet_peak_flops=plumbing.datasheet_peak_flops(device, spec["precision"]),
                **machine(device))


# ----------------------------------------------------------------------------------------------
# The same row for a reference implementation: nanoGPT, measured on this machine, not quoted.

def load_reference(path):
    """Import nanoGPT's model.py from a path (the user's own clone; none of its code is in this
    repository). It must define GPTConfig and GPT, as github.com/karpathy/nanoGPT does."""
    import importlib.util
    if not os.path.isfile(path):
        raise UserError(f"--reference {path}: no such file; clone https://github.com/karpathy/nanoGPT "
                        f"and pass the path of its model.py")
    module_spec = importlib.util.spec_from_file_location("reference_model", path)
    if module_spec is None:                             # no .py: Python has no loader for it
        raise UserError(f"--reference {path}: not a Python file; pass nanoGPT's model.py")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 -- the user's file, not ours: whatever it raises is one line
        reason = (str(error).strip().splitlines() or [""])[0][:160]
        raise UserError(f"--reference {path} fails to import ({type(error).__name__}: {reason}); pass "
                        f"nanoGPT's model.py") from None
    if not (hasattr(module, "GPT") and hasattr(module, "GPTConfig")):
        raise UserError(f"--reference {path}: defines no GPT and GPTConfig; pass nanoGPT's model.py")
    return module


def measure_reference(spec, device):
    """nanoGPT's model trained by nanoGPT's own step, as its train.py runs it with the README's CPU
    command (dropout 0, bias False, AdamW from its configure_optimizers, which is fused only on
    CUDA; gradient clipping at 1.0; the loss read every step, as log_interval=1 does). The batches
    come from data.get_batch, the same windows our rows draw, so only model and step differ.
    Its own precision on a CPU is fp32; the bf16 row forces autocast, to compare like with like."""
    reference = load_reference(spec["reference"])
    shape = spec["shape"]
    # FLOPs per token of the same shape, by our formula (nanoGPT's estimate_mfu uses the same one),
    # computed before nanoGPT's model exists: the throwaway model is freed before the peak memory
    # of the training steps is reached, so it cannot inflate the row's peak memory.
    flops_per_token = Transformer(shape_config(shape)).flops_per_token()
    torch.manual_seed(0)
    with contextlib.redirect_stdout(sys.stderr):      # it prints its parameter count
        model = reference.GPT(reference.GPTConfig(
            block_size=shape["block_size"], vocab_size=shape["vocab_size"], n_layer=shape["n_layer"],
            n_head=shape["n_head"], n_embd=shape["n_embd"], dropout=0.0, bias=False)).to(device)
        optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), device.type)
    autocast, scaler = optim.precision_context(device, plumbing.check_precision(device, spec["precision"]))
    train_model = torch.compile(model) if spec["compiled"] else model
    tokens = np.random.default_rng(0).integers(0, shape["vocab_size"], 1 << 20, dtype=np.uint16)
    generator = torch.Generator().manual_seed(0)

    def step():
        x, y = data.get_batch(tokens, shape["batch_size"], shape["block_size"], device, generator)
        with autocast():
            _, loss = train_model(x, y)
        scaler.scale(loss).backward()
        loss_value = loss.item()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss_value

    return time_steps(step, spec, device, shape["batch_size"] * shape["block_size"], flops_per_token)


def peak_memory_mb(device):
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    try:
        import resource                               # POSIX only
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)   # bytes on macOS, KiB on Linux


def machine(device):
    """What the numbers were measured on, and how busy it was (1-minute load average)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return dict(device=device.type, device_name=device_name(device), threads=torch.get_num_threads(),
                torch=torch.__version__, load_avg=None if load is None else round(load, 2))


def device_name(device):
    """The GPU's name; or the CPU's, with the vector units PyTorch uses on it (the same model name
    covers parts with and without AVX-512 and its bf16 instructions) and its cores."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{plumbing.cpu_name()} ({torch.backends.cpu.get_cpu_capability()}), {os.cpu_count()} cores"


# ----------------------------------------------------------------------------------------------
# The tokenizer: encoding speed on the corpus, and how long learning the BPE takes.

def measure_tokenizer(corpus_name, tokenizer_name, max_chars=None, data_dir=None, cache_dir=None):
    """BPE training time (always trained afresh: the cache is bypassed) and encoding MB/s, both with
    one thread (enc.encode_ordinary) and with data.encode_text's parallel chunks, as prepare_dataset."""
    corpus = data.load_corpus(corpus_name, data_dir, cache_dir)
    text = corpus.text[:max_chars]
    train_text = text[:int(len(text) * (1 - data.VAL_FRACTION))]       # as prepare_dataset trains it
    n_bytes = len(text.encode("utf-8"))
    bpe_train_s = None
    if tokenizer_name.startswith("bpe:"):
        start = time.perf_counter()
        ranks = data.train_bpe(train_text, int(tokenizer_name[4:]))
        bpe_train_s = time.perf_counter() - start
        enc = data.make_encoding(tokenizer_name, ranks)
    else:
        enc = data.get_tokenizer(tokenizer_name, text, cache_dir, data_dir)
    start = time.perf_counter()
    n_tokens = len(enc.encode_ordinary(text))
    one_thread_s = time.perf_counter() - start
    start = time.perf_counter()
    data.encode_text(enc, text)
    parallel_s = time.perf_counter() - start
    cpu = torch.device("cpu")
    return dict(kind="tokenizer", shape=f"{corpus_name}, {tokenizer_name}", precision=None, attention=None,
                compiled=False, tokens_per_s=round(n_tokens / one_thread_s), mfu=None,
                peak_memory_mb=peak_memory_mb(cpu), memory_kind="max RSS of the process",
                corpus_mb=round(n_bytes / 1e6, 3), bytes_per_token=round(n_bytes / n_tokens, 3),
                encode_mb_per_s=round(n_bytes / 1e6 / one_thread_s, 2),
                encode_parallel_mb_per_s=round(n_bytes / 1e6 / parallel_s, 2),
                bpe_train_s=None if bpe_train_s is None else round(bpe_train_s, 2), **machine(cpu))


# ----------------------------------------------------------------------------------------------
# One fresh process per row.

def run_isolated(spec):
    """Run measure_training(spec) in a new Python process; a failure becomes a row with an error."""
    command = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode == 0:
        return json.loads(done.stdout.strip().splitlines()[-1])
    lines = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()
    return dict(kind="train_step", shape=spec["shape_name"], **spec["shape"], precision=spec["precision"],
                attention=spec["attention"], compiled=spec["compiled"], threads=spec["threads"] or None,
                tokens_per_s=None, mfu=None, peak_memory_mb=None, error=lines[-1][:300])


# ----------------------------------------------------------------------------------------------
# The table.

def median_rows(rows):
    """One row per configuration: with --repeats, the repeat with the median tokens/s, and the
    range of all repeats in tokens_per_s_range. Failed repeats are dropped unless all failed."""
    groups = {}
    for r in (r for r in rows if r["kind"] == "train_step"):
        key = (r["shape"], r["precision"], r["attention"], r["compiled"], r.get("threads"))
        groups.setdefault(key, []).append(r)
    out = []
    for group in groups.values():
        good = sorted((r for r in group if not r.get("error")), key=lambda r: r["tokens_per_s"])
        if not good:
            out.append(group[0])
            continue
        speeds = [r["tokens_per_s"] for r in good]
        out.append(dict(good[(len(good) - 1) // 2], repeats=len(good),   # the lower median if even
                        tokens_per_s_range=(min(speeds), max(speeds))))
    return out


def format_table(rows):
    """Markdown, so the README can quote it as printed; repeats are summarised by median_rows."""
    lines = ["| shape (layers/heads/width, block, batch, vocab) | precision | attention | compiled | threads "
             "| tokens/s | MFU | peak memory MB | warm-up s |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in median_rows(rows):
        shape = f"{r['n_layer']}/{r['n_head']}/{r['n_embd']}, {r['block_size']}, {r['batch_size']}, {r['vocab_size']}"
        if r.get("error"):
            lines.append(f"| {shape} | {r['precision']} | {r['attention']} | {r['compiled']} | "
                         f"{r.get('threads', '')} | failed: {r['error']} | | | |")
            continue
        low, high = r["tokens_per_s_range"]
        spread = f" ({low:,.0f}-{high:,.0f})" if r["repeats"] > 1 else ""
        lines.append(f"| {shape} | {r['precision']} | {r['attention']} | {'yes' if r['compiled'] else 'no'} "
                     f"| {r['threads']} | {r['tokens_per_s']:,.0f}{spread} | {100 * r['mfu']:.1f}% "
                     f"| {r['peak_memory_mb']} | {r['warmup_s']:.1f} |")
    for r in (r for r in rows if r["kind"] == "tokenizer"):
        bpe = f", BPE trained in {r['bpe_train_s']:.1f} s" if r["bpe_train_s"] is not None else ""
        lines.append(f"\ntokenizer ({r['shape']}, {r['corpus_mb']:.2f} MB): {r['encode_mb_per_s']:.2f} MB/s "
                     f"on one thread ({r['tokens_per_s']:,} tokens/s), {r['encode_parallel_mb_per_s']:.2f} MB/s "
                     f"in parallel chunks{bpe}; peak memory {r['peak_memory_mb']} MB")
    return "\n".join(lines)


def peak_lines(rows):
    """The peaks MFU was computed against, one line per precision (the last row's measurement)."""
    peaks = {}
    for r in rows:
        if r["kind"] == "train_step" and not r.get("error"):
            peaks[r["precision"]] = (r["measured_peak_flops"], r["datasheet_peak_flops"])
    return "; ".join(f"{p} {m / 1e12:.3f} TFLOP/s measured" + (f" ({d / 1e12:.0f} datasheet)" if d else "")
                     for p, (m, d) in peaks.items())


# ----------------------------------------------------------------------------------------------
# The command line.

@dataclass
class BenchConfig:
    json: Optional[str] = knob(None, "also write the rows to this JSON file")
    shapes: str = knob("4x128,6x384,8x512,preset:cpu", f"comma-separated: {', '.join(SHAPES)}, preset:NAME "
                       "(a train_clm.py preset), or layers/heads/width/block/batch/vocab")
    precisions: str = knob("auto", "comma-separated fp32,bf16,fp16; auto: fp32,bf16 on a CPU, plus fp16 on CUDA")
    attention: str = knob("fast,explicit", "comma-separated fast,explicit,auto (auto: model.SelfAttention "
                                           "picks one of the two)")
    compile: str = knob("both", "torch.compile the model: no, yes, or both (a row for each)")
    steps: int = knob(10, "timed training steps per row, at least", "[1, inf)")
    repeats: int = knob(1, "measure every row this many times, round-robin; the table shows the median "
                           "and the range", "[1, inf)")
    min_seconds: float = knob(3.0, "time each row for at least this long, running more than --steps steps "
                                   "if needed", "[0, inf)")
    warmup: int = knob(3, "untimed steps first (compilation happens here)", "[0, inf)")
    threads: str = knob("0", "comma-separated torch thread counts, a row for each (0: PyTorch's default, "
                             "one per core)")
    reference: Optional[str] = knob(None, "also measure nanoGPT, side by side: the path of model.py in your "
                                          "clone of https://github.com/karpathy/nanoGPT (its rows say "
                                          "attention 'nanoGPT'; trained by its own step, see measure_reference)")
    device: str = knob("auto", "auto, cpu, cuda, cuda:N or mps")
    corpus: str = knob("pydocs", "corpus for the tokenizer measurement")
    tokenizer: str = knob("bpe:4096", "tokenizer to train and time ('none': skip)")
    data_dir: Optional[str] = knob(None, "data folder (None: $PTFT_DATA_DIR)")
    cache_dir: Optional[str] = knob(None, "cache folder (None: $PTFT_CACHE_DIR or ~/.cache/ptft)")


# quick: a smoke test, seconds instead of minutes: shape 2x32, 3 timed steps, no compile, the
# tokenizer on the first 200k characters, and every row in this process (peak memory is then
# cumulative).
BENCH_PRESETS = {"full": {}, "quick": dict(shapes="2x32", steps=3, warmup=1, compile="no", min_seconds=0.0)}


def split_list(text, allowed, what):
    items = [item.strip() for item in text.split(",") if item.strip()]
    bad = [item for item in items if item not in allowed]
    if bad or not items:
        raise UserError(f"--{what} {text!r}: use a comma-separated list of {', '.join(allowed)}")
    return items


def main(argv=None):
    parser = plumbing.build_parser(__doc__.split("\n")[0], BenchConfig, BENCH_PRESETS, default_preset="full")
    parser.add_argument("--quick", action="store_true", help="the same as --preset quick")
    parser.add_argument("--child", help=argparse.SUPPRESS)            # internal: one row, as JSON
    parsed = parser.parse_args(argv)
    if parsed.child:                                   # inside a fresh process: measure one row
        print(json.dumps(measure_training(json.loads(parsed.child))))
        return
    parsed.preset = "quick" if parsed.quick else parsed.preset
    args = plumbing.config_from_args(parsed, BenchConfig, BENCH_PRESETS)
    quick = parsed.preset == "quick"
    if args.json:                                      # refused now, not after minutes of measuring
        if os.path.isdir(args.json):
            raise UserError(f"--json {args.json} is a folder; give a file name to write")
        plumbing.check_writable_folder(os.path.dirname(os.path.abspath(args.json)), "--json")
    if args.compile not in ("no", "yes", "both"):
        raise UserError(f"--compile {args.compile!r}: use no, yes or both")
    device = plumbing.pick_device(args.device)
    shapes = [parse_shape(s.strip()) for s in args.shapes.split(",") if s.strip()]
    precisions = (default_precisions(device) if args.precisions == "auto"
                  else split_list(args.precisions, ("fp32", "bf16", "fp16"), "precisions"))
    attentions = split_list(args.attention, ("fast", "explicit", "auto"), "attention")
    compiles = {"no": [False], "yes": [True], "both": [False, True]}[args.compile]
    threads = [t.strip() for t in args.threads.split(",")]
    if not all(t.isdigit() for t in threads):
        raise UserError(f"--threads {args.threads!r}: use comma-separated counts, e.g. 1,2 (0: the default)")

    command = "python bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"{datetime.date.today().isoformat()}  {command}\n{device_name(device)}, torch {torch.__version__}, "
          f"load average {machine(device)['load_avg']} at the start\n", flush=True)
    rows = []
    if args.tokenizer != "none":
        rows.append(measure_tokenizer(args.corpus, args.tokenizer, 200_000 if quick else None,
                                      args.data_dir, args.cache_dir))
    if args.reference:
        load_reference(args.reference)                 # a bad path fails now, not in every row
    # nanoGPT's rows carry attention "nanoGPT": it has one attention path of its own (PyTorch's SDPA).
    variants = [(a, None) for a in attentions] + ([("nanoGPT", args.reference)] if args.reference else [])
    specs = [dict(shape_name=shape_name, shape=shape, precision=precision, attention=attention,
                  compiled=compiled, steps=args.steps, min_seconds=args.min_seconds, warmup=args.warmup,
                  threads=int(n_threads), device=str(device), reference=reference)
             for shape_name, shape in shapes for precision in precisions
             for attention, reference in variants for compiled in compiles for n_threads in threads]
    # Repeats go round the whole list (not row after row), so a slow minute of a shared machine
    # lands on every configuration alike instead of on one of them.
    for repeat in range(args.repeats):
        for spec in specs:
            row = run_isolated(spec) if not quick else measure_training(dict(spec, isolated=False))
            rows.append(dict(row, repeat=repeat))
            print(f"  {spec['shape_name']} {spec['precision']} {spec['attention']} compiled={spec['compiled']} "
                  f"threads={spec['threads']}: "
                  + (f"{row['tokens_per_s']:,.0f} tokens/s" if row["tokens_per_s"] else row["error"]), flush=True)
    print("\n" + format_table(rows))
    print(f"\nMFU against the peak of each row's precision: {peak_lines(rows)}")
    if args.json:
        plumbing.write_atomic(args.json, json.dumps(rows, indent=1).encode())
        print(f"wrote {len(rows)} rows to {args.json}")


if __name__ == "__main__":
    plumbing.run_cli(main)
