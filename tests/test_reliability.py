"""Reliability: nothing lost, nothing executed, clear errors, and data parallel training.

    nothing lost      a run killed with SIGKILL resumes to the same final loss, bit for bit (CPU);
                      a checkpoint write that dies half way leaves the previous checkpoint whole.
    nothing executed  every torch.load is weights_only=True: a crafted pickle is refused and its
                      payload never runs.
    clear errors      bad input ends with exit status 2 and one line on stderr, no traceback, and
                      an existing checkpoint stays byte for byte as it was.
    many processes    two CPU processes under torchrun (gloo) end with identical weights.

Most bad-input cases run in-process (main(argv) under run_cli); a few run as real processes,
since only a real process shows what the user sees.
"""
import ast
import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import data
import finetune
import tasks
import plumbing
import train_clm
import transfer
from conftest import generated_text
from model import ModelConfig, Transformer
from plumbing import UserError, load_checkpoint, save_checkpoint
from train_clm import PRESETS, TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


def tiny_settings(corpus, out_dir, **overrides):
    return dict(PRESETS["tiny"], corpus=str(corpus), out_dir=str(out_dir), quiet=True,
                **{**dict(precision="fp32", device="cpu", sample_tokens=0), **overrides})


def cli_args(corpus, out_dir, *extra):
    return ["--preset", "tiny", "--corpus", str(corpus), "--out-dir", str(out_dir), "--precision",
            "fp32", "--device", "cpu", "--sample-tokens", "0", "--quiet", *extra]


def snapshot(folder):
    """Every file in folder, byte for byte: 'untouched' means this is equal before and after."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def run_script(*args, timeout=300):
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def log_records(out_dir):
    path = Path(out_dir) / "log.jsonl"
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]   # whole lines


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """One finished 10-step run (ckpt.pt, log.jsonl) that the tests copy and attack."""
    base = tmp_path_factory.mktemp("good")
    corpus = base / "corpus.txt"
    corpus.write_text(generated_text(), encoding="utf-8")
    train(TrainConfig(**tiny_settings(corpus, base / "run", max_iters=10, cache_dir=str(base / "cache"))))
    return dict(corpus=corpus, run=base / "run")


def copy_of(good_run, tmp_path):
    return Path(shutil.copytree(good_run["run"], tmp_path / "run"))


# ----------------------------------------------------------------------------------------------
# Nothing lost: SIGKILL and resume; atomic writes; corrupted files.

def test_sigkill_mid_run_then_resume_ends_bit_identical(corpus_file, tmp_path):
    # Dropout on, so the resumed run must also restore the global RNG (not only the data position).
    settings = dict(max_iters=30, eval_interval=10, log_interval=1, dropout=0.1)
    killed_dir = tmp_path / "killed"
    kill_at = 15                                 # between the checkpoints of steps 10 and 20
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    process = subprocess.Popen([sys.executable, "train_clm.py", *cli_args(corpus_file, killed_dir, *flags)],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not any(r["step"] >= kill_at for r in log_records(killed_dir)):
            assert process.poll() is None, f"the run ended before step {kill_at}: {process.stderr.read()}"
            assert time.monotonic() < deadline, "the run never reached the step to kill it at"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    saved_step = load_checkpoint(killed_dir / "ckpt.pt")["state"]["step"]
    assert 10 <= saved_step < 30, f"killed at step {kill_at}, checkpoint at step {saved_step}"
    # A live run was killed: it had logged step kill_at, and never wrote its final record.
    killed_log = log_records(killed_dir)
    assert max(r["step"] for r in killed_log) >= kill_at and not any(r.get("final") for r in killed_log)

    resumed = train(TrainConfig(**tiny_settings(corpus_file, killed_dir, resume=True, **settings)))
    straight = train(TrainConfig(**tiny_settings(corpus_file, tmp_path / "straight", **settings)))
    assert resumed["val_loss"] == straight["val_loss"], f"killed at step {kill_at}"

    def losses(records):  # what must match; timings (seconds, tokens/s) of course differ
        return [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in records]
    # The resumed run's log has each step once (the records the killed run wrote after its last
    # checkpoint were dropped, then written again) and every loss is the uninterrupted run's.
    assert losses(log_records(killed_dir)) == losses(log_records(tmp_path / "straight"))


def test_checkpoint_is_saved_without_the_torch_compile_prefix(corpus_file, tmp_path, monkeypatch):
    class Compiled(torch.nn.Module):
        """What torch.compile returns, minus the compiling (seconds): the model held as _orig_mod,
        so its state_dict keys read '_orig_mod.blocks.0...'."""
        def __init__(self, model):
            super().__init__()
            self._orig_mod = model

        def forward(self, *args, **kwargs):
            return self._orig_mod(*args, **kwargs)

    monkeypatch.setattr(plumbing.torch, "compile", lambda model, **kwargs: Compiled(model))
    assert any(k.startswith("_orig_mod.") for k in Compiled(torch.nn.Linear(1, 1)).state_dict())
    train(TrainConfig(**tiny_settings(corpus_file, tmp_path / "run", max_iters=5, eval_interval=5,
                                      compile=True)))
    checkpoint = load_checkpoint(tmp_path / "run" / "ckpt.pt")
    assert not [k for k in checkpoint["model"] if "_orig_mod" in k]
    Transformer(ModelConfig(**checkpoint["model_config"])).load_state_dict(checkpoint["model"])  # strict


def test_interrupted_checkpoint_write_leaves_the_old_one(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    path = tmp_path / "run" / "ckpt.pt"
    old = dict(model={"w": torch.arange(4.0)}, state=dict(step=10), model_config={}, kind="causal",
               tokenizer={}, tokenizer_state={})          # the keys every checkpoint carries
    save_checkpoint(str(path), old)
    before = path.read_bytes()

    def dies_half_way(error):
        def save(payload, f, *args, **kwargs):
            f.write(before[:len(before) // 2])      # half of a checkpoint reached the disk
            raise error
        return save

    disk_full = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(plumbing.torch, "save", dies_half_way(disk_full))
    with pytest.raises(UserError, match="No space left on device; the previous checkpoint is intact"):
        save_checkpoint(str(path), dict(model={"w": torch.zeros(4)}, state=dict(step=20)))
    monkeypatch.setattr(plumbing.torch, "save", dies_half_way(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):       # Ctrl-C still stops the run; it just cleans up
        save_checkpoint(str(path), dict(model={"w": torch.zeros(4)}, state=dict(step=20)))
    assert os.listdir(tmp_path / "run") == ["ckpt.pt"]   # no half-written temporary file left behind
    assert path.read_bytes() == before
    assert torch.equal(load_checkpoint(path)["model"]["w"], old["model"]["w"])


def test_truncated_or_corrupted_checkpoint_is_reported(good_run, tmp_path):
    good = (good_run["run"] / "ckpt.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[:len(good) // 2])
    with pytest.raises(UserError, match=r"truncated\.pt: it is truncated or not a checkpoint"):
        load_checkpoint(truncated)

    # Flip one byte in the middle of the largest tensor: the zip structure is intact, so torch.load
    # alone would return wrong weights without a word; the CRC32 check must catch it.
    with zipfile.ZipFile(good_run["run"] / "ckpt.pt") as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)
    header = member.header_offset
    name_length = int.from_bytes(good[header + 26:header + 28], "little")
    extra_length = int.from_bytes(good[header + 28:header + 30], "little")
    position = header + 30 + name_length + extra_length + member.file_size // 2
    flipped = bytearray(good)
    flipped[position] ^= 0x10
    corrupted = tmp_path / "corrupted.pt"
    corrupted.write_bytes(bytes(flipped))
    assert isinstance(torch.load(corrupted, map_location="cpu", weights_only=True), dict)  # silent
    with pytest.raises(UserError, match=f"{re.escape(member.filename)} fails its CRC check"):
        load_checkpoint(corrupted)

    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("these are not weights")
    with pytest.raises(UserError, match="truncated or not a checkpoint"):
        load_checkpoint(not_a_checkpoint)


# ----------------------------------------------------------------------------------------------
# Nothing executed.

class RunsCodeWhenUnpickled:
    """A pickle payload: unpickling calls os.mkdir(marker). Real attacks call os.system instead."""
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_malicious_pickle_is_refused_and_runs_nothing(good_run, tmp_path, capsys):
    # First show the payload is live: plain unpickling (which this project never does) runs it.
    ran = tmp_path / "ran"
    pickle.loads(pickle.dumps({"model": RunsCodeWhenUnpickled(ran)}))
    assert ran.is_dir()

    marker = tmp_path / "pwned"
    checkpoint = load_checkpoint(good_run["run"] / "ckpt.pt")    # a real checkpoint, plus the payload
    checkpoint["model"]["extra"] = RunsCodeWhenUnpickled(marker)
    run = copy_of(good_run, tmp_path)
    torch.save(checkpoint, run / "ckpt.pt")
    with pytest.raises(UserError, match="refused checkpoint .* could run code"):
        load_checkpoint(run / "ckpt.pt")
    for argv in (["--sample", str(run / "ckpt.pt")],
                 cli_args(good_run["corpus"], run, "--resume", "--max-iters", "20")):
        with pytest.raises(SystemExit) as exit_info:
            plumbing.run_cli(lambda: train_clm.main(argv))
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.startswith("error: refused checkpoint")
    assert not marker.exists()


def test_a_real_process_refuses_the_pickle_in_one_line(good_run, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": RunsCodeWhenUnpickled(marker)}, tmp_path / "evil.pt")
    result = run_script("train_clm.py", "--sample", tmp_path / "evil.pt")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("error: refused checkpoint") and result.stderr.count("\n") == 1
    assert not marker.exists()


def test_every_torch_load_in_the_course_is_weights_only():
    calls = []
    for path in sorted(REPO.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                calls.append((f"{path.name}:{node.lineno}", keywords.get("weights_only"),
                              "map_location" in keywords))
    assert calls, "no torch.load found at all: this test would be checking nothing"
    assert all(weights_only == "True" and has_map for _, weights_only, has_map in calls), calls


# ----------------------------------------------------------------------------------------------
# Clear errors: exit status 2, one line, the existing run untouched.

def write_bytes(name, content):
    def setup(tmp_path):
        (tmp_path / name).write_bytes(content)
    return setup


BAD_INPUTS = [  # id, extra flags (later flags win), what the message must say, files to create
    ("missing corpus", ["--corpus", "{tmp}/nowhere.txt"], "corpus file .* does not exist", None),
    ("corpus that is no file", ["--corpus", os.devnull], "is neither a text file nor a folder", None),
    ("empty corpus", ["--corpus", "{tmp}/empty.txt"], "is empty", write_bytes("empty.txt", b" \n\n")),
    ("non-UTF-8 corpus", ["--corpus", "{tmp}/latin1.txt"], r"not UTF-8 \(bad byte at offset 3\)",
     write_bytes("latin1.txt", "café au lait\n".encode("latin-1") * 50)),
    ("corpus shorter than a block", ["--corpus", "{tmp}/short.txt"], "corpus too short",
     write_bytes("short.txt", b"the cat sees the dog.\n" * 5)),
    ("invalid model shape", ["--n-embd", "30", "--n-head", "4"], "n_embd .30. must be divisible", None),
    ("invalid model shape, said before the data is read",           # not after minutes of tokenizing
     ["--n-embd", "30", "--n-head", "4", "--corpus", "{tmp}/nowhere.txt"], "n_embd .30. must be divisible", None),
    ("zero init std", ["--init-std", "0"], r"--init-std must be in \(0, inf\)", None),
    ("zero batch size", ["--batch-size", "0"], r"--batch-size must be in \[1, inf\)", None),
    ("negative budget", ["--max-iters", "-5"], r"--max-iters must be in \[1, inf\)", None),
    ("unknown preset", ["--preset", "huge"], "unknown preset 'huge'", None),
    ("unknown tokenizer", ["--tokenizer", "wordpiece"], "unknown tokenizer 'wordpiece'", None),
    ("unknown corpus", ["--corpus", "wikipedia"], "unknown corpus 'wikipedia'", None),
    ("unknown device", ["--device", "tpu"], "unknown device 'tpu'", None),
    ("malformed device", ["--device", "cuda:x"], "unknown device 'cuda:x'", None),
    ("unknown precision", ["--precision", "fp8"], "unknown precision 'fp8'", None),
    ("no CUDA", ["--device", "cuda"], "PyTorch sees no CUDA GPU", None),
    ("no MPS", ["--device", "mps"], "no Apple MPS", None),
    ("unwritable out dir", ["--out-dir", "{tmp}/a_file/run"], "cannot write to --out-dir .*a_file",
     write_bytes("a_file", b"a file, not a folder")),
    ("run exists", ["--no-overwrite"], "already holds a run; pass --resume", None),
    ("resume without out dir", ["--resume", "--out-dir", ""], "--resume needs the --out-dir", None),
    ("resume, other tokenizer", ["--resume", "--tokenizer", "bpe:300"], "tokenizer mismatch: .* bytes", None),
    ("resume, other shape", ["--resume", "--n-layer", "3"], r"model differs .*n_layer 2 -> 3", None),
    ("resume, corrupted checkpoint", ["--resume"], "truncated or not a checkpoint",
     lambda tmp: (tmp / "run" / "ckpt.pt").write_bytes((tmp / "run" / "ckpt.pt").read_bytes()[:5000])),
    ("loss becomes NaN", ["--resume", "--max-iters", "20", "--lr", "1e30"],
     r"loss became (nan|inf) at step 1\d; nothing from that step on was saved", None),
]


@pytest.mark.parametrize("flags, message, setup", [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line_and_leaves_the_run(flags, message, setup, good_run, tmp_path,
                                                            capsys):
    if "cuda" in flags and torch.cuda.is_available() or "mps" in flags and torch.backends.mps.is_available():
        pytest.skip("this machine has the device")
    run = copy_of(good_run, tmp_path)
    if setup:
        setup(tmp_path)
    before = snapshot(run)
    # --overwrite in every case: even a run allowed to replace the old one must validate first.
    argv = cli_args(good_run["corpus"], run, "--overwrite", *[f.format(tmp=tmp_path) for f in flags])
    with pytest.raises(SystemExit) as exit_info:
        plumbing.run_cli(lambda: train_clm.main(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    after = snapshot(run)
    assert after["ckpt.pt"] == before["ckpt.pt"]
    if "--lr" not in flags:              # a run that trained before failing may add log lines
        assert after == before


def test_nan_ends_the_command_in_one_line_exit_2_and_keeps_the_checkpoint(good_run, tmp_path, capsys):
    run = copy_of(good_run, tmp_path)
    before = (run / "ckpt.pt").read_bytes()
    with pytest.raises(SystemExit) as exit_info:          # the command line, as a real process runs it
        plumbing.run_cli(lambda: train_clm.main(cli_args(good_run["corpus"], run, "--resume", "--max-iters", "20",
                                                         "--lr", "1e30")))
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert re.fullmatch(r"error: loss became (nan|inf) at step 1\d; .*\n", stderr), stderr
    assert (run / "ckpt.pt").read_bytes() == before
    assert load_checkpoint(run / "ckpt.pt")["state"]["step"] == 10


def raise_at_batch(number, error, monkeypatch):
    """data.get_batch as usual, until its `number`-th call raises `error`: something that happens
    part way through a run (with the default tiny run of cli_args, during step `number`)."""
    calls = []
    draw = data.get_batch

    def batch_until(*args):
        calls.append(1)
        if len(calls) == number:
            raise error
        return draw(*args)

    monkeypatch.setattr(data, "get_batch", batch_until)


def test_ctrl_c_prints_one_line_and_keeps_the_checkpoint(corpus_file, tmp_path, monkeypatch, capsys):
    raise_at_batch(13, KeyboardInterrupt, monkeypatch)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        plumbing.run_cli(lambda: train_clm.main(cli_args(corpus_file, run, "--max-iters", "20")))
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == "interrupted; the last checkpoint is intact (continue with --resume)\n"
    assert load_checkpoint(run / "ckpt.pt")["state"]["step"] == 10
    assert sorted(os.listdir(run)) == ["ckpt.pt", "log.jsonl"]


def test_out_of_memory_is_one_line_exit_2_and_keeps_the_checkpoint(corpus_file, tmp_path, monkeypatch, capsys):
    """Settings that ask for more memory than the machine has end in one line, as bad input does:
    on a CPU PyTorch's allocator raises a plain RuntimeError (this is its text), on a GPU an
    OutOfMemoryError. Any other RuntimeError is a bug and keeps its traceback."""
    raise_at_batch(13, RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                                    "allocate memory: you tried to allocate 80000000000 bytes. Error code 12"),
                   monkeypatch)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        plumbing.run_cli(lambda: train_clm.main(cli_args(corpus_file, run, "--max-iters", "20")))
    assert exit_info.value.code == 2
    assert re.fullmatch(r"error: out of memory \(.*DefaultCPUAllocator: can't allocate memory: you tried to "
                        r"allocate 80000000000 bytes\. Error code 12\); ask for less: .*--batch-size.*\n",
                        capsys.readouterr().err)
    assert load_checkpoint(run / "ckpt.pt")["state"]["step"] == 10

    def gpu_out_of_memory():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(SystemExit) as exit_info:
        plumbing.run_cli(gpu_out_of_memory)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)")

    def a_bug():
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 7x8)")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        plumbing.run_cli(a_bug)


def numpy_out_of_memory():
    """NumPy's own error for an array larger than memory (a --batch-size of 10^8 raised it in
    data.get_batch): a MemoryError, not a RuntimeError."""
    try:
        np.empty(2**58, dtype=np.int8)              # 256 PiB: refused by malloc at once
    except MemoryError as error:
        return error
    pytest.skip("this machine allocated 256 PiB")


def test_out_of_memory_at_the_first_batch_leaves_no_folder(corpus_file, tmp_path, monkeypatch, capsys):
    """Out of memory before anything was recorded: one line, exit 2, and the folder the run had
    made is gone; an existing folder is left as it was."""
    raise_at_batch(1, numpy_out_of_memory(), monkeypatch)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        plumbing.run_cli(lambda: train_clm.main(cli_args(corpus_file, run)))
    assert exit_info.value.code == 2
    assert re.fullmatch(r"error: out of memory \(Unable to allocate 256\. PiB .*\); ask for less: .*--batch-size.*\n",
                        capsys.readouterr().err)
    assert not run.exists()

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "log.jsonl").write_text("")
    raise_at_batch(1, numpy_out_of_memory(), monkeypatch)
    with pytest.raises(SystemExit):
        plumbing.run_cli(lambda: train_clm.main(cli_args(corpus_file, existing)))
    assert snapshot(existing) == {"log.jsonl": b""}


def test_checkpoint_records_tokenizer_and_kind_and_refuses_mismatches(good_run, tmp_path, monkeypatch):
    checkpoint = load_checkpoint(good_run["run"] / "ckpt.pt")
    assert checkpoint["kind"] == "causal"
    assert set(checkpoint["tokenizer"]) == {"name", "n_vocab", "fingerprint"}
    enc = data.get_tokenizer("bytes")
    plumbing.check_kind(checkpoint, "causal")                       # the right ones pass
    plumbing.check_tokenizer(checkpoint, data.tokenizer_identity(enc))
    with pytest.raises(UserError, match="holds a causal model, but a bidirectional one is needed"):
        plumbing.check_kind(checkpoint, "bidirectional")
    with pytest.raises(UserError, match="holds a bidirectional model, but a causal one is needed"):
        plumbing.check_kind(dict(checkpoint, kind="bidirectional"), "causal")
    other = data.get_tokenizer("bpe:300", text=generated_text())
    with pytest.raises(UserError, match=r"tokenizer mismatch: .*bytes \(260 tokens.*bpe300"):
        plumbing.check_tokenizer(checkpoint, data.tokenizer_identity(other))
    torch.save({"model": {}}, tmp_path / "weights_only.pt")
    with pytest.raises(UserError, match="not a pretraining checkpoint"):
        load_checkpoint(tmp_path / "weights_only.pt")
    torch.save(dict(checkpoint, kind="sideways", tokenizer="bytes"), tmp_path / "edited.pt")
    with pytest.raises(UserError, match=r"not a pretraining checkpoint \(no valid kind, tokenizer\)"):
        load_checkpoint(tmp_path / "edited.pt")
    # A masked-LM objective (bidirectional) refuses to resume the causal run, before touching it.
    run = copy_of(good_run, tmp_path)
    before = snapshot(run)
    with pytest.raises(UserError, match="holds a causal model, but a bidirectional one"):
        train(TrainConfig(**tiny_settings(good_run["corpus"], run, max_iters=20, resume=True)), causal=False)
    assert snapshot(run) == before
    # Each process resumes its own data position: another number of processes is refused.
    monkeypatch.setattr(plumbing, "setup_distributed", lambda device: dict(rank=0, local_rank=0, world_size=2))
    with pytest.raises(UserError, match="saved by 1 process.*this one has 2"):
        train(TrainConfig(**tiny_settings(good_run["corpus"], run, max_iters=20, resume=True)))
    assert snapshot(run) == before


def test_a_checkpoint_this_code_cannot_build_is_refused_in_one_line(good_run, tmp_path, capsys):
    """Another version's checkpoint (a model setting this code lacks), or an edited one (weights
    renamed, a shape that cannot be): refused when read, before any model is trained on it."""
    good = load_checkpoint(good_run["run"] / "ckpt.pt")
    train_clm.load_pretrained(str(good_run["run"] / "ckpt.pt"))                  # the good one loads
    weights = dict(good["model"])
    weights["blocks.0.attn.renamed.weight"] = weights.pop(next(k for k in weights if "attn" in k))
    for name, change, reason in (
            ("newer", dict(model_config=dict(good["model_config"], rope=True)), "unexpected keyword argument 'rope'"),
            ("renamed", dict(model=weights), "Unexpected key"),
            ("heads", dict(model_config=dict(good["model_config"], n_head=3)), "divisible by n_head")):
        path = tmp_path / f"{name}.pt"
        torch.save(dict(good, **change), path)
        with pytest.raises(SystemExit) as exit_info:
            plumbing.run_cli(lambda: train_clm.main(["--sample", str(path), "--num-tokens", "3"]))
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1, err
        assert "holds a model this code cannot build" in err and reason in err, err


def edit_weights(checkpoint):
    name = next(iter(checkpoint["model"]))
    checkpoint["model"][name] = torch.zeros(3)             # the recorded shape is still the model's


@pytest.mark.parametrize("edit, reason", [
    (lambda c: c.pop("optimizer"), "has no valid optimizer;"),
    (lambda c: c["state"].pop("tokens"), "has no valid state.tokens;"),
    (lambda c: c.update(history=[1, 2]), "has no valid history;"),
    (lambda c: c["rng"].update(batches=[torch.zeros(3, dtype=torch.uint8)]), "random state that PyTorch cannot"),
    (lambda c: c.update(precision="fp8"), "has no valid precision;"),
    (lambda c: c.update(precision="fp16", scaler={}), "has no fp16 loss scale to go on with"),
    (edit_weights, "does not fit this model and optimiser (RuntimeError: "),
    (lambda c: c["optimizer"].update(param_groups=[]), "does not fit this model and optimiser (ValueError: "),
    (lambda c: c["state"].update(step=-5), "has no valid state.step;"),
    (lambda c: c["state"].update(step=2.5), "has no valid state.step;"),
], ids=["optimizer", "counters", "history", "data-position", "precision", "loss-scale", "weights", "groups",
         "negative-step", "fractional-step"])
def test_a_resume_checkpoint_from_another_version_or_edited_is_refused_untouched(edit, reason, good_run, tmp_path,
                                                                                 capsys):
    """--resume reads more than a pretraining checkpoint's model: the optimiser, counters, history,
    random states and precision. A ckpt.pt where one of them is missing or does not fit is refused
    in one line before the folder is touched (its log.jsonl is rewritten only once all is checked)."""
    run = copy_of(good_run, tmp_path)
    checkpoint = load_checkpoint(run / "ckpt.pt")
    edit(checkpoint)
    save_checkpoint(str(run / "ckpt.pt"), checkpoint)
    before = snapshot(run)
    with pytest.raises(SystemExit) as exit_info:
        plumbing.run_cli(lambda: train_clm.main(cli_args(good_run["corpus"], run, "--resume", "--max-iters", "20")))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and reason in err, err
    assert snapshot(run) == before


def test_malformed_label_file_names_the_line_in_finetune(good_run, tmp_path, capsys):
    labels = tmp_path / "labels.tsv"
    labels.write_text("a fine sentence\t1\nanother one\t0\nno label on this line\nlast\t1\n")
    with pytest.raises(UserError, match=r"labels\.tsv: malformed line\(s\) 3;"):
        tasks.load_labelled(str(labels))
    with pytest.raises(SystemExit) as exit_info:
        plumbing.run_cli(lambda: finetune.main(["--task", str(labels), "--checkpoint",
                                                 str(good_run["run"] / "ckpt.pt"), "--device", "cpu",
                                                 "--out-dir", str(tmp_path / "finetuned")]))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "malformed line(s) 3" in err, err


# ----------------------------------------------------------------------------------------------
# Data parallel: torchrun, gloo, two CPU processes.

def test_gradients_are_synchronised_only_at_the_last_micro_batch(corpus_file, monkeypatch):
    """Under DDP each backward inside no_sync skips the all-reduce: with 4 micro-batches a step,
    only the last one's backward may communicate (plumbing.sync_gradients)."""
    synced = []

    class RecordingDDP(torch.nn.Module):
        """Stands in for DistributedDataParallel: records whether each forward would all-reduce."""
        def __init__(self, model):
            super().__init__()
            self.module, self.syncing = model, True

        @contextlib.contextmanager
        def no_sync(self):
            self.syncing = False
            yield
            self.syncing = True

        def forward(self, *args, **kwargs):
            synced.append(self.syncing)
            return self.module(*args, **kwargs)

    monkeypatch.setattr(plumbing, "wrap_for_training", lambda model, *args: RecordingDDP(model))
    train(TrainConfig(**tiny_settings(corpus_file, "", max_iters=2, grad_accum=4)))
    assert synced == [False, False, False, True] * 2


# Run by torchrun in each process: the real command lines of the scripts, one job after another in
# the same two processes (starting them is most of the time), plus two additions made here and not
# in the course code: when train() returns, every rank saves its own weights; and a job may keep a
# copy of its step-3 checkpoint, as if the run had died there. The process group stays open from
# one job to the next, and the last job closes it: gloo cannot reliably open a second group in the
# same torchrun processes (the new group's ranks read the old one's addresses and fail to connect).
RANK_WEIGHTS_LAUNCHER = """
import json, os, shutil, sys
import torch
sys.path.insert(0, os.getcwd())
import plumbing
import train_clm
import train_mlm
real_train, real_save, real_teardown = train_clm.train, plumbing.save_checkpoint, plumbing.teardown_distributed


def train_and_save_rank_weights(*args, **kwargs):
    result = real_train(*args, **kwargs)
    torch.save(result["model"].state_dict(), os.path.join(job["weights"], f"rank{os.environ['RANK']}.pt"))
    return result


def save_and_copy_step_3(path, payload):
    real_save(path, payload)
    if payload["state"]["step"] == 3 and job["died"]:
        os.makedirs(job["died"], exist_ok=True)
        shutil.copy(path, os.path.join(job["died"], "ckpt.pt"))


def teardown_after_the_last_job(dist):
    if job is jobs[-1]:
        real_teardown(dist)


train_clm.train = train_mlm.train = train_and_save_rank_weights
plumbing.save_checkpoint = save_and_copy_step_3
plumbing.teardown_distributed = teardown_after_the_last_job
jobs = json.loads(sys.argv[1])
for job in jobs:
    os.makedirs(job["weights"], exist_ok=True)
    if os.environ["RANK"] == "0":
        print("=== job", flush=True)
    plumbing.run_cli(lambda: __import__(job["script"]).main(job["args"]))
"""


def test_two_processes_under_torchrun_end_with_identical_weights(corpus_file, tmp_path):
    """Three jobs under one torchrun launch of two processes: a causal run, that run resumed from
    its step-3 checkpoint, and a masked-LM run."""
    def job(script, name, out_dir, *extra, died=None):
        flags = cli_args(corpus_file, out_dir, "--max-iters", "6", "--eval-interval", "3", "--grad-accum", "2",
                         *extra)
        return dict(script=script, weights=str(tmp_path / name), died=died and str(died),
                    args=[a for a in flags if a != "--quiet"])
    jobs = [job("train_clm", "clm", tmp_path / "clm-run", died=tmp_path / "died"),
            job("train_clm", "resumed", tmp_path / "died", "--resume"),
            job("train_mlm", "mlm", tmp_path / "mlm-run")]
    launcher = tmp_path / "launcher.py"
    launcher.write_text(RANK_WEIGHTS_LAUNCHER)
    # torchrun, as `python -m torch.distributed.run` with this interpreter: it runs even where the
    # virtual environment's bin folder (and so the torchrun command) is not on PATH.
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(launcher), json.dumps(jobs)], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout.split("=== job\n")[1:]                     # what each job printed
    assert len(printed) == len(jobs)

    def weights(name, rank):
        return torch.load(tmp_path / name / f"rank{rank}.pt", map_location="cpu", weights_only=True)
    for name, out_dir, output in (("clm", "clm-run", printed[0]), ("mlm", "mlm-run", printed[2])):
        rank0, rank1 = weights(name, 0), weights(name, 1)
        assert rank0.keys() == rank1.keys()
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), name
        checkpoint = load_checkpoint(tmp_path / out_dir / "ckpt.pt")        # written by rank 0 alone
        assert all(torch.equal(checkpoint["model"][k], rank0[k]) for k in rank0)
        first, second = checkpoint["rng"]["batches"]                         # one data position per rank
        assert not torch.equal(first, second)
        assert checkpoint["state"]["tokens"] == 6 * 2 * 2 * 8 * 32           # steps x ranks x accum x B x T
        assert output.count("model:") == 1 and output.count("final:") == 1  # only rank 0 prints
        assert sorted(p.name for p in (tmp_path / out_dir).iterdir()) == ["ckpt.pt", "log.jsonl", "loss.png"]
    # Resumed from step 3, each process takes up its own data position (and the shared RNG state),
    # and the two end with the uninterrupted run's very weights.
    assert "resumed from" in printed[1]
    for rank in (0, 1):
        resumed = weights("resumed", rank)
        assert all(torch.equal(resumed[k], weights("clm", 0)[k]) for k in resumed), f"rank {rank} after resuming"


# ----------------------------------------------------------------------------------------------
# Every numeric flag of every training script, out of its range: one line, exit 2, nothing touched.

def out_of_range_values(within, kind):
    """Values just outside the interval a knob declares (and not-a-number for floats)."""
    low, low_open, high, high_open = plumbing.parse_interval(within)
    values = [low if low_open else low - 1]
    if math.isfinite(high):
        values.append(high if high_open else high + (1 if kind is int else 0.5))
    if kind is float:
        values.append(float("nan"))
    return [kind(v) if kind is int else v for v in values]


def numeric_flags():
    import train_mlm
    cases = []
    for script, config in (("train_clm", TrainConfig), ("train_mlm", train_mlm.MLMConfig),
                           ("finetune", finetune.FinetuneConfig)):
        for f in dataclasses.fields(config):
            if f.metadata.get("within"):
                kind = int if "int" in str(f.type) else float
                for value in out_of_range_values(f.metadata["within"], kind):
                    cases.append((script, f.name.replace("_", "-"), value))
    return cases


@pytest.mark.parametrize("script,flag,value", numeric_flags(),
                         ids=lambda x: str(x))
def test_every_numeric_flag_out_of_range_is_one_line_exit_2_and_touches_nothing(
        script, flag, value, good_run, tmp_path, capsys):
    run = copy_of(good_run, tmp_path)
    (run / "results.json").write_text("{}")                 # as a finished fine-tuning run leaves
    before = snapshot(run)
    module = __import__(script)
    argv = [f"--{flag}", str(value), "--out-dir", str(run), "--overwrite"]
    if script == "finetune":
        argv += ["--checkpoint", str(run / "ckpt.pt")]
    else:
        argv += ["--corpus", str(good_run["corpus"]), "--preset", "tiny"]
    with pytest.raises(SystemExit) as exit_info:
        plumbing.run_cli(lambda: module.main(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and f"--{flag}" in err, err
    assert snapshot(run) == before


def test_other_bad_inputs_are_refused_before_anything_is_touched(good_run, tmp_path, capsys):
    import train_mlm
    run = copy_of(good_run, tmp_path)
    (run / "results.json").write_text("{}")
    before = snapshot(run)
    ckpt = str(run / "ckpt.pt")
    corpus = str(good_run["corpus"])
    fresh = tmp_path / "fresh"                                  # a run folder that does not exist yet
    tsv = tmp_path / "set.tsv"                                  # a labelled set that needs no network
    tsv.write_text("".join(f"text {i}\t{i % 2}\n" for i in range(40)))
    cases = [
        (train_clm, ["--preset", "tiny", "--corpus", corpus, "--out-dir", str(run), "--overwrite",
                     "--lr", "1e-3", "--min-lr", "1e-2"], "--min-lr"),
        (train_mlm, ["--preset", "tiny", "--corpus", corpus, "--out-dir", str(run), "--overwrite",
                     "--block-size", "1"], "--block-size"),
        (train_clm, ["--sample", ckpt, "--temperature", "0"], "--temperature"),
        (train_clm, ["--sample", ckpt, "--top-k", "0"], "--top-k"),
        (train_clm, ["--sample", ckpt, "--num-tokens", "-5"], "--num-tokens"),
        (finetune, ["--checkpoint", ckpt, "--out-dir", str(run)], "already holds results"),
        (finetune, ["--checkpoint", ckpt, "--out-dir", str(run / "ckpt.pt")], "is a file"),
        (transfer, ["--clm", ckpt, "--seeds", "0", "--out-dir", str(run)], "--seeds"),
        (finetune, ["--export-text", "sst2", "-o", str(run)], "is a folder"),
        # Settings that only fine-tuning reads, refused before a new --out-dir is made.
        (finetune, ["--checkpoint", ckpt, "--out-dir", str(fresh), "--mode", "bogus"], "unknown mode"),
        (finetune, ["--checkpoint", ckpt, "--out-dir", str(fresh), "--lr", "1e-3", "--min-lr", "1e-2"],
         "--min-lr"),
        (finetune, ["--checkpoint", ckpt, "--out-dir", str(fresh), "--precision", "fp8"], "unknown precision"),
        (transfer, ["--clm", ckpt, "--out-dir", str(fresh), "--precision", "fp8"], "unknown precision"),
        (transfer, ["--clm", ckpt, "--out-dir", str(fresh), "--lr", "1e-3", "--min-lr", "1e-2"], "--min-lr"),
        (transfer, ["--curve", "--clm", str(run), "--out-dir", str(fresh), "--precision", "fp8"],
         "unknown precision"),
        (finetune, ["--checkpoint", ckpt, "--out-dir", str(fresh), "--pooling", "bogus"], "unknown pooling"),
        (finetune, ["--checkpoint", ckpt, "--out-dir", str(fresh), "--pooling", "cls"], "needs a bidirectional"),
        (transfer, ["--clm", ckpt, "--out-dir", str(fresh), "--pooling", "cls"], "needs a bidirectional"),
        (transfer, ["--curve", "--clm", str(run), "--out-dir", str(fresh), "--pooling", "cls"],
         "needs a bidirectional"),
        # Settings refused only once the model is built, after the folder was made: it is removed again.
        (finetune, ["--task", str(tsv), "--checkpoint", ckpt, "--out-dir", str(fresh), "--mode", "last-k",
                    "--last-k", "100"], "--last-k 100"),
        (finetune, ["--task", str(tsv), "--checkpoint", ckpt, "--out-dir", str(fresh), "--mode", "prompt",
                    "--shots", "1000"], "--shots"),
        (finetune, ["--task", str(tsv), "--checkpoint", ckpt, "--out-dir", str(fresh), "--mode", "lora",
                    "--lora-r", "4096"], "--lora-r 4096"),
    ]
    for module, argv, message in cases:
        if module is finetune and "--export-text" in argv:
            argv = ["--export-text", str(tsv), "-o", str(run)]
        with pytest.raises(SystemExit) as exit_info:
            plumbing.run_cli(lambda: module.main(argv))
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, (argv, err)
        assert message in err, (argv, err)
        assert snapshot(run) == before and not fresh.exists(), argv
        assert not list(tmp_path.glob("**/*.tmp")), argv            # no stray temporary file


def test_a_header_line_is_skipped_not_made_a_class(tmp_path):
    tsv = tmp_path / "set.tsv"
    tsv.write_text("text\tlabel\n" + "".join(f"example {i}\t{'ab'[i % 2]}\n" for i in range(40)))
    labelled = tasks.load_labelled(str(tsv))
    assert labelled.label_names == ["a", "b"]


def test_a_byte_order_mark_is_not_part_of_the_text(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfhello world\n")
    assert data.load_corpus(str(path)).text == "hello world\n"


def test_resume_refuses_a_switched_alibi_and_restores_the_fp16_loss_scale(corpus_file, tmp_path):
    """ALiBi has no weights, so a checkpoint fits a model without it, which would then compute
    something else: --resume refuses the switch. fp16's loss scale is state too: the resumed run
    continues with the saved scale (set here to 1024, where a fresh scaler starts at 65536)."""
    run = tmp_path / "run"
    train(TrainConfig(**tiny_settings(corpus_file, run, max_iters=10, precision="fp16")))
    before = snapshot(run)
    with pytest.raises(UserError, match=r"--resume: this run's model differs .*\(alibi True -> False\)"):
        train(TrainConfig(**tiny_settings(corpus_file, run, max_iters=20, resume=True, alibi=False)))
    assert snapshot(run) == before
    checkpoint = load_checkpoint(run / "ckpt.pt")
    assert checkpoint["precision"] == "fp16" and checkpoint["scaler"]["scale"] == 65536.0
    checkpoint["scaler"]["scale"] = 1024.0
    save_checkpoint(str(run / "ckpt.pt"), checkpoint)
    train(TrainConfig(**tiny_settings(corpus_file, run, max_iters=12, eval_interval=12, resume=True)))
    assert load_checkpoint(run / "ckpt.pt")["scaler"]["scale"] == 1024.0     # 2,000 steps before it grows


# ----------------------------------------------------------------------------------------------
# One run per folder, a clean stop on SIGTERM, a cache that cannot lie, a full disk.

def start_run_process(corpus, out_dir, *flags):
    """A real training process (tiny preset, one log record per step), and a wait until it has
    taken its folder and logged a step."""
    argv = cli_args(corpus, out_dir, "--log-interval", "1", *flags)
    process = subprocess.Popen([sys.executable, "train_clm.py", *argv], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not log_records(out_dir):
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "the run never logged a step"
        time.sleep(0.01)
    return process


def test_a_precision_this_device_cannot_run_is_refused_before_the_folder_is_made(corpus_file, tmp_path,
                                                                                monkeypatch, capsys):
    """--precision bf16 where autocast would quietly run fp32 (older PyTorch on Apple's MPS, say):
    refused in one line with the flags, before --out-dir exists, not after the run has started."""
    def cannot(device, dtype):
        raise UserError(f"{dtype} autocast does not run on {device.type}; use --precision fp32")
    monkeypatch.setattr(plumbing, "check_autocast", cannot)
    fresh = tmp_path / "fresh"
    with pytest.raises(SystemExit) as exit_info:
        plumbing.run_cli(lambda: train_clm.main(["--preset", "tiny", "--corpus", corpus_file, "--device", "cpu",
                                                 "--precision", "bf16", "--out-dir", str(fresh)]))
    assert exit_info.value.code == 2 and "autocast does not run" in capsys.readouterr().err
    assert not fresh.exists()


def test_a_refused_run_removes_only_the_empty_folder_it_made(tmp_path):
    """After bad input (plumbing.run_cli), a folder that the run's lock created and nothing was
    written to is removed; one that held a file by then, or that was there before, stays."""
    made, written, existing = tmp_path / "made", tmp_path / "written", tmp_path / "existing"
    existing.mkdir()

    def refused():
        for folder in (made, written, existing):
            plumbing.lock_folder(str(folder))
        (written / "sweep.jsonl").write_text("{}\n")                    # a record kept before the error
        raise UserError("refused")
    with pytest.raises(SystemExit):
        plumbing.run_cli(refused)
    assert not made.exists() and (written / "sweep.jsonl").exists() and existing.is_dir()
    assert not plumbing.HELD_FOLDERS                                        # every lock released


def test_a_second_run_into_a_busy_folder_stops_at_once_and_touches_nothing(good_run, corpus_file, tmp_path,
                                                                          capsys):
    """Two runs in one folder would interleave their logs and race for ckpt.pt. The first holds an
    OS lock on the folder; a second (--overwrite, or --resume) stops in one line naming the folder
    and the process, exit 2, while the first goes on untouched. Every script that writes a run
    folder takes the same lock (finetune.py, transfer.py and scaling.py are refused here too)."""
    run = tmp_path / "run"
    first = start_run_process(corpus_file, run, "--max-iters", "100000", "--eval-interval", "50")
    try:
        with pytest.raises(SystemExit) as second:                  # the command line, in this process
            plumbing.run_cli(lambda: train_clm.main(cli_args(corpus_file, run, "--overwrite", "--max-iters", "5")))
        stderr = capsys.readouterr().err
        assert second.value.code == 2, stderr
        assert re.fullmatch(rf"error: {re.escape(str(run))} is in use by process {first.pid}, a run writing "
                            r"there; .*\n", stderr), stderr
        tsv = tmp_path / "task.tsv"
        tsv.write_text("".join(f"{'a cat' if i % 2 else 'a friend'} sees it\t{i % 2}\n" for i in range(40)))
        for script, argv in ((finetune, ["--task", str(tsv), "--init", "scratch", "--corpus", corpus_file,
                                         "--tokenizer", "bytes", "--out-dir", str(run)]),
                             (transfer, ["--clm", str(good_run["run"] / "ckpt.pt"), "--task", str(tsv),
                                         "--out-dir", str(run)])):
            with pytest.raises(UserError, match=rf"is in use by process {first.pid}"):
                script.main(argv)
        assert first.poll() is None                                        # the first run goes on ...
        first.send_signal(signal.SIGTERM)                                  # ... until it is told to stop
        first.wait(timeout=120)
    finally:
        first.kill()
        first.wait()
        first.stderr.close()
    assert first.returncode == 143
    steps = [r["step"] for r in log_records(run)]
    assert steps == list(range(1, len(steps) + 1))                     # one run's log, in order
    # The lock went with the process: the folder is free again, and a resumed run takes it.
    plumbing.lock_folder(str(run)).release()


def test_a_lock_dies_with_its_process_even_by_sigkill(tmp_path):
    folder = tmp_path / "run"
    script = (f"import plumbing, time; plumbing.lock_folder({str(folder)!r}); print('locked', flush=True); "
              "time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"is in use by process {holder.pid}"):
            plumbing.lock_folder(str(folder))
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    finally:
        holder.kill()
        holder.stdout.close()
    plumbing.lock_folder(str(folder)).release()                        # no stale lock to delete
    assert os.listdir(folder) == []                                    # and no lock file was ever left


def test_sigterm_finishes_the_step_saves_and_resumes_to_the_same_loss(corpus_file, tmp_path):
    """Preemption, Slurm's time limit and docker stop send SIGTERM: the run finishes its step,
    saves it (not the last evaluation's), says so in one line and exits 143; --resume then ends
    at the very loss of a run never stopped."""
    settings = dict(max_iters=60, eval_interval=20, dropout=0.1)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    run = tmp_path / "stopped"
    process = start_run_process(corpus_file, run, *flags)
    try:
        deadline = time.monotonic() + 120
        while not any(r["step"] >= 25 for r in log_records(run)):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        err = process.stderr.read()
    finally:
        process.kill()
        process.stderr.close()
    assert process.returncode == 143, err
    step = load_checkpoint(run / "ckpt.pt")["state"]["step"]
    assert err == f"terminated at step {step}; checkpoint saved, continue with --resume\n"
    assert 25 <= step < 60 and step != 40                              # saved where it stopped
    assert not list(run.glob("*.tmp"))
    resumed = train(TrainConfig(**tiny_settings(corpus_file, run, resume=True, log_interval=1, **settings)))
    straight = train(TrainConfig(**tiny_settings(corpus_file, tmp_path / "straight", log_interval=1, **settings)))
    assert resumed["val_loss"] == straight["val_loss"]


def test_a_damaged_cache_is_said_and_rebuilt(corpus_file, tmp_path, capsys):
    """A cached token stream cut short, a meta.json that is not JSON, a tokenizer file cut in the
    middle, measured speeds that are not JSON: each is reported in one line and rebuilt from its
    source, and the run trains on the whole corpus."""
    cache = tmp_path / "cache"
    dataset = data.prepare_dataset(corpus_file, "bpe:300", cache_dir=cache, verbose=False)
    whole = np.array(dataset.train)               # a copy: the memory map must go before the file is cut
    n_train = len(whole)
    del dataset
    folder = next((cache / "datasets").iterdir())
    with open(folder / "train.bin", "r+b") as f:
        f.truncate(1000)                                                  # a full disk, a cut copy
    again = data.prepare_dataset(corpus_file, "bpe:300", cache_dir=cache, verbose=False)
    assert len(again.train) == n_train and np.array_equal(again.train, whole)
    assert "the cached dataset" in capsys.readouterr().err
    (folder / "meta.json").write_text('{"n_train_tokens": 12')
    assert len(data.prepare_dataset(corpus_file, "bpe:300", cache_dir=cache, verbose=False).train) == n_train
    assert "is damaged" in capsys.readouterr().err
    meta = json.loads((folder / "meta.json").read_text())
    for edited in ({k: v for k, v in meta.items() if k not in ("corpus", "train_bytes")},   # keys gone
                   dict(meta, val_chars="many"), dict(meta, dtype="float16"), [meta]):      # or wrong
        (folder / "meta.json").write_text(json.dumps(edited))
        again = data.prepare_dataset(corpus_file, "bpe:300", cache_dir=cache, verbose=True)
        assert np.array_equal(again.train, whole) and again.meta == meta and "is damaged" in capsys.readouterr().err
    ranks = next((cache / "tokenizers").iterdir())
    ranks.write_text(ranks.read_text()[:2000])                            # cut mid-line
    text = open(corpus_file).read()
    enc = data.get_tokenizer("bpe:300", text=text[:int(0.9 * len(text))], cache_dir=cache)   # the training split
    assert enc.n_vocab == 304 and "the cached tokenizer" in capsys.readouterr().err
    ranks.write_bytes(b"\xff\xfe garbage \x80\n")                         # not text at all
    enc = data.get_tokenizer("bpe:300", text=text[:int(0.9 * len(text))], cache_dir=cache)
    assert enc.n_vocab == 304 and "the cached tokenizer" in capsys.readouterr().err
    kept = dict(plumbing.MEASURED_THIS_PROCESS)                           # measured in this process
    try:
        for damaged in ("{not json", "[1]"):                                # cut, or not a table
            (cache / "measured.json").write_text(damaged)
            plumbing.MEASURED_THIS_PROCESS.clear()
            assert plumbing.measured_peak_flops(torch.device("cpu"), "fp32", cache) > 0
            assert "measured.json is damaged" in capsys.readouterr().err
        table = json.loads((cache / "measured.json").read_text())          # rewritten whole
        (cache / "measured.json").write_text(json.dumps({key: "x" for key in table}))   # edited by hand
        plumbing.MEASURED_THIS_PROCESS.clear()
        assert plumbing.measured_peak_flops(torch.device("cpu"), "fp32", cache) > 0   # measured again
    finally:
        plumbing.MEASURED_THIS_PROCESS.update(kept)


def test_a_damaged_download_in_the_cache_is_fetched_again(tmp_path, monkeypatch, capsys):
    payload = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"
    sources = {"shakespeare.txt": ("https://example.invalid/input.txt", hashlib.sha256(payload).hexdigest(), None)}
    fetched = []
    monkeypatch.setattr(plumbing.urllib.request, "urlopen",
                        lambda url, timeout: fetched.append(url) or io.BytesIO(payload))
    path = plumbing.obtain_data_file("shakespeare.txt", cache_dir=tmp_path, sources=sources)
    assert path.read_bytes() == payload and len(fetched) == 1
    path.write_bytes(payload[:10])                                        # cut by a full disk
    assert plumbing.obtain_data_file("shakespeare.txt", cache_dir=tmp_path, sources=sources).read_bytes() == payload
    assert len(fetched) == 2 and "is damaged (sha256" in capsys.readouterr().err


class DiskFullAfter:
    """Stands in for `open` in plumbing: files opened for writing take `limit` bytes in all, then
    every write fails with ENOSPC, as a disk that fills up part way through a run."""
    def __init__(self, limit):
        self.left = limit

    def __call__(self, path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        return f if not any(c in mode for c in "wa+") else FillingFile(f, self)


class FillingFile:
    """A file whose writes draw on a shared budget of bytes (DiskFullAfter)."""
    def __init__(self, f, disk):
        self.f, self.disk = f, disk

    def write(self, data):
        if len(data) > self.disk.left:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.disk.left -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("limit, failing", [(50_000, "ckpt.pt"), (0, "log.jsonl")])
def test_a_full_disk_stops_the_run_in_one_line_and_keeps_the_last_checkpoint(limit, failing, corpus_file,
                                                                              tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    train(TrainConfig(**tiny_settings(corpus_file, run, max_iters=10)))      # a good checkpoint at step 10
    before = (run / "ckpt.pt").read_bytes()
    monkeypatch.setattr(plumbing, "open", DiskFullAfter(limit), raising=False)
    with pytest.raises(SystemExit) as exit_info:
        plumbing.run_cli(lambda: train_clm.main(cli_args(corpus_file, run, "--resume", "--max-iters", "30")))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    written = re.escape(str(run / failing))
    assert re.match(rf"error: cannot write (checkpoint )?{written}: No space left on device", err), err
    monkeypatch.undo()
    assert not list(run.glob("*.tmp"))                                     # nothing half-written left
    if failing == "ckpt.pt":
        assert (run / "ckpt.pt").read_bytes() == before                    # the last good one, loadable
    assert load_checkpoint(run / "ckpt.pt")["state"]["step"] == 10
