"""Plumbing: the machinery the lessons run on. You may skip this file.

Nothing here teaches the pretrain-then-fine-tune idea; it is what any training script needs and
what would otherwise bury the lesson: the command line and its checks, files and downloads,
device and precision choice, MFU, distributed data parallel (DDP), run folders and checkpoint
files, logs, runs in parallel processes, and figure set-up. It is the floor of the course: every
lesson may call into it by name, and it imports no lesson, so a reader can take each call at its
word and come here only when curious about how.

Sections: 1. errors and the command line; 2. files and downloads; 3. devices, precision and MFU;
4. distributed data parallel; 5. run folders and checkpoint files (the one format, the one
reader); 6. logs, parallel runs and figures.
"""
import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import os
import pickle
import platform
import signal
import sys
import threading
import time
import urllib.request
import warnings
import zipfile

try:
    import fcntl                        # POSIX: the run-folder lock (FolderLock)
except ImportError:                     # Windows
    fcntl = None
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch


# ----------------------------------------------------------------------------------------------
# 1. Errors and the command line. Every script builds its flags from a dataclass of knobs, checks
#    every number against the range its knob declares before anything is created or changed, and
#    turns bad input into one `error:` line with exit status 2.

class UserError(Exception):
    """Bad input a user can fix. One line: what is wrong; how to fix it. CLIs print it and exit 2."""


def knob(default, help, within=None):
    """A config field with its --help text and, for numbers, the interval it must lie in, written
    as in mathematics: "(0, inf)" positive, "[0, 1)" from 0 up to but not including 1."""
    return field(default=default, metadata={"help": help, "within": within})


def parse_interval(text):
    low, high = (part.strip() for part in text[1:-1].split(","))
    return float(low), text[0] == "(", float(high), text[-1] == ")"


def outside(value, within):
    """The reason `value` lies outside the interval `within`, or None if it is inside."""
    if value is None or within is None:
        return None
    low, low_open, high, high_open = parse_interval(within)
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number in {within}"
    if value < low or (low_open and value == low) or value > high or (high_open and value == high):
        return f"must be in {within}"
    return None


def check_knobs(cfg):
    """Every numeric knob of a config dataclass inside its declared interval, or one UserError."""
    for f in dataclasses.fields(cfg):
        reason = outside(getattr(cfg, f.name), f.metadata.get("within"))
        if reason:
            raise UserError(f"--{f.name.replace('_', '-')} {reason}, got {getattr(cfg, f.name)}")


def check_fits(dataset, block_size):
    """Both splits of a data.Dataset hold a window: block_size + 1 tokens (inputs, plus the targets
    shifted by one). Known only once the corpus is encoded, so checked then, before --out-dir."""
    for split, tokens in (("validation", dataset.val), ("training", dataset.train)):
        if len(tokens) < block_size + 1:
            raise UserError(f"corpus too short: {len(tokens)} {split} tokens, need at least "
                            f"block_size+1 = {block_size + 1}; use a larger corpus or a smaller --block-size")


def fail_in_one_line(message):
    """argparse's own errors (a word where a number goes, an unknown flag) as our one line."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def build_parser(description, config_class, presets, epilog=None, default_preset="cpu"):
    """An argparse parser with one flag per field of config_class (--lr, --max-iters, ...), with
    --preset first; a flag given on the command line overrides the preset. Each flag's help shows
    the value a run without flags uses: the default preset's where it sets one, and says so."""
    parser = argparse.ArgumentParser(description=description, epilog=epilog,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.error = fail_in_one_line
    if presets:                                     # None: a script without presets
        parser.add_argument("--preset", default=default_preset, help=f"named settings: {', '.join(presets)}; "
                            "any flag below overrides the preset")
    preset = (presets or {}).get(default_preset) or {}
    for f in dataclasses.fields(config_class):
        flag = "--" + f.name.replace("_", "-")
        default = f"{preset[f.name]}, from --preset {default_preset}" if f.name in preset else f.default
        if f.type is bool or f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=f"{f.metadata['help']} (default: {default})")
        else:
            kind = {int: int, Optional[int]: int, float: float, Optional[float]: float}.get(f.type, str)
            within = f"; range {f.metadata['within']}" if f.metadata.get("within") else ""
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS,
                                help=f"{f.metadata['help']} (default: {default}{within})")
    return parser


def parse_choices(text, allowed, flag):
    """'a, b' -> ['a', 'b'], each one of `allowed`, else one UserError that lists them."""
    items = [item.strip() for item in text.split(",")]
    unknown = [item for item in items if item not in allowed]
    if unknown:
        raise UserError(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return items


def parse_sizes(text, n_available):
    """--sizes 32,128,all -> [32, 128, n_available], capped at n_available, sorted."""
    sizes = set()
    for item in text.split(","):
        item = item.strip()
        if item != "all" and not (item.isdigit() and int(item) > 0):
            raise UserError(f"--sizes: {item!r} is not a positive integer or 'all'; e.g. --sizes 32,128,all")
        sizes.add(n_available if item == "all" else min(int(item), n_available))
    return sorted(sizes)


def add_flag(parser, flag, default, help, within=None, type=None, **kw):
    """One more flag, outside the config dataclass, with the same interval check as a knob."""
    kind = type or (float if isinstance(default, float) else int if isinstance(default, int) and
                    not isinstance(default, bool) else str)

    def checked(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        reason = outside(value, within)
        if reason:
            raise argparse.ArgumentTypeError(f"{value} {reason}")
        return value
    suffix = f" (default: %(default)s{f'; range {within}' if within else ''})"   # the formatter adds no second one
    return parser.add_argument(flag, default=default, type=checked if kind is not str or within else None,
                               help=help + suffix, **kw)


def config_from_args(args, config_class, presets=None, kind=None):
    """The config of a command line: the preset's values, then the flags given. kind ("clm",
    "mlm"): without --out-dir the run gets a folder of its own for its preset and corpus."""
    given = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(config_class)}}
    if presets and args.preset not in presets:
        raise UserError(f"unknown preset {args.preset!r}; choose one of {', '.join(presets)}")
    preset = presets[args.preset] if presets else {}
    if kind and "out_dir" not in given:
        corpus = given.get("corpus", preset.get("corpus", "pydocs"))
        given["out_dir"] = default_out_dir(kind, args.preset, corpus, preset.get("corpus", "pydocs"))
    cfg = config_class(**{**preset, **given})
    check_knobs(cfg)
    return cfg


def default_out_dir(kind, preset, corpus, preset_corpus):
    """Where a run goes when --out-dir is not given: a folder per kind of model, preset and corpus
    (out/clm for the default run, out/shakespeare for --preset shakespeare, out/mlm-tiny, out/clm-
    mytext for --corpus mytext.txt), so that different commands never ask for the same folder."""
    name = kind if preset == "cpu" else preset if kind == "clm" else f"{kind}-{preset}"
    if corpus != preset_corpus:
        name += "-" + (Path(corpus).stem if corpus not in ("pydocs", "shakespeare") else corpus)
    return os.path.join("out", name)


def run_cli(main_function, interrupted="interrupted; the last checkpoint is intact (continue with --resume)"):
    """Bad input ends in one line on stderr and exit status 2, never in a traceback. So do settings
    that ask for more memory than the machine has (a GPU's OutOfMemoryError; on a CPU, PyTorch's
    allocator raises a plain RuntimeError that says it cannot allocate, and NumPy a MemoryError)."""
    try:
        main_function()
    except UserError as error:
        discard_new_folders()
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except (RuntimeError, MemoryError) as error:
        # torch.cuda.OutOfMemoryError exists in every PyTorch that requirements.txt admits; newer ones
        # also call it torch.OutOfMemoryError and raise it on every device. Older MPS builds say it in words.
        text = str(error)
        if not (isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)) or "can't allocate memory" in text
                or "out of memory" in text.lower()):
            raise
        discard_new_folders()
        print(f"error: out of memory ({(text.splitlines() or [type(error).__name__])[0][:200]}); ask for "
              f"less: a smaller --batch-size, shorter sequences or a smaller model", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        sys.exit(130)


# ----------------------------------------------------------------------------------------------
# 2. Files and downloads. Data files are looked for in the data dir (--data-dir, else
#    $PTFT_DATA_DIR), then in the cache (--cache-dir, else $PTFT_CACHE_DIR, else ~/.cache/ptft),
#    and only then downloaded into the cache, checked against the sha256 written below.

SST2 = "https://raw.githubusercontent.com/clairett/pytorch-sentiment-classification/master/data/SST2/"
# GPT-2 small's weights, pinned to one revision of the Hugging Face hub (the sha256 values are the
# files' Git LFS ids there). Its tokenizer is gpt2/gpt2.tiktoken below.
GPT2_HUB = "https://huggingface.co/openai-community/gpt2/resolve/607a30d783dfa663caf39e06633721c8d4cfcd7e/"
SOURCES = {   # name in a data dir -> (canonical url, sha256 of the file, member if the url is a zip)
    "tinyshakespeare.txt": ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                            "tinyshakespeare/input.txt",
                            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", None),
    "gpt2/gpt2.tiktoken": ("https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken",
                           "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930", None),
    "gpt2/config.json": (GPT2_HUB + "config.json",
                         "0daed7749b4f02b8f76240d5444551d7b08712dab4d0adb8239c56ba823bb7b4", None),
    "gpt2/model.safetensors": (GPT2_HUB + "model.safetensors",   # 548 MB
                               "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707", None),
    "sst2/train.tsv": (SST2 + "train.tsv", "ec192f833a64da08f475488a77b0d0b47db47acd0f458bd18433fc793b569920", None),
    "sst2/dev.tsv": (SST2 + "dev.tsv", "eddea6b39e601dd4e7a672b53cc40fdf6019fa80522f351206c24340ca5d9359", None),
    "sst2/test.tsv": (SST2 + "test.tsv", "831169c7e2e429d6026e1bdbb542f33b636e3e596caad9602ebc953c205928b7", None),
    "sms_spam/SMSSpamCollection": ("https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
                                   "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
                                   "SMSSpamCollection"),
}


def resolve_cache_dir(cache_dir=None):
    return Path(cache_dir or os.environ.get("PTFT_CACHE_DIR") or "~/.cache/ptft").expanduser()


def fingerprint(data):
    """First 12 hex digits of sha256: short enough to read, long enough never to collide here."""
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()[:12]


def write_atomic(path, data):
    """Write bytes so that a reader sees the old file or the whole new one, never half of one."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a file name to write")
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException as error:                    # a full disk, a read-only folder, Ctrl-C
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(error, OSError):
            raise UserError(f"cannot write {path}: {error.strerror}; nothing there was replaced (free "
                            f"some space, or choose a writable folder)") from None
        raise


def read_text(path):
    """A UTF-8 text file; a leading byte-order mark (Windows editors write one) is dropped, as
    Python's utf-8-sig codec does, so it never becomes the corpus's first character."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:  # unreadable (permissions), vanished, or a folder where a file was expected
        raise UserError(f"cannot read {path}: {e.strerror}; check the path and its permissions") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 (bad byte at offset {e.start}); convert it, "
                        f"e.g. iconv -f latin1 -t utf-8") from None


def read_json(path):
    """A JSON file, or one UserError that names it (a cut or hand-edited file is not a traceback)."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error.msg}, line {error.lineno}); restore or "
                        f"delete it") from None


def find_data_file(relative_names, data_dir=None, cache_dir=None):
    """The first existing `root/name` over roots (data dir, cache) and names, else None."""
    data_dir = data_dir or os.environ.get("PTFT_DATA_DIR")
    if data_dir and not Path(data_dir).is_dir():
        raise UserError(f"data dir {data_dir} is not a directory; check --data-dir / PTFT_DATA_DIR")
    roots = [Path(data_dir)] if data_dir else []
    roots.append(resolve_cache_dir(cache_dir) / "data")
    for root in roots:
        for name in relative_names:
            if (root / name).is_file():
                return root / name
    return None


def download(url, sha256, dest, member=None):
    """Fetch url (extracting `member` if it is a zip), check its sha256, write it atomically."""
    with urllib.request.urlopen(url, timeout=60) as response:
        payload = response.read()
    if member is not None:
        payload = zipfile.ZipFile(io.BytesIO(payload)).read(member)
    got = hashlib.sha256(payload).hexdigest()
    if got != sha256:
        raise UserError(f"{url}: sha256 {got} is not the expected {sha256}; the download is corrupt "
                        f"or the file changed upstream; get the original and pass --data-dir DIR")
    write_atomic(dest, payload)


def obtain_data_file(name, data_dir=None, cache_dir=None, also=(), sources=SOURCES):
    """A file of `sources`: found (as `name` or one of `also`), else downloaded into the cache,
    else one UserError that says what to do."""
    found = find_data_file((name, *also), data_dir, cache_dir)
    cache = resolve_cache_dir(cache_dir) / "data"
    if found is not None and found.parent.is_relative_to(cache) and name in sources:
        # A copy this code downloaded: check it is still the file it checked then (a full disk or
        # an interrupted sync can cut it). A data dir's files are the user's, and are used as given.
        got = hashlib.sha256(found.read_bytes()).hexdigest()
        if got != sources[name][1]:
            print(f"note: the cached {found} is damaged (sha256 {got[:12]}..., expected "
                  f"{sources[name][1][:12]}...); downloading it again", file=sys.stderr)
            found = None
    if found is not None:
        return found
    dest = resolve_cache_dir(cache_dir) / "data" / name
    try:
        download(*sources[name][:2], dest, member=sources[name][2])
    except UserError:
        raise
    except Exception as e:  # offline, timeout, HTTP error, bad zip: all mean "get it another way"
        searched = data_dir or os.environ.get("PTFT_DATA_DIR") or "(none given)"
        raise UserError(f"{name} not found in data dir {searched} and download failed "
                        f"({type(e).__name__}: {e}); put the file in a data directory and pass "
                        f"--data-dir DIR or set PTFT_DATA_DIR") from None
    return dest


# ----------------------------------------------------------------------------------------------
# 3. Devices, precision, MFU.

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}   # --precision's dtypes


def pick_device(name, dist=None):
    dist = dist or SINGLE_PROCESS
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
    if dist["world_size"] > 1:                          # under torchrun: one device per process
        if name.startswith("cuda:"):
            raise UserError(f"--device {name} under torchrun would put every process on GPU {name[5:]}; "
                            f"pass --device cuda (each process takes the GPU of its LOCAL_RANK)")
        if name == "mps":
            raise UserError("torchrun on Apple MPS is not supported (gloo cannot carry MPS tensors); "
                            "pass --device cpu")
        if name == "cuda" and dist["local_rank"] >= torch.cuda.device_count():
            raise UserError(f"torchrun started more processes on this machine than its "
                            f"{torch.cuda.device_count()} GPU(s); use --nproc_per_node at most that")
    if name == "cuda" and dist["world_size"] > 1:
        name = f"cuda:{dist['local_rank']}"
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True       # TF32 for any fp32 matmul left: free speed
        torch.backends.cudnn.allow_tf32 = True
    if device.type == "cpu":
        keep_freed_memory()
        # Subnormal floats (below 1.2e-38) take a slow path on x86 CPUs, and ALiBi's penalty on far
        # keys sends exp() of their scores there in attention's backward (RESULTS.md, "Subnormal
        # floats"). Flushed to zero, no logged loss changed. OpenMP's threads copy the setting when they
        # start, so it comes before the first parallel operation: scripts pick the device first.
        torch.set_flush_denormal(True)
    return device


def keep_freed_memory():
    """Ask glibc to keep the memory a training step frees for the next step (as MALLOC_MMAP_MAX_=0
    MALLOC_TRIM_THRESHOLD_=2147483647 would), instead of returning it to the system at once and
    taking each step's activations back as fresh pages, one page fault at a time (bench.py shows it
    in a CPU step's time). Every step allocates the same sizes, so this costs nothing beyond the
    peak. Linux with glibc only; returns whether the setting took effect."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:                                         # another C library (musl): leave it
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4                   # the option numbers in glibc's malloc.h
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def check_precision(device, precision):
    """A precision by name, refused in one line if it is unknown, or if this device's autocast cannot
    run it: PyTorch only warns and runs in fp32 instead (on MPS before it learned bf16 and fp16, for
    one), while the logs would still say bf16. Returns the name, for optim.precision_context."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    if precision != "fp32":                     # fp32 runs without autocast
        check_autocast(device, PRECISIONS[precision])
    return precision


def check_autocast(device, dtype):
    """Refuse, in one line, an autocast dtype that this device runs in fp32 instead (check_precision)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.autocast(device.type, dtype=dtype):
            pass
    unsupported = [w for w in caught if "not supported" in str(w.message) or "disabl" in str(w.message).lower()]
    if unsupported:
        raise UserError(f"{str(dtype).removeprefix('torch.')} autocast does not run on {device.type} with "
                        f"PyTorch {torch.__version__}; use --precision fp32 (or a newer PyTorch)")


def cpu_name(cpuinfo="/proc/cpuinfo"):
    """The CPU's model name (Linux's /proc/cpuinfo; elsewhere, or where it names none, as on many
    ARM boards, what the platform module knows)."""
    with contextlib.suppress(OSError):
        with open(cpuinfo) as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
        if name:
            return name
    return platform.processor() or platform.machine()


def machine_key(device):
    """What a measured speed depends on: the chip, its vector units (one CPU model name covers
    AVX2-only and AVX-512 parts), the PyTorch build."""
    chip = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{cpu_name()}-{torch.backends.cpu.get_cpu_capability()}")
    return f"{device.type}|{chip}|torch {torch.__version__}|threads {torch.get_num_threads()}"


MEASURED_THIS_PROCESS = {}   # the same answers, kept in memory: scaling.py starts ~30 runs


def cached_measurement(kind, key, measure, valid, cache_dir=None):
    """measure() once per machine and key, then read from <cache>/measured.json. Speeds are facts
    about a machine, not about a run: re-measuring them at every start-up cost seconds (and on a
    CPU without bf16 units, over ten). A stored value that valid() refuses (an edited file) is
    measured again, as is everything when PTFT_REMEASURE=1."""
    full_key = f"{kind}|{key}"
    if full_key in MEASURED_THIS_PROCESS:
        return MEASURED_THIS_PROCESS[full_key]
    path = resolve_cache_dir(cache_dir) / "measured.json"
    table = {}
    with contextlib.suppress(OSError):
        try:
            table = json.loads(path.read_text())
        except ValueError:                                      # cut or edited: measure again
            table = None
        if not isinstance(table, dict):
            print(f"note: {path} is damaged (not a JSON object); measuring again", file=sys.stderr)
            table = {}
    if not valid(table.get(full_key)) or os.environ.get("PTFT_REMEASURE"):
        table[full_key] = measure()
        with contextlib.suppress(OSError, UserError):         # a read-only cache only costs speed
            write_atomic(path, json.dumps(table, indent=1, sort_keys=True).encode())
    MEASURED_THIS_PROCESS[full_key] = table[full_key]
    return table[full_key]


def bf16_is_accelerated(device):
    """Does this CPU have bf16 arithmetic units (AVX-512 BF16, AMX)? Without them PyTorch emulates
    bf16 with conversions and fp32 math, always slower than plain fp32: not worth timing."""
    if device.type != "cpu":
        return True
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return platform.machine() in ("arm64", "aarch64")     # Apple silicon and Arm servers: time it
    return any(flag in flags for flag in (" avx512_bf16", " amx_bf16"))


def choose_precision(model, loss_fn, batch, device, cache_dir=None):
    """On a GPU bf16 (fp16 without bf16 tensor cores). On a CPU, measured: the faster of fp32 and
    bf16 for this model (tiny models are bound by per-op overhead, where autocast's casts cost more
    than they save), cached per machine and model shape."""
    if device.type == "cuda":
        # bf16 tensor cores came with compute capability 8.0 (Ampere); torch.cuda.is_bf16_supported()
        # also says yes on a V100 or a T4, which emulate bf16 several times slower than their fp16.
        return "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp16"
    if device.type == "mps":
        return "fp32"   # bf16 autocast on MPS varies by macOS version; fp32 is always correct
    if not bf16_is_accelerated(device):
        return "fp32"
    shape = (type(model).__name__, sum(p.numel() for p in model.parameters()),
             {k: tuple(v.shape) for k, v in batch.items() if torch.is_tensor(v)})
    return cached_measurement("precision", f"{machine_key(device)}|{shape}",
                              lambda: time_precisions(model, loss_fn, batch, device),
                              lambda value: value in ("fp32", "bf16"), cache_dir)


def time_precisions(model, loss_fn, batch, device):
    """The faster of fp32 and bf16 autocast for a forward and backward pass of loss_fn(model, batch).
    The model's weights and the global random state (dropout draws from it) are put back
    afterwards: measuring must not change what the run computes."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    timings = {}
    with torch.random.fork_rng(devices=[]):
        for precision in ("fp32", "bf16"):
            for attempt in range(3):               # the first is a warm-up, the best of the rest counts
                start = time.perf_counter()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss = loss_fn(model, batch)
                loss.backward()
                if attempt:
                    timings[precision] = min(timings.get(precision, 1e9), time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)
    return min(timings, key=timings.get)


# Dense peaks from the vendors' datasheets (FLOP/s, no sparsity): (16-bit tensor cores, bf16 or
# for V100 and T4 fp16; fp32 matrix products, on TF32 tensor cores where the card has them, on
# plain fp32 units on V100 and T4, which have none).
GPU_PEAK_FLOPS = {"H100 PCIe": (756e12, 378e12), "H100 NVL": (835e12, 418e12), "H100": (989e12, 495e12),
                  "H200": (989e12, 495e12), "A100": (312e12, 156e12), "A10G": (125e12, 62.5e12),
                  "L40S": (362e12, 183e12), "L4": (121e12, 60e12), "RTX 4090": (165e12, 82.6e12),
                  "RTX 3090": (71e12, 35.6e12), "V100": (125e12, 15.7e12), "T4": (65e12, 8.1e12)}


def gpu_peak_flops(name, precision):
    """The datasheet figure for a GPU by its name (torch.cuda.get_device_name), or None. The most
    specific entry wins: "NVIDIA L40S" contains "L4", and "NVIDIA H100 PCIe" contains "H100"."""
    matches = [key for key in GPU_PEAK_FLOPS if key in name]
    if not matches:
        return None
    half, single = GPU_PEAK_FLOPS[max(matches, key=len)]
    return single if precision == "fp32" else half


def datasheet_peak_flops(device, precision):
    """The vendor's figure for a known GPU; None for other devices and unknown cards."""
    return gpu_peak_flops(torch.cuda.get_device_name(device), precision) if device.type == "cuda" else None


def peak_flops(device, precision, cache_dir=None):
    """Peak FLOP/s to measure MFU against (model FLOPs utilisation, Chowdhery et al. 2022): a known
    GPU's datasheet figure, as nanoGPT and nanochat report MFU; elsewhere measured, as an upper
    bound (one square product had under-read an AVX2 CPU's peak, and a step showed MFU over 100%).
    MFU is never capped; bench.py prints measured and datasheet peaks side by side."""
    return datasheet_peak_flops(device, precision) or measured_peak_flops(device, precision, cache_dir)


def measured_peak_flops(device, precision, cache_dir=None):
    return cached_measurement("peak", f"{machine_key(device)}|{precision}",
                              lambda: measure_peak_flops(device, precision),
                              lambda value: isinstance(value, float) and value > 0, cache_dir)


def measure_peak_flops(device, precision, shapes=None, repeats=10, warmup_s=0.3):
    """The best FLOP/s over square and tall matrix products (m, n) @ (n, n) in this precision,
    each timed `repeats` times. Its own random generator: measuring must not move the global one
    that dropout draws from."""
    shapes = shapes or (((4096, 4096), (8192, 8192), (16384, 4096)) if device.type in ("cuda", "mps")
                        else ((256, 256), (512, 512), (1024, 1024), (2048, 512)))   # a GPU needs big ones
    dtype = PRECISIONS[precision]
    if device.type == "cpu" and dtype == torch.float16:
        dtype = torch.float32       # CPUs without fp16 units emulate it (~1 GFLOP/s): not a peak
    generator = torch.Generator(device=device).manual_seed(0)
    best, warm_until = 0.0, time.perf_counter() + warmup_s
    for m, n in shapes:
        a = torch.randn(m, n, device=device, dtype=dtype, generator=generator)
        b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
        while time.perf_counter() < warm_until:     # a cold first product ran up to 30% slow
            a @ b
            synchronize(device)
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            a @ b
            synchronize(device)
            best = max(best, 2 * m * n * n / (time.perf_counter() - start))
    return best


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# ----------------------------------------------------------------------------------------------
# 4. Distributed data parallel: one process per GPU (or per CPU group, with gloo), launched by
#    torchrun, which sets RANK, LOCAL_RANK and WORLD_SIZE. Each process holds a full model;
#    gradients are averaged across processes before each optimiser step.

SINGLE_PROCESS = dict(rank=0, local_rank=0, world_size=1)


def setup_distributed(device_name="auto"):
    if "RANK" not in os.environ:
        return dict(SINGLE_PROCESS)
    import torch.distributed as torch_dist
    # NCCL talks between GPUs only; gloo between CPU processes (also `--device cpu` on a GPU machine).
    on_gpu = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if not torch_dist.is_initialized():            # scaling.py calls train() many times per process
        torch_dist.init_process_group(backend="nccl" if on_gpu else "gloo")
    return dict(rank=torch_dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                world_size=torch_dist.get_world_size())


def is_main_process():
    """Rank 0 under torchrun, or a single process: the one that prints reports and demos."""
    return int(os.environ.get("RANK", 0)) == 0


def sync_gradients(model, last):
    """DDP averages the gradients across processes during backward. With gradient accumulation only
    the last micro-batch of a step needs that: no_sync on the others, one communication per step."""
    if hasattr(model, "no_sync") and not last:          # a DistributedDataParallel model
        return model.no_sync()
    return contextlib.nullcontext()


def teardown_distributed(dist):
    """Wait for every rank, then close the group: a rank that tears gloo down while another still
    talks to it can abort ("terminate called without an active exception")."""
    if dist["world_size"] > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def wrap_for_training(model, compile, device, dist):
    """torch.compile and DDP wrap the model for the training steps; the plain model is kept for
    evaluation and checkpoints (so their weights carry no `_orig_mod.` or `module.` prefix)."""
    if compile and device.type == "mps":
        print("note: --compile is skipped on Apple MPS, where torch.compile is not supported yet",
              file=sys.stderr)
    elif compile:
        model = torch.compile(model)
    if dist["world_size"] > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def agree_max(value, device, dist):
    """The largest value over all ranks: ranks must agree on when a clock says stop."""
    if dist["world_size"] == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return tensor.item()


def agree_mean(value, device, dist):
    """The mean over all ranks (the whole batch's loss; all ranks then agree when it is NaN)."""
    if dist["world_size"] == 1:
        return value
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
# 5. Run folders and checkpoints: data, never code.

@dataclass
class Run:
    """A pretraining run's checked inputs (open_run), then its prepared folder (start_run)."""
    cfg: object
    dist: dict
    device: torch.device
    resume_from: Optional[dict]        # the checkpoint of --resume
    verbose: bool                      # rank 0 and not --quiet: print progress
    out_dir: Optional[str] = None      # set by start_run; None on ranks other than 0 or when nothing is saved
    lock: Optional[object] = None      # rank 0's FolderLock on --out-dir, held until the process ends
    keep: list = field(default_factory=list)   # fractions of the budget still to keep a checkpoint at
    keep_now: Optional[float] = None   # the fraction the next save_run keeps a copy for

    def log(self, *args, **kwargs):
        if self.verbose:
            print(*args, **kwargs)


def open_run(cfg):
    """Everything a run's flags alone decide, checked on every rank before anything in --out-dir is
    created, changed or deleted: the numbers, the budget, the device (and DDP), --out-dir, and the
    checkpoint --resume continues. restore finishes the checks once the model and its tokenizer
    are known; only then is --out-dir touched (start_run). A run refused for bad input leaves an
    existing run exactly as it was, even with --overwrite."""
    check_knobs(cfg)
    if not (cfg.max_iters or cfg.max_tokens or cfg.max_seconds):
        raise UserError("no budget: give --max-iters, --max-tokens or --max-seconds")
    if cfg.min_lr > cfg.lr:
        raise UserError(f"--min-lr {cfg.min_lr} is above --lr {cfg.lr}: the schedule decays from the "
                        f"peak to the floor; give a --min-lr at most --lr")
    dist = setup_distributed(cfg.device)
    device = pick_device(cfg.device, dist)
    if cfg.precision != "auto":                 # known, and run by this device's autocast
        check_precision(device, cfg.precision)
    check_out_dir(cfg)
    resume_from = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt")) if cfg.resume else None
    if resume_from is not None:
        check_resumable(resume_from, os.path.join(cfg.out_dir, "ckpt.pt"), dist["world_size"])
        check_precision(device, resume_from["precision"])    # it resumes in the precision it saved
        saved_muon = resume_from["train_config"].get("muon_lr", 0.0)
        if (saved_muon > 0) != (cfg.muon_lr > 0):      # the optimiser's state would not fit
            raise UserError(f"--resume: the run was saved with --muon-lr {saved_muon}, this one has "
                            f"--muon-lr {cfg.muon_lr}; resume with the run's own optimiser settings")
        saved_corpus = resume_from["train_config"].get("corpus", cfg.corpus)
        if saved_corpus != cfg.corpus:                  # its data position points into other text
            raise UserError(f"--resume: the run was saved training on --corpus {saved_corpus}, this one "
                            f"asks for {cfg.corpus}; resume with the run's own --corpus (to pretrain "
                            f"further on other text, start a new run with --init-from)")
    # Rank 0 writes the folder: it takes the lock now if the folder exists (a second run into the
    # same folder stops here, before any work), else when start_run creates it.
    lock = lock_folder(cfg.out_dir, create=False) if dist["rank"] == 0 else None
    keep = parse_fractions(getattr(cfg, "keep", None), "--keep")
    if keep and not cfg.out_dir:
        raise UserError("--keep keeps checkpoints in --out-dir, and --out-dir '' saves nothing; give a folder")
    kept = {r["kept"] for r in resume_from["history"] if "kept" in r} if resume_from else set()
    return Run(cfg, dist, device, resume_from, verbose=dist["rank"] == 0 and not cfg.quiet, lock=lock,
               keep=[f for f in keep if f not in kept])


def restore(run, description, model, optimizer, batch_generator, start_from=None):
    """The last checks, now that the model and its tokenizer are known (`description`: what a
    checkpoint records about them, see save_run): a --resume checkpoint must hold this very model.
    Then its weights, optimiser, counters, history and data position; or --init-from's weights
    alone (start_from). Nothing in --out-dir is touched yet. Returns (state, history, precision)."""
    state, history, precision = dict(step=0, tokens=0, seconds=0.0, flops=0.0), [], run.cfg.precision
    if run.resume_from is not None:
        saved = run.resume_from
        check_kind(saved, description["kind"], "--resume")
        check_tokenizer(saved, description["tokenizer"])
        check_same_model(saved, description["model_config"], "--resume")
        try:     # same shapes (checked above), but the tensors themselves may have been edited
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            lines = str(error).strip().splitlines() or [""]
            raise UserError(f"--resume: {run.cfg.out_dir}/ckpt.pt does not fit this model and optimiser "
                            f"({type(error).__name__}: {lines[-1].strip()[:160]}); {RESUME_ADVICE}") from None
        state, history, precision = dict(saved["state"]), list(saved["history"]), saved["precision"]
        batch_generator.set_state(saved["rng"]["batches"][run.dist["rank"]])
        run.log(f"resumed from {run.cfg.out_dir}/ckpt.pt at step {state['step']}")
    elif start_from is not None:
        model.load_state_dict(start_from["model"])
        run.log(f"weights, tokenizer and shape ({model.config.n_layer} layers, {model.config.n_head} heads, "
                f"width {model.config.n_embd}) from {run.cfg.init_from}")
    return state, history, precision


def start_run(run):
    """On rank 0, once every check has passed: --out-dir created (or taken), locked, and log.jsonl
    started from the history the run carries."""
    if run.dist["rank"] == 0:
        run.lock = run.lock or lock_folder(run.cfg.out_dir)
        run.out_dir = prepare_out_dir(run.cfg, run.resume_from["history"] if run.resume_from else [])


def restore_random_state(run, scaler):
    """The global RNGs (dropout) are restored last: set-up draws random numbers too, and a resumed
    run must continue the stream where the killed one was."""
    saved = run.resume_from
    if saved is None:
        return
    torch.set_rng_state(saved["rng"]["torch"])
    if run.device.type == "cuda" and saved["rng"]["cuda"] is not None:
        torch.cuda.set_rng_state(saved["rng"]["cuda"], run.device)
    if saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])


def parse_fractions(text, flag):
    """'0.01,0.1' -> [0.01, 0.1], each in (0, 1], sorted; None or '' -> []."""
    try:
        fractions = sorted({float(item) for item in text.split(",") if item.strip()}) if text else []
    except ValueError:
        raise UserError(f"{flag} {text!r}: give fractions of the budget, e.g. {flag} 0.01,0.03,0.1,0.3") from None
    if any(not 0 < f <= 1 for f in fractions):
        raise UserError(f"{flag} {text!r}: every fraction must be in (0, 1]")
    return fractions


def keep_due(run, progress):
    """True when the budget spent has reached the next fraction in --keep: the loop then evaluates
    and saves at this step, and save_run keeps a copy of the checkpoint for that fraction."""
    due = [f for f in run.keep if progress >= f - 1e-9]
    if not due:
        return False
    run.keep = [f for f in run.keep if f not in due]
    run.keep_now = max(due)
    return True


def save_run(run, description, model, optimizer, scaler, batch_generator, state, history, precision,
             metrics):
    """The one checkpoint format: `description` (model_config, kind, tokenizer and
    tokenizer_state, from the lesson that trains), the weights, and everything --resume needs.
    Every rank takes part (the data positions are gathered); rank 0 writes. Weights come from the
    plain model, so compiled runs load into uncompiled models."""
    data_positions = gather_generator_states(batch_generator, run.dist)
    if run.out_dir is None:
        return
    if run.keep_now is not None:
        history[-1]["kept"] = run.keep_now           # so a resumed run knows this one is kept
    save_checkpoint(os.path.join(run.out_dir, "ckpt.pt"), dict(
        description, model=model.state_dict(), optimizer=optimizer.state_dict(), state=state,
        history=history, precision=precision, train_config=dataclasses.asdict(run.cfg), metrics=metrics,
        scaler=scaler.state_dict(),                              # fp16's loss scale ({} otherwise)
        rng=dict(torch=torch.get_rng_state(), batches=data_positions,
                 cuda=torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None)))
    if run.keep_now is not None:     # --keep: a copy that stays, named by its step; like any
        kept = os.path.join(run.out_dir, f"ckpt-step{state['step']}.pt")   # checkpoint it records its
        with open(os.path.join(run.out_dir, "ckpt.pt"), "rb") as f:        # step, tokens and FLOPs
            write_atomic(kept, f.read())
        run.log(f"kept {kept} ({100 * run.keep_now:g}% of the budget, {state['flops']:.3g} FLOPs)")
        run.keep_now = None


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
    check_writable_folder(cfg.out_dir)


def check_writable_folder(folder, flag="--out-dir"):
    existing = os.path.abspath(folder)            # the folder, or the ancestor it would go in
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not (os.path.isdir(existing) and os.access(existing, os.W_OK | os.X_OK)):
        raise UserError(f"cannot write to {flag} {folder}: {existing} is not a writable "
                        f"folder; choose a writable folder")


class FolderLock:
    """An exclusive lock on a run folder while this process writes there: flock on the folder itself,
    so it dies with the process (SIGKILL too) and leaves no lock file. Another process is refused at
    once and told which process holds it (/proc/locks, Linux). Windows: nothing is locked."""

    def __init__(self, folder, made_here=False):
        self.folder, self.fd = folder, None
        self.made_here = made_here          # lock_folder created the folder for this run
        if fcntl is None:
            return
        self.fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self.holder()
            os.close(self.fd)
            raise UserError(f"{folder} is in use by {f'process {holder}' if holder else 'another process'}, "
                            f"a run writing there; wait for it to finish, or choose another folder") from None

    def holder(self):
        """The process id holding a lock on this folder, from /proc/locks (Linux), or None. A line
        reads `1: FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode> 0 EOF`."""
        inode = str(os.fstat(self.fd).st_ino)
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in open("/proc/locks"):
                fields = line.split()
                if "FLOCK" in fields:
                    at = fields.index("FLOCK")
                    if fields[at + 4].rsplit(":", 1)[-1] == inode:
                        return int(fields[at + 3])
        return None

    def release(self):
        if self.fd is not None:
            os.close(self.fd)                 # closing the descriptor releases the lock
            self.fd = None
        HELD_FOLDERS.pop(os.path.realpath(self.folder), None)


HELD_FOLDERS = {}   # folder -> this process's FolderLock: a process never conflicts with itself


def lock_folder(folder, create=True):
    """This process's lock on `folder` (FolderLock), taken once: a second run in the same process
    (a test, a resumed run) reuses it. create=False: None if the folder does not exist yet."""
    if not folder or not (create or os.path.isdir(folder)):
        return None
    key = os.path.realpath(folder)
    if key not in HELD_FOLDERS:
        made_here = not os.path.isdir(folder)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create {folder}: {error.strerror}; choose a writable folder") from None
        HELD_FOLDERS[key] = FolderLock(folder, made_here)
    return HELD_FOLDERS[key]


def discard_new_folders():
    """After bad input: every folder this process locked is released, and each one it made itself
    and left empty is removed again, so that a refused run leaves no trace, even where a setting can
    be refused only once the model is built (fine-tuning's --last-k, prompting's --shots) or a batch
    drawn (out of memory before the first log record)."""
    for lock in list(HELD_FOLDERS.values()):
        lock.release()
        if lock.made_here:
            with contextlib.suppress(OSError):
                os.rmdir(lock.folder)           # an empty folder only: rmdir refuses any other


def prepare_out_dir(cfg, history):
    """Start --out-dir's log.jsonl from the history the run carries: the checkpoint's for a resumed
    run (so records that a killed run wrote after its last checkpoint are dropped; the resumed run
    writes them again), empty where --overwrite replaces a run. A new folder gets log.jsonl with
    its first record, so that a run refused before then (out of memory at the first batch) leaves
    the folder empty, for discard_new_folders to remove."""
    if not cfg.out_dir:
        return None
    path = os.path.join(cfg.out_dir, "log.jsonl")
    if history or os.path.exists(path):
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in history).encode())
    return cfg.out_dir


def save_checkpoint(path, payload):
    """Write a temporary file, flush it to disk, rename it over the old checkpoint (atomic on POSIX
    and Windows): a crash at any instant leaves the old checkpoint or the new one, never half."""
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
        # When a write fails, torch.save's own RuntimeError hides the OSError (or Ctrl-C) that says why.
        cause = error
        while cause is not None and not isinstance(cause, (OSError, KeyboardInterrupt)):
            cause = cause.__context__
        if isinstance(cause, OSError):
            raise UserError(f"cannot write checkpoint {path}: {cause.strerror}; the previous "
                            f"checkpoint is intact") from None
        if isinstance(cause, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise
    with contextlib.suppress(OSError):                     # make the rename itself durable
        directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        os.fsync(directory)
        os.close(directory)


NUMBER = (int, float)      # a JSON number, as invalid_fields' `fields` name it


def invalid_fields(record, fields):
    """The names among `fields` ({name: a type, a tuple of types, or a test}; "test.accuracy" names
    a field inside a field) whose value in the dict `record` is missing, of another type, fails its
    test, or is a bool or a NaN or infinity: a file of ours edited by hand, or another version's."""
    bad = []
    for name, kind in fields.items():
        value = record
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        fits = isinstance(value, kind) if isinstance(kind, (type, tuple)) else kind(value)
        if not fits or isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)):
            bad.append(name)
    return bad


CHECKPOINT_FIELDS = {"model": dict, "model_config": dict, "kind": lambda kind: kind in ("causal", "bidirectional"),
                     "tokenizer": dict, "tokenizer_state": dict}     # what every reader of a checkpoint needs


def load_checkpoint(path, kind=None):
    """The one reader of checkpoint files (train_clm.load_pretrained turns GPT-2's weights into the
    same format). weights_only=True: only tensors and plain data are unpickled, so a crafted file
    cannot run code. map_location='cpu': a GPU's checkpoint loads anywhere, never onto a full GPU.
    torch.load skips the zip archive's CRC32s, so a flipped bit would load silently: testzip()
    checks every member first. kind: "causal" or "bidirectional" when only one will do."""
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
    bad = invalid_fields(checkpoint, CHECKPOINT_FIELDS)
    if bad:
        raise UserError(f"{path} is not a pretraining checkpoint (no valid {', '.join(bad)}); "
                        f"use a ckpt.pt written by train_clm.py or train_mlm.py")
    check_kind(checkpoint, kind, path)
    return checkpoint


def is_count(value, kind=NUMBER):
    return isinstance(value, kind) and value >= 0


RESUME_FIELDS = {      # what only --resume reads from a ckpt.pt (save_run writes it); whether the
    # optimiser's state fits this run's optimiser (AdamW alone, or with Muon) shows when restore loads it
    "optimizer": dict, "state.step": lambda n: is_count(n, int), "state.tokens": lambda n: is_count(n, int),
    "state.seconds": is_count, "state.flops": is_count, "precision": lambda name: name in PRECISIONS,
    "history": lambda records: isinstance(records, list) and all(isinstance(r, dict) for r in records),
    "rng.batches": list, "scaler": dict, "train_config": dict}
RESUME_ADVICE = "resume only a ckpt.pt that this version wrote, or start the run again with --overwrite"


def check_resumable(checkpoint, path, world_size):
    """What only --resume reads (optimiser state, counters, history, precision, the random states
    and the loss scale) checked in one place, before anything is touched: a ckpt.pt that another
    version of this code wrote, or one edited by hand, is refused in one line instead of a
    traceback halfway through restoring it."""
    bad = invalid_fields(checkpoint, RESUME_FIELDS)
    if bad:
        raise UserError(f"--resume: {path} has no valid {', '.join(bad)}; {RESUME_ADVICE}")
    positions = checkpoint["rng"]["batches"]
    if len(positions) != world_size:
        raise UserError(f"--resume: the run was saved by {len(positions)} process(es), this one has "
                        f"{world_size}; resume with the same torchrun --nproc_per_node")
    try:      # states that a generator takes (a CUDA one is checked when it is set)
        for random_state in (checkpoint["rng"].get("torch"), *positions):
            torch.Generator().set_state(random_state)
    except (TypeError, RuntimeError):
        raise UserError(f"--resume: {path} holds a random state that PyTorch cannot restore; "
                        f"{RESUME_ADVICE}") from None
    if checkpoint["precision"] == "fp16":          # the loss scale it had reached, as GradScaler keeps it
        loss_scale = dict.fromkeys(torch.amp.GradScaler("cpu").state_dict(), NUMBER)
        if invalid_fields(checkpoint["scaler"], loss_scale):
            raise UserError(f"--resume: {path} has no fp16 loss scale to go on with; {RESUME_ADVICE}")


def check_kind(checkpoint, kind, name="this checkpoint"):
    """kind: "causal" or "bidirectional" when only one will do (None: either)."""
    if kind and checkpoint["kind"] != kind:
        raise UserError(f"{name} holds a {checkpoint['kind']} model, but a {kind} one is needed here; "
                        f"use a checkpoint from {'train_clm.py' if kind == 'causal' else 'train_mlm.py'}")


def check_tokenizer(checkpoint, identity):
    """A checkpoint is only meaningful with the tokenizer it was trained with (identity: the
    tokenizer's name, size and fingerprint, data.tokenizer_identity): refuse instead of computing
    garbage."""
    saved = checkpoint["tokenizer"]
    if saved["fingerprint"] != identity["fingerprint"]:
        raise UserError(f"tokenizer mismatch: the checkpoint was trained with {saved['name']} "
                        f"({saved['n_vocab']} tokens, {saved['fingerprint']}), this run uses "
                        f"{identity['name']} ({identity['n_vocab']} tokens, {identity['fingerprint']}); "
                        f"use the same --corpus and --tokenizer")


def check_same_model(checkpoint, model_config, flag):
    """The checkpoint's weights must fit this run's model, and mean the same thing in it: the same
    shapes, and the same attention (ALiBi's bias has no weights, but a model trained with it
    computes something else without it). Checkpoints from before ALiBi existed had none."""
    fields = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias", "alibi")
    saved = {k: checkpoint["model_config"].get(k, False) for k in fields}
    wanted = {k: model_config[k] for k in fields}
    if saved != wanted:
        changed = ", ".join(f"{k} {saved[k]} -> {wanted[k]}" for k in fields if saved[k] != wanted[k])
        raise UserError(f"{flag}: this run's model differs from the checkpoint's ({changed}); "
                        f"use the model flags the checkpoint was trained with")


def read_weights(folder):
    """{name: tensor} from a Hugging Face folder: model.safetensors, read here without the
    safetensors package (the format is an 8-byte header length, a JSON header of names, dtypes,
    shapes and byte offsets, then the raw little-endian bytes), or pytorch_model.bin through
    torch.load(weights_only=True). Both are data: nothing in them can run."""
    path = Path(folder) / "model.safetensors"
    if path.is_file():
        raw = path.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
        weights = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            buffer = bytearray(raw[8 + n + start:8 + n + end])
            weights[name] = torch.frombuffer(buffer, dtype=dtypes[info["dtype"]]).reshape(info["shape"]).float()
        return weights
    path = Path(folder) / "pytorch_model.bin"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    raise UserError(f"{folder} holds neither model.safetensors nor pytorch_model.bin; give a Hugging "
                    f"Face GPT-2 folder (config.json and one of those two files)")


# ----------------------------------------------------------------------------------------------
# 6. Logs, runs in parallel processes, and figures.

def append_jsonl(path, record, durable=False):
    """Append one JSON line. A line cut by a writer that was killed is closed first, so that it
    cannot swallow this record; durable=True also flushes the line to disk (a sweep's results,
    each of which may have cost minutes)."""
    try:
        with open(path, "a+b") as f:                  # "a": every write goes to the end
            cut = f.seek(0, os.SEEK_END) > 0 and f.seek(-1, os.SEEK_END) >= 0 and f.read(1) != b"\n"
            f.write((b"\n" if cut else b"") + json.dumps(record).encode() + b"\n")
            if durable:
                f.flush()
                os.fsync(f.fileno())
    except OSError as error:                          # a full disk, a folder made read-only
        raise UserError(f"cannot write {path}: {error.strerror}; the records before are kept "
                        f"(a cut last line is skipped when read)") from None


def read_jsonl(path):
    """The records (JSON objects) of a JSONL file (none if it does not exist); a last line cut by
    a killed writer is skipped with a note, not fatal. A line that is whole JSON but no object was
    not written here: the file is refused in one line."""
    records = []
    if not os.path.exists(path):
        return records
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                print(f"note: {path} line {number} is incomplete (a run killed while writing); ignored")
                continue
            if not isinstance(records[-1], dict):
                raise UserError(f"{path} line {number} is not a record (a JSON object), which these "
                                f"scripts never write; use another --out-dir or move the file away")
    return records


def check_records(path, records, fields):
    """Each record of a results file (read_jsonl) holds every one of `fields` (invalid_fields): a
    file edited by hand is refused in one line before any of it is counted, fitted or drawn.
    Deleting a record instead makes its sweep run that record's run again."""
    for record in records:
        bad = invalid_fields(record, fields)
        if bad:
            raise UserError(f"{path}: a record has no valid {', '.join(bad)}, which the sweep always "
                            f"writes ({json.dumps(record)[:80]}...); restore the file, or delete that "
                            f"line to run it again")


class Meter:
    """Tokens per second, MFU and ETA between two log lines; evaluation time is not counted. The
    tokens are every process's, so MFU divides by the peak of one device times their number."""

    def __init__(self, flops_per_token, peak, devices=1):
        self.flops_per_token, self.peak, self.devices = flops_per_token, peak, devices
        self.start, self.tokens = time.perf_counter(), 0

    def add(self, tokens):
        self.tokens += tokens

    def read(self):
        tokens_per_second = self.tokens / max(time.perf_counter() - self.start, 1e-9)
        return tokens_per_second, tokens_per_second * self.flops_per_token / (self.peak * self.devices)

    def restart(self):
        self.start, self.tokens = time.perf_counter(), 0


def count_step(state, meter, tokens, seconds):
    """One optimiser step done: the counters a checkpoint keeps (steps, tokens, FLOPs, seconds of the
    loop, and the length of this step) and the meter's tokens."""
    state["step"] += 1
    state["tokens"] += tokens
    state["flops"] += meter.flops_per_token * tokens
    state["step_seconds"] = seconds - state["seconds"]
    state["seconds"] = seconds
    meter.add(tokens)


def counters(state):
    """The counters a log record starts with."""
    return dict(step=state["step"], tokens=state["tokens"], flops=state["flops"],
                seconds=round(state["seconds"], 3))


def step_record(state, meter, **values):
    """A log record: the counters, `values`, and the meter's speed and MFU since the last record."""
    tokens_per_second, mfu = meter.read()
    return dict(counters(state), **values, tokens_per_s=round(tokens_per_second), mfu=mfu)


MANY_PASSES = 16   # Muennighoff et al. 2023: up to ~4 passes repeated text is nearly as good as new;
                   # past ~16 more passes add almost nothing, and the model memorises


def log_model(run, model, precision, tokens_per_step, peak, n_train_tokens):
    """The run's first line: the model, device, precision and speed reference; and a warning when
    the budget would pass over the training text more than MANY_PASSES times."""
    run.log(f"model: {model.num_params(non_embedding=False):,} parameters "
            f"({model.num_params():,} non-embedding), {'causal' if model.config.causal else 'bidirectional'}; "
            f"device {run.device}, precision {precision}, {tokens_per_step:,} tokens/step, "
            f"peak {peak / 1e12:.2f} TFLOP/s for MFU")
    budgets = [n for n in (run.cfg.max_iters and run.cfg.max_iters * tokens_per_step, run.cfg.max_tokens) if n]
    passes = min(budgets) / max(n_train_tokens, 1) if budgets else 0
    if passes > MANY_PASSES and run.dist["rank"] == 0:
        print(f"note: this budget passes over the {n_train_tokens:,} training tokens {passes:,.0f} times; "
              f"past about {MANY_PASSES} more passes add almost nothing and the model memorises "
              f"(Muennighoff et al. 2023): give a larger --corpus, or fewer steps", file=sys.stderr)


def check_finite(value, what, step):
    """A loss that became NaN or infinite ends the run with one line. Nothing from that step on is
    saved, so a checkpoint on disk (pretraining's; fine-tuning writes none) is the last good one."""
    if not math.isfinite(value):
        hint = "Lower --lr" + (", or use --precision fp32/bf16 instead of fp16" if what == "loss" else "")
        raise UserError(f"{what} became {value} at step {step}; nothing from that step on was saved. {hint}")


def log_step(run, record, last_metrics, progress):
    """One log line, and the record appended to log.jsonl."""
    eta = record["seconds"] / max(progress, 1e-9) * (1 - progress)
    val = (f"val {last_metrics['val_loss']:.4f} | {last_metrics['val_bpb']:.3f} bpb"
           if last_metrics else "val    -   |   -   bpb")
    run.log(f"step {record['step']:6d} | train {record['train_loss']:.4f} | {val} | lr {record['lr']:.2e} | "
            f"{record['tokens_per_s']:9,.0f} tok/s | MFU {100 * record['mfu']:5.1f}% | "
            f"{record['seconds']:6.1f}s elapsed, ETA {eta:5.1f}s")
    if run.out_dir:
        append_jsonl(os.path.join(run.out_dir, "log.jsonl"), record)


def finish_run(run, history):
    """The final record appended to log.jsonl, the folder freed for other runs, and under torchrun
    the process group closed."""
    if run.out_dir:
        append_jsonl(os.path.join(run.out_dir, "log.jsonl"), history[-1])
    if run.lock:
        run.lock.release()
    teardown_distributed(run.dist)


class StopSignals:
    """SIGTERM (preemption, Slurm's time limit, `docker stop`) and SIGUSR1 (Slurm's early warning)
    as a request to stop: the step under way finishes, the loop saves, and the run exits 143
    instead of losing every step since its last checkpoint. Main thread only (elsewhere nothing
    happens); the previous handlers come back on leaving the block."""

    def __init__(self):
        self.received, self.previous = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for name in ("SIGTERM", "SIGUSR1"):
                if hasattr(signal, name):                     # SIGUSR1 does not exist on Windows
                    number = getattr(signal, name)
                    self.previous[number] = signal.signal(number, self.handle)
        return self

    def handle(self, number, frame):
        self.received = signal.Signals(number).name

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    @property
    def budget(self):
        """As a fraction of the budget: past its end once a signal came, so the loop stops."""
        return 2.0 if self.received else 0.0


def terminated(run, step):
    """The one line a stopped run prints (rank 0), then exit status 143, as SIGTERM's default."""
    if run.dist["rank"] == 0:
        print(f"terminated at step {step}; checkpoint saved, continue with --resume", file=sys.stderr)
    sys.exit(143)


@contextlib.contextmanager
def figure(path, ncols=1, size=(7, 4.5), dpi=100):
    """A matplotlib figure of ncols axes, saved to `path` and closed on leaving the block. Agg
    draws to files only: no display needed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, ncols, figsize=size)
    yield fig, axes
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())             # a full disk: one line, and no half a picture


def colormap(name, fraction):
    import matplotlib
    return matplotlib.colormaps[name](fraction)


def check_results_dir(out_dir, overwrite, names):
    """Refuse, before any work, an --out-dir that is a file or that already holds results (unless
    --overwrite): a second run must not silently replace the first run's files."""
    if not out_dir:
        return
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out-dir {out_dir} is a file; give a folder")
    taken = [name for name in names if os.path.exists(os.path.join(out_dir, name))]
    if taken and not overwrite:
        raise UserError(f"{os.path.join(out_dir, taken[0])} already holds results; pass --overwrite to "
                        f"replace them, or another --out-dir")
    check_writable_folder(out_dir)


def in_processes(function, items, workers):
    """function(item) for every item, in `workers` fresh processes at once, yielding the results as
    they finish (workers <= 1: one after another, here). Each worker runs one thread: the models
    swept here cannot keep two cores busy alone, and two threads sharing a core wait on each
    other. `spawn` starts each worker as a new interpreter: a forked copy of a process that has
    run PyTorch's thread pools can deadlock."""
    if workers <= 1 or len(items) <= 1:
        yield from map(function, items)
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=torch.set_num_threads, initargs=(1,))
    try:
        for future in as_completed([pool.submit(function, item) for item in items]):
            yield future.result()
    finally:
        pool.shutdown(cancel_futures=True)


def cpu_cores():
    """The cores this process may run on (a container or taskset can allow fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(requested, device):
    """Runs at once in a sweep: as asked, else one per CPU core on a CPU (each process with one
    thread: these models cannot keep two cores busy alone), and one at a time on a GPU."""
    return requested or (cpu_cores() if device.type == "cpu" else 1)


def makespan(seconds, workers):
    """Wall time of jobs taking `seconds` on `workers` processes, each job going to the worker
    that frees up first, longest first (the order to submit them in)."""
    loads = [0.0] * max(1, workers)
    for s in sorted(seconds, reverse=True):
        loads[loads.index(min(loads))] += s
    return max(loads)
