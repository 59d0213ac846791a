"""Tests of bench.py (quick mode end to end) and of the claim behind its attention rows: the explicit
and the fast attention compute the same training step in every precision used by default."""
import concurrent.futures
import json
import os
import subprocess
import sys

import pytest
import torch

import bench
import optim
import plumbing
from plumbing import UserError
from model import ModelConfig, Transformer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = ("shape", "precision", "attention", "compiled", "tokens_per_s", "mfu", "peak_memory_mb")


def test_quick_mode_writes_a_valid_json_table(tmp_path, corpus_file):
    out = tmp_path / "bench.json"
    unit = 2**20 if sys.platform == "darwin" else 2**10          # ru_maxrss: bytes on macOS, KiB on Linux
    runtime = subprocess.Popen([sys.executable, "-c", "import resource, torch; print(resource.getrusage("
                                f"resource.RUSAGE_SELF).ru_maxrss / {unit})"], stdout=subprocess.PIPE, text=True)
    # One thread: the children's timings are not checked, and two threads on cores that other
    # processes share can take many times longer (each operation waits for both threads).
    done = subprocess.run([sys.executable, "bench.py", "--quick", "--json", str(out), "--corpus",
                           corpus_file, "--tokenizer", "bpe:300", "--threads", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    runtime_mb = float(runtime.communicate(timeout=120)[0])      # measured meanwhile, in parallel
    assert done.returncode == 0, done.stderr
    assert "| tokens/s | MFU |" in done.stdout
    rows = json.loads(out.read_text())
    train_rows = [r for r in rows if r["kind"] == "train_step"]
    assert {(r["precision"], r["attention"]) for r in train_rows} == {
        (p, a) for p in ("fp32", "bf16") for a in ("fast", "explicit")}      # the CPU defaults
    for row in rows:
        assert set(REQUIRED) <= set(row) and not row.get("error")
        # A process's peak memory: about what importing PyTorch alone takes (a process's footprint
        # varies by a few MB from run to run), and not far above it for these kilobyte-sized models.
        # A unit slip, KiB for MiB, would be off by a factor of 1024 either way.
        assert 0.9 * runtime_mb <= row["peak_memory_mb"] < runtime_mb + 1000
    for row in train_rows:
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1 and row["threads"] == 1
        assert row["compiled"] is False and row["steps"] == 3
        assert 3.0 < row["final_loss"] < 6.0              # ~ln(64) = 4.16: random tokens, 4 steps
    tokenizer = next(r for r in rows if r["kind"] == "tokenizer")
    assert tokenizer["encode_mb_per_s"] > 0 and tokenizer["bpe_train_s"] >= 0
    assert 1.0 < tokenizer["bytes_per_token"] < 8.0      # 44 merges of a repetitive text compress it


def test_bad_shape_list_and_json_path_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="is a folder"):       # refused before any measurement
        bench.main(["--json", str(tmp_path), "--tokenizer", "none", "--shapes", "huge"])
    with pytest.raises(UserError, match="shape"):
        bench.main(["--shapes", "huge", "--tokenizer", "none"])
    with pytest.raises(UserError, match="precisions"):
        bench.main(["--precisions", "fp8", "--tokenizer", "none"])
    with pytest.raises(UserError, match=r"shape '2/3/32/8/4/50': n_embd \(32\) must be divisible by n_head \(3\)"):
        bench.main(["--shapes", "2/3/32/8/4/50", "--tokenizer", "none"])
    assert bench.parse_shape("2/2/16/8/4/50") == ("2/2/16/8/4/50", dict(
        n_layer=2, n_head=2, n_embd=16, block_size=8, batch_size=4, vocab_size=50))


# Tolerances, stated, as the largest difference relative to the largest value (logits, loss, and all
# gradients at once). fp32: the paths differ only in summation order (fused kernel vs matmul then
# softmax); measured <= 4e-7 here, tolerance 1e-5. bf16 autocast: matmul inputs keep 8 significant
# bits (relative rounding 2^-8 = 0.4%) and the two paths round the scores and the weights at
# different points; measured <= 7e-3 over 5 seeds, tolerance 3e-2. A real bug is far larger: a
# causal model run without its mask differs by ~28% (the last assertion checks the gap).
TOLERANCE = {"fp32": 1e-5, "bf16": 3e-2}


def training_step_outputs(model, idx, targets, mask, precision):
    autocast, _ = optim.precision_context(torch.device("cpu"), precision)
    model.zero_grad(set_to_none=True)
    with autocast():
        logits, loss = model(idx, targets, attention_mask=mask)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    return logits.float(), loss.float(), grads


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("padded", [False, True])
def test_explicit_and_fast_attention_agree_in_training(precision, causal, padded):
    torch.manual_seed(0)
    config = dict(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=64, causal=causal)
    fast = Transformer(ModelConfig(**config, attention="fast"))
    explicit = Transformer(ModelConfig(**config, attention="explicit"))
    explicit.load_state_dict(fast.state_dict())
    generator = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 64, (3, 32), generator=generator)
    targets = torch.randint(0, 64, (3, 32), generator=generator)
    mask = None
    if padded:                                                  # right padding, as finetune.py pads
        mask = torch.ones(3, 32, dtype=torch.long)
        mask[0, 20:] = 0
        mask[2, 5:] = 0
        targets = targets.masked_fill(mask == 0, -100)          # padding is never scored
    real = mask.bool() if padded else torch.ones(3, 32, dtype=torch.bool)
    a = training_step_outputs(fast, idx, targets, mask, precision)
    b = training_step_outputs(explicit, idx, targets, mask, precision)
    tolerance = TOLERANCE[precision]
    assert relative_error(a[0][real], b[0][real]) < tolerance          # logits at real tokens
    assert abs(a[1].item() - b[1].item()) < tolerance * b[1].item()     # loss
    assert relative_error(a[2], b[2]) < tolerance                       # every gradient
    # The tolerance can tell a wrong model from a rounding difference: drop the causal mask.
    if causal and precision == "bf16" and not padded:
        wrong = Transformer(ModelConfig(**dict(config, causal=False), attention="fast"))
        wrong.load_state_dict(fast.state_dict())
        c = training_step_outputs(wrong, idx, targets, mask, precision)
        assert relative_error(c[2], b[2]) > 3 * TOLERANCE["bf16"]


@pytest.mark.parametrize("precision, same_as", [("fp32", "fast"), ("bf16", "explicit")])
def test_auto_attention_runs_the_faster_path_on_a_cpu(precision, same_as):
    """attention="auto" (model.SelfAttention.forward) is one of the two paths, bit for bit: on a CPU the
    fused kernel in fp32, the explicit matrix products in bf16 (where the fused backward is slow)."""
    config = dict(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32)
    torch.manual_seed(0)
    auto = Transformer(ModelConfig(**config, attention="auto"))
    reference = Transformer(ModelConfig(**config, attention=same_as))
    reference.load_state_dict(auto.state_dict())
    idx = torch.randint(0, 64, (2, 16))
    a = training_step_outputs(auto, idx, idx, None, precision)
    b = training_step_outputs(reference, idx, idx, None, precision)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# A stand-in for nanoGPT's model.py with its interface (GPTConfig, GPT(config), forward(idx, targets)
# -> (logits, loss), configure_optimizers): the harness must measure whatever file it is given.
REFERENCE_STAND_IN = '''
from dataclasses import dataclass
import torch
from model import ModelConfig, Transformer

@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True

class GPT(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        print("number of parameters: ...")          # nanoGPT prints; the row must stay parseable
        self.body = Transformer(ModelConfig(vocab_size=config.vocab_size, block_size=config.block_size,
                                            n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd))
    def forward(self, idx, targets=None):
        return self.body(idx, targets)
    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        return torch.optim.AdamW(self.parameters(), lr=learning_rate, betas=betas)
'''


def test_rows_measured_in_fresh_processes_ours_and_a_given_model_py(tmp_path):
    """The full benchmark's path: each row in its own process, reported back as JSON; a row of our
    model, and a row of the reference model.py given (nanoGPT's, here a stand-in). The two
    processes run at once: starting one is most of the time."""
    path = tmp_path / "model.py"
    path.write_text(REFERENCE_STAND_IN)
    ours = dict(shape_name="2x32", shape=bench.SHAPES["2x32"], precision="fp32", attention="explicit",
                compiled=False, steps=2, warmup=1, threads=1, device="cpu")
    reference = dict(ours, precision="bf16", attention="nanoGPT", reference=str(path))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        row, reference_row = pool.map(bench.run_isolated, (ours, reference))
    assert not row.get("error"), row.get("error")
    assert row["attention"] == "explicit" and row["threads"] == 1 and row["tokens_per_s"] > 0
    assert row["memory_kind"] == "max RSS of the process" and row["peak_memory_mb"] > 50
    row = reference_row
    assert not row.get("error"), row.get("error")
    assert row["attention"] == "nanoGPT" and row["precision"] == "bf16" and row["tokens_per_s"] > 0
    assert 3.0 < row["final_loss"] < 6.0               # it trained the stand-in: ~ln(64) on random tokens
    same_shape = {k: bench.SHAPES["2x32"][k] for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")}
    assert row["flops_per_token"] == Transformer(ModelConfig(**same_shape)).flops_per_token()
    with pytest.raises(UserError, match="no such file"):
        bench.main(["--reference", str(tmp_path / "missing.py"), "--tokenizer", "none", "--quick"])
    (tmp_path / "other.py").write_text("x = 1\n")
    with pytest.raises(UserError, match="no GPT and GPTConfig"):
        bench.main(["--reference", str(tmp_path / "other.py"), "--tokenizer", "none", "--quick"])
    (tmp_path / "model.txt").write_text("x = 1\n")
    with pytest.raises(UserError, match="not a Python file"):
        bench.main(["--reference", str(tmp_path / "model.txt"), "--tokenizer", "none", "--quick"])
    (tmp_path / "broken.py").write_text("import torch\nclass GPT(:\n")
    with pytest.raises(UserError, match=r"broken\.py fails to import \(SyntaxError: "):
        bench.main(["--reference", str(tmp_path / "broken.py"), "--tokenizer", "none", "--quick"])


def test_repeats_are_summarised_by_their_median_and_range():
    base = dict(kind="train_step", shape="4x128", n_layer=4, n_head=4, n_embd=128, block_size=64,
                batch_size=12, vocab_size=65, precision="bf16", attention="explicit", compiled=False,
                threads=2, mfu=0.4, peak_memory_mb=300.0, warmup_s=0.1)
    rows = [dict(base, tokens_per_s=v, repeat=i) for i, v in enumerate((30_000.0, 20_000.0, 25_000.0))]
    rows.append(dict(base, tokens_per_s=None, error="killed", repeat=3))      # a failed repeat is dropped
    (summary,) = bench.median_rows(rows)
    assert summary["tokens_per_s"] == 25_000.0 and summary["repeats"] == 3
    assert summary["tokens_per_s_range"] == (20_000.0, 30_000.0)
    assert "| 25,000 (20,000-30,000) |" in bench.format_table(rows)
    assert "| 25,000 |" in bench.format_table(rows[2:3])                    # one repeat: no range


def test_a_cpu_device_flushes_subnormal_floats_to_zero():
    """ALiBi's far-key scores underflow into subnormal floats in attention's backward, which x86
    CPUs process slowly; pick_device turns on flush-to-zero so they become exact zeros."""
    if not torch.set_flush_denormal(False):               # also undoes it, if an earlier test set it
        pytest.skip("this CPU has no flush-to-zero mode")
    tiny = torch.tensor([1e-39])                           # below fp32's smallest normal, 1.18e-38
    assert tiny.mul(1.0).item() != 0.0                     # subnormals survive without the setting
    plumbing.pick_device("cpu")
    assert tiny.mul(1.0).item() == 0.0


@pytest.mark.parametrize("name, precision, peak", [
    ("NVIDIA L40S", "bf16", 362e12), ("NVIDIA L4", "bf16", 121e12),          # L4 is inside "L40S"
    ("NVIDIA H100 PCIe", "bf16", 756e12), ("NVIDIA H100 80GB HBM3", "bf16", 989e12),
    ("NVIDIA H100 80GB HBM3", "fp32", 495e12),                                 # TF32: half the bf16 rate
    ("Tesla V100-SXM2-16GB", "fp32", 15.7e12), ("Tesla T4", "fp32", 8.1e12),   # no TF32 on these
    ("Tesla T4", "fp16", 65e12), ("NVIDIA GeForce RTX 4090", "bf16", 165e12), ("Some Future GPU", "bf16", None)])
def test_datasheet_peak_matches_the_most_specific_gpu_name(name, precision, peak):
    assert plumbing.gpu_peak_flops(name, precision) == peak


def test_the_cpu_is_named_with_its_vector_units_even_where_cpuinfo_names_no_model(tmp_path):
    """x86 Linux names the model in /proc/cpuinfo; many ARM boards list only features, where the
    name falls back to the platform's (this used to end in StopIteration on such a board). The
    vector units go beside the name: one model name covers AVX2-only and AVX-512 parts."""
    x86, arm = tmp_path / "x86", tmp_path / "arm"
    x86.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\nflags\t: fpu\n")
    arm.write_text("processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\n")
    assert plumbing.cpu_name(str(x86)) == "AMD EPYC 9R14"
    assert plumbing.cpu_name(str(arm)) == plumbing.cpu_name(str(tmp_path / "none")) != ""
    capability = torch.backends.cpu.get_cpu_capability()
    assert f"-{capability}|" in plumbing.machine_key(torch.device("cpu"))
    assert f"({capability}), {os.cpu_count()} cores" in bench.device_name(torch.device("cpu"))


def test_bf16_is_chosen_only_where_the_gpu_has_bf16_tensor_cores(monkeypatch):
    """V100 (7.0) and T4 (7.5) emulate bf16, slower than their fp16; A100 (8.0) and later have it."""
    model, batch = torch.nn.Linear(2, 2), {}
    for capability, expected in (((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)      # what it says on a T4
        assert plumbing.choose_precision(model, None, batch, torch.device("cuda")) == expected


def test_gpu_readiness_checks_that_run_on_a_cpu(monkeypatch, capsys):
    """The CUDA, Apple and torchrun mistakes whose cause a CPU can show: a refused autocast, the
    device a process under torchrun may take, torch.compile skipped on MPS, MFU per device, and the
    bench's gpt2 shape without ALiBi (as GPT-2, and as flash attention needs)."""
    with pytest.raises(UserError, match="float64 autocast does not run on cpu"):
        plumbing.check_autocast(torch.device("cpu"), torch.float64)
    plumbing.check_autocast(torch.device("cpu"), torch.bfloat16)            # runs: no error
    assert plumbing.check_precision(torch.device("cpu"), "bf16") == "bf16"   # by name, as the runs ask
    with pytest.raises(UserError, match="unknown precision 'fp8'"):
        plumbing.check_precision(torch.device("cpu"), "fp8")
    two = dict(rank=1, local_rank=1, world_size=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="would put every process on GPU 0"):
        plumbing.pick_device("cuda:0", two)
    with pytest.raises(UserError, match="more processes on this machine than its 1 GPU"):
        plumbing.pick_device("cuda", two)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    with pytest.raises(UserError, match="torchrun on Apple MPS is not supported"):
        plumbing.pick_device("mps", two)
    model = torch.nn.Linear(2, 2)
    assert plumbing.wrap_for_training(model, True, torch.device("mps"), plumbing.SINGLE_PROCESS) is model
    assert "--compile is skipped on Apple MPS" in capsys.readouterr().err
    one, two_devices = plumbing.Meter(1000, 1e6), plumbing.Meter(1000, 1e6, devices=2)
    for meter in (one, two_devices):
        meter.start -= 1.0
        meter.add(500)
    assert two_devices.read()[1] == pytest.approx(one.read()[1] / 2, rel=1e-3)   # the same tokens, 2 devices
    assert bench.parse_shape("preset:gpt2")[1]["alibi"] is False
    assert bench.parse_shape("preset:cpu")[1]["alibi"] is True


def test_a_budget_that_repeats_its_text_many_times_is_warned_about(capsys):
    """The gpt2 preset on pydocs would pass over its half a million tokens ~1,200 times."""
    import types
    run = types.SimpleNamespace(cfg=types.SimpleNamespace(max_iters=5000, max_tokens=None), dist=dict(rank=0),
                                device=torch.device("cpu"), log=lambda *a: None)
    model = Transformer(ModelConfig(vocab_size=64, block_size=8, n_layer=1, n_head=1, n_embd=8))
    plumbing.log_model(run, model, "bf16", 131_072, 1e12, 550_000)
    assert "passes over the 550,000 training tokens 1,192 times" in capsys.readouterr().err
    plumbing.log_model(run, model, "bf16", 4_096, 1e12, 550_000)             # 37 passes: warned too
    assert "37 times" in capsys.readouterr().err
    run.cfg.max_iters = 420
    plumbing.log_model(run, model, "bf16", 4_096, 1e12, 491_242)             # the main job: 3.5 passes
    assert capsys.readouterr().err == ""
