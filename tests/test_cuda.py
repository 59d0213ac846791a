"""Every script's CUDA path, in a few minutes on one GPU. Skipped where there is no CUDA device.

Each test runs a script as a user would (a fresh process, the real command line), on tiny shapes
except the last, which trains GPT-2 small's shape for a few steps. With two or more GPUs the DDP
test uses them all through NCCL; with one it still runs torchrun with one process.

    python -m pytest -q tests/test_cuda.py          # on a machine with a CUDA GPU
"""
import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--preset", "tiny", "--device", "cuda", "--sample-tokens", "0", "--quiet"]


def run(*argv, timeout=600):
    """Run a command in the repository root; fail with its output if it fails."""
    done = subprocess.run([*argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "4"})
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def final(stdout, what):
    """A number from a script's final lines, e.g. final(out, 'val loss')."""
    line = next(line for line in stdout.splitlines() if line.startswith(f"{what}:"))
    return float(line.split(":")[1].split()[0])


def test_clm_bf16_compiled_then_resumed(corpus_file, tmp_path):
    """bf16 autocast, torch.compile and batches in pinned memory (data.get_batch on CUDA), then a
    resume of the same run: the step counter goes on from the checkpoint."""
    out = str(tmp_path / "clm")
    flags = [*TINY, "--corpus", corpus_file, "--precision", "bf16", "--compile", "--out-dir", out]
    run(sys.executable, "train_clm.py", *flags, "--max-iters", "10")
    stdout = run(sys.executable, "train_clm.py", *flags, "--max-iters", "20", "--resume")
    checkpoint = torch.load(os.path.join(out, "ckpt.pt"), map_location="cpu", weights_only=True)
    assert checkpoint["state"]["step"] == 20 and checkpoint["precision"] == "bf16"
    assert 0 < final(stdout, "val loss") < 6


def test_clm_fp16_with_the_gradient_scaler(corpus_file, tmp_path):
    out = str(tmp_path / "fp16")
    stdout = run(sys.executable, "train_clm.py", *TINY, "--corpus", corpus_file, "--precision", "fp16",
                 "--out-dir", out, "--max-iters", "20")
    checkpoint = torch.load(os.path.join(out, "ckpt.pt"), map_location="cpu", weights_only=True)
    assert checkpoint["scaler"] and "scale" in checkpoint["scaler"]     # the loss scale was saved
    assert 0 < final(stdout, "val loss") < 6


def test_mlm_and_finetune_full_and_lora(corpus_file, tmp_path):
    mlm = str(tmp_path / "mlm")
    run(sys.executable, "train_mlm.py", *TINY, "--corpus", corpus_file, "--out-dir", mlm)
    clm = str(tmp_path / "clm")
    run(sys.executable, "train_clm.py", *TINY, "--corpus", corpus_file, "--out-dir", clm)
    rows = [f"{'the cat' if i % 2 else 'my friend'} sees the river.\t{'animal' if i % 2 else 'person'}"
            for i in range(80)]
    task = tmp_path / "task.tsv"
    task.write_text("\n".join(rows) + "\n")
    for checkpoint, mode in ((mlm, "full"), (clm, "lora"), (clm, "prompt")):
        out = str(tmp_path / f"ft-{mode}")
        run(sys.executable, "finetune.py", "--checkpoint", os.path.join(checkpoint, "ckpt.pt"), "--task",
            str(task), "--mode", mode, "--shots", "0", "--device", "cuda", "--min-steps", "10",
            "--out-dir", out)
        with open(os.path.join(out, "results.json")) as f:
            assert 0 <= json.load(f)["test"]["accuracy"] <= 1


def test_scaling_micro_sweep(corpus_file, tmp_path):
    out = str(tmp_path / "scaling")
    run(sys.executable, "scaling.py", "--preset", "tiny", "--corpus", corpus_file, "--device", "cuda",
        "--out-dir", out, "--n-boot", "10")
    with open(os.path.join(out, "results.jsonl")) as f:
        assert len(f.read().splitlines()) == 4


def test_gpt2_shape_trains_a_few_steps(corpus_file, tmp_path):
    """GPT-2 small's shape (124M, block 1024, bf16, compiled) for a few steps, on the test corpus
    encoded with bytes (GPT-2's own tokenizer file may not be on this machine)."""
    stdout = run(sys.executable, "train_clm.py", "--preset", "gpt2", "--tokenizer", "bytes", "--corpus",
                 corpus_file, "--block-size", "256", "--batch-size", "8", "--grad-accum", "1", "--max-iters",
                 "5", "--eval-interval", "5", "--eval-batches", "1", "--device", "cuda", "--out-dir", "",
                 "--sample-tokens", "0")
    assert final(stdout, "val loss") > 0


def test_ddp_under_torchrun_with_nccl(corpus_file, tmp_path):
    """All GPUs of this machine (one process per GPU; just one where there is one)."""
    n = torch.cuda.device_count()
    out = str(tmp_path / "ddp")
    run(sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
        "train_clm.py", *TINY, "--corpus", corpus_file, "--out-dir", out)
    checkpoint = torch.load(os.path.join(out, "ckpt.pt"), map_location="cpu", weights_only=True)
    assert len(checkpoint["rng"]["batches"]) == n


def test_sample_and_fill_run_on_the_gpu(corpus_file, tmp_path):
    """--sample and --fill follow --device (they used to run on the CPU whatever the machine had)."""
    clm, mlm = str(tmp_path / "clm"), str(tmp_path / "mlm")
    run(sys.executable, "train_clm.py", *TINY, "--corpus", corpus_file, "--out-dir", clm)
    run(sys.executable, "train_mlm.py", *TINY, "--corpus", corpus_file, "--out-dir", mlm)
    assert run(sys.executable, "train_clm.py", "--sample", os.path.join(clm, "ckpt.pt"), "--prompt", "the cat",
               "--num-tokens", "10", "--device", "cuda").startswith("the cat")
    assert "blank 1:" in run(sys.executable, "train_mlm.py", "--fill", os.path.join(mlm, "ckpt.pt"), "--device",
                             "cuda", "--text", "the cat [MASK] the river.")


def test_this_gpu_gets_its_own_precision_and_a_datasheet_peak():
    """bf16 from compute capability 8.0 (fp16 below: emulated bf16 is slower there); the peak for MFU
    is the card's own datasheet figure when the card is known."""
    import plumbing
    device = torch.device("cuda")
    expected = "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp16"
    assert plumbing.choose_precision(torch.nn.Linear(2, 2), None, {}, device) == expected
    name, peak = torch.cuda.get_device_name(device), plumbing.datasheet_peak_flops(device, "bf16")
    print(f"{name}: datasheet bf16 peak {peak}")
    if "H100" in name or "H200" in name or "A100" in name:
        assert peak is not None and peak >= 312e12


def test_mfu_under_torchrun_is_per_device(corpus_file, tmp_path):
    """Tokens per step count every process; the peak is one device's times their number, so MFU
    stays below 100% however many GPUs there are."""
    n = torch.cuda.device_count()
    out = str(tmp_path / "ddp-mfu")
    run(sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
        "train_clm.py", *TINY, "--corpus", corpus_file, "--out-dir", out, "--log-interval", "1")
    with open(os.path.join(out, "log.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    assert all(0 < r["mfu"] < 1 for r in records if "mfu" in r)
