"""Tests of the training loop in train_clm.py (the loop train_mlm.py and scaling.py reuse)."""
import dataclasses
import json
import math
import os
import shutil
import types

import pytest
import torch

import data
import finetune
import optim
import plumbing
import train_clm
from conftest import generated_text, write_gpt2_tokenizer
from model import ModelConfig, Transformer
from optim import learning_rate
from train_clm import TrainConfig, train


def tiny_config(corpus_file, out_dir, **overrides):
    settings = dict(train_clm.PRESETS["tiny"], corpus=corpus_file, out_dir=str(out_dir), quiet=True,
                    precision="fp32", device="cpu", sample_tokens=0)
    settings.update(overrides)
    return TrainConfig(**settings)


def keep_a_copy_at_step(step, folder, monkeypatch):
    """Every checkpoint is saved as usual, and the one of `step` is also copied to folder/ckpt.pt:
    a run that died right after that save, ready for --resume."""
    real_save = plumbing.save_checkpoint

    def save_and_copy(path, payload):
        real_save(path, payload)
        if payload["state"]["step"] == step:
            os.makedirs(folder, exist_ok=True)
            shutil.copy(path, os.path.join(folder, "ckpt.pt"))
    monkeypatch.setattr(plumbing, "save_checkpoint", save_and_copy)


def test_two_layer_model_learns_and_writes_log_and_plot(corpus_file, tmp_path):
    cfg = tiny_config(corpus_file, tmp_path / "run", max_iters=60, eval_interval=20, lr=3e-3)
    result = train(cfg)
    val = [r["val_loss"] for r in result["history"] if "val_loss" in r]
    assert val[-1] < val[0]
    assert result["val_loss"] < 3.0                    # from ln(256) = 5.5 at initialisation
    records = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert records[-1]["final"] and records[0]["step"] == 5
    assert {"train_loss", "lr", "tokens_per_s", "mfu"} <= set(records[0])
    train_clm.plot_losses(cfg, result["history"], "clm")                   # as main() does
    assert os.path.getsize(tmp_path / "run" / "loss.png") > 1000
    assert 0 < result["val_bpb"] < 8 and math.isclose(result["val_bpb"], result["val_bpc"], rel_tol=0.01)


def test_bits_per_byte_counts_the_validation_texts_own_bytes(corpus_file, tmp_path):
    """With a BPE, tokens, bytes and characters are three different counts: the reported bits per
    byte and per character must be the loss times the validation text's own tokens per byte (per
    character), counted here by hand from the corpus file."""
    text = open(corpus_file, encoding="utf-8").read().replace("the", "thé")   # 2-byte characters too
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    result = train(tiny_config(str(tmp_path / "corpus.txt"), "", tokenizer="bpe:300", max_iters=4))
    val_text = text[int(len(text) * 0.9):]                             # the last 10% of characters
    n_tokens = len(result["dataset"].enc.encode_ordinary(val_text))
    n_bytes, n_chars = len(val_text.encode("utf-8")), len(val_text)
    assert n_tokens < 0.8 * n_bytes and n_chars < 0.97 * n_bytes      # three different counts
    assert math.isclose(result["val_bpb"], result["val_loss"] / math.log(2) * n_tokens / n_bytes, rel_tol=1e-9)
    assert math.isclose(result["val_bpc"], result["val_loss"] / math.log(2) * n_tokens / n_chars, rel_tol=1e-9)


def test_gradient_accumulation_equals_one_big_batch(corpus_file, tmp_path, monkeypatch):
    """One step of 8 windows, and one step of 4 micro-batches of 2 (the same 8 windows: the batch
    generator draws them in the same order), reach the optimiser with the same gradients."""
    gradients = []
    step = optim.optimizer_step

    def recording_step(model, *args):
        gradients.append([p.grad.clone() for p in model.parameters()])
        return step(model, *args)
    monkeypatch.setattr(optim, "optimizer_step", recording_step)
    big = train(tiny_config(corpus_file, "", max_iters=1, batch_size=8, grad_accum=1))
    small = train(tiny_config(corpus_file, "", max_iters=1, batch_size=2, grad_accum=4))
    assert math.isclose(big["val_loss"], small["val_loss"], rel_tol=1e-6)    # the same step taken
    assert len(gradients) == 2 and all(g.abs().sum() > 0 for g in gradients[0])
    for g_big, g_small in zip(*gradients):
        assert torch.allclose(g_big, g_small, atol=1e-6)


def test_every_step_moves_the_weights_and_the_schedule_ends_at_min_lr(corpus_file, tmp_path, monkeypatch):
    """Each step runs at the rate of its middle: the first step is above zero (at the start of the
    budget the rate is 0, and step 1 would change no weight), the last just above min_lr, and the
    schedule function reaches min_lr exactly at the end of the budget."""
    moved = []
    step = optim.optimizer_step

    def recording_step(model, optimizer, *args):
        before = [p.detach().clone() for p in model.parameters()]
        step(model, optimizer, *args)
        moved.append(max((p.detach() - b).abs().max().item() for p, b in zip(model.parameters(), before)))
    monkeypatch.setattr(optim, "optimizer_step", recording_step)
    cfg = tiny_config(corpus_file, "", max_iters=10, log_interval=1, warmup=0.2, lr=1e-2, min_lr=1e-3)
    lrs = [r["lr"] for r in train(cfg)["history"] if "lr" in r]
    assert lrs[0] == pytest.approx(cfg.lr * 0.05 / 0.2)              # step 1's middle: 0.05 of the budget
    assert all(m > 0 for m in moved) and len(moved) == 10             # every step, the first too, moves
    assert cfg.min_lr < lrs[-1] < cfg.min_lr + 0.01 * (cfg.lr - cfg.min_lr)
    assert learning_rate(1.0, cfg) == pytest.approx(cfg.min_lr)
    # Fine-tuning's schedule, read the same way: BERT's floor of 0 and still no step of size zero.
    labelled = [("cat dog", 0), ("red blue", 1)] * 8
    ft_cfg = finetune.FinetuneConfig(min_steps=4, epochs=1, batch_size=4, eval_points=0, device="cpu",
                                     precision="fp32", lr=1e-2, min_lr=0.0, warmup=0.25)
    classifier = finetune.make_classifier(Transformer(ModelConfig(vocab_size=320, block_size=16, n_layer=1,
                                                                  n_head=1, n_embd=8)), 2, ft_cfg)
    enc = data.get_tokenizer("bytes")
    history, _ = finetune.finetune(classifier, finetune.encode_texts(enc, [t for t, _ in labelled], 16, False),
                                   [y for _, y in labelled], ft_cfg, data.special_ids(enc)["pad"], torch.device("cpu"))
    assert [r["lr"] for r in history][0] > 0 and [r["lr"] for r in history][-1] > 0


def test_wall_clock_budget_ends_the_schedule(corpus_file, tmp_path, monkeypatch):
    # A fake clock that advances 10 ms each time it is read: the run is then the same on a loaded
    # machine as on an idle one, while train() still only ever looks at "seconds elapsed".
    ticks = iter(range(10**9))
    monkeypatch.setattr(train_clm.time, "perf_counter", lambda: next(ticks) * 0.01)
    cfg = tiny_config(corpus_file, "", max_iters=None, max_seconds=1.5, log_interval=1,
                      eval_interval=10_000, warmup=0.2)
    result = train(cfg)
    lrs = [r["lr"] for r in result["history"] if "lr" in r]
    assert 1.5 <= result["seconds"] < 1.6                         # stopped as the budget ran out
    assert len(lrs) > 10
    peak_index = lrs.index(max(lrs))
    assert 0 < peak_index < len(lrs) - 1                          # warmed up, then decayed
    assert max(lrs) > 0.9 * cfg.lr
    assert lrs[-1] < cfg.min_lr + 0.05 * (cfg.lr - cfg.min_lr)    # at the minimum at the end


def test_a_wall_clock_run_resumes_where_its_clock_and_schedule_stopped(corpus_file, tmp_path, monkeypatch):
    """--max-seconds counts the loop's seconds across a resume: the resumed run continues the
    schedule from the saved seconds (not from a fresh warmup) and stops when the total is spent."""
    ticks = iter(range(10**9))
    monkeypatch.setattr(train_clm.time, "perf_counter", lambda: next(ticks) * 0.01)
    keep_a_copy_at_step(10, tmp_path / "died", monkeypatch)
    settings = dict(max_iters=None, max_seconds=1.5, log_interval=1, eval_interval=10, warmup=0.2)
    straight = train(tiny_config(corpus_file, tmp_path / "a", **settings))
    saved = plumbing.load_checkpoint(str(tmp_path / "died" / "ckpt.pt"))["state"]["seconds"]
    resumed = train(tiny_config(corpus_file, tmp_path / "died", resume=True, **settings))
    lr_at = lambda result, step: next(r["lr"] for r in result["history"] if r["step"] == step and "lr" in r)
    assert 0.1 < saved < 1.2 and 1.5 <= resumed["seconds"] < 1.6       # the clock went on from `saved`
    # At step 11 the schedule is near its peak (progress ~0.19 of 1.5 s); restarted from zero seconds
    # it would be at the very start of its warmup, a few thousandths of the peak.
    assert lr_at(resumed, 11) == pytest.approx(lr_at(straight, 11), rel=0.1)
    assert lr_at(resumed, 11) > 0.5 * train_clm.PRESETS["tiny"].get("lr", TrainConfig.lr)
    assert abs(resumed["steps"] - straight["steps"]) <= 2


@pytest.mark.parametrize("muon_lr", [0.0, 0.02])     # AdamW alone; Muon and AdamW (two optimisers' states)
def test_resume_reproduces_the_uninterrupted_run(muon_lr, corpus_file, tmp_path, monkeypatch):
    # Keep a copy of the step-10 checkpoint as it was written, as if the run had died right after it.
    # (tests/test_reliability.py does the same with a real SIGKILL.)
    keep_a_copy_at_step(10, tmp_path / "died", monkeypatch)
    straight = train(tiny_config(corpus_file, tmp_path / "a", max_iters=20, eval_interval=10, muon_lr=muon_lr))
    again = train(tiny_config(corpus_file, tmp_path / "b", max_iters=20, eval_interval=10, muon_lr=muon_lr))
    assert again["val_loss"] == straight["val_loss"]                  # determinism, same seed
    resumed = train(tiny_config(corpus_file, tmp_path / "died", max_iters=20, eval_interval=10,
                                resume=True, muon_lr=muon_lr))
    after_10 = lambda result: [r["train_loss"] for r in result["history"] if r["step"] > 10 and "lr" in r]
    assert len(after_10(straight)) == 2
    assert after_10(resumed) == after_10(straight)
    assert resumed["val_loss"] == straight["val_loss"]
    with pytest.raises(plumbing.UserError, match="--resume: the run was saved with --muon-lr"):
        train(tiny_config(corpus_file, tmp_path / "a", max_iters=30, resume=True, muon_lr=0.02 - muon_lr))
    other_text = tmp_path / "other.txt"                     # bytes either way: the tokenizer check passes
    other_text.write_text(open(corpus_file).read()[::-1])
    with pytest.raises(plumbing.UserError, match="--resume: the run was saved training on --corpus"):
        train(tiny_config(str(other_text), tmp_path / "a", max_iters=30, resume=True, muon_lr=muon_lr))


def test_sampling_is_deterministic_and_cli_refuses_bidirectional(corpus_file, tmp_path, capsys):
    train(tiny_config(corpus_file, tmp_path / "run", max_iters=10))
    args = ["--sample", str(tmp_path / "run" / "ckpt.pt"), "--prompt", "the cat", "--num-tokens", "20",
            "--seed", "3"]
    train_clm.main(args)
    first = capsys.readouterr().out
    train_clm.main(args)
    assert capsys.readouterr().out == first and first.startswith("the cat")
    checkpoint = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    checkpoint["kind"] = "bidirectional"
    torch.save(checkpoint, tmp_path / "bidi.pt")
    with pytest.raises(plumbing.UserError, match="bidirectional"):
        train_clm.main(["--sample", str(tmp_path / "bidi.pt")])


def test_every_config_field_is_a_flag():
    parser = plumbing.build_parser("x", train_clm.TrainConfig, train_clm.PRESETS)
    args = parser.parse_args(["--preset", "tiny", "--n-layer", "3", "--lr", "0.01", "--compile",
                              "--max-seconds", "5"])
    cfg = plumbing.config_from_args(args, train_clm.TrainConfig, train_clm.PRESETS)
    assert (cfg.n_layer, cfg.lr, cfg.compile, cfg.max_seconds, cfg.n_embd) == (3, 0.01, True, 5.0, 32)
    flags = {a.dest for a in parser._actions}
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= flags


def test_init_from_continues_another_runs_weights_with_its_tokenizer(corpus_file, tmp_path):
    """Domain-adaptive pretraining: start from a checkpoint, go on on another corpus. The new run
    keeps the checkpoint's tokenizer (a BPE trained on the first corpus), starts from its weights,
    and takes its shape from the checkpoint, not from the flags."""
    train(tiny_config(corpus_file, tmp_path / "first", tokenizer="bpe:300", max_iters=30, lr=3e-3))
    other = tmp_path / "other.txt"
    other.write_text(generated_text(seed=1).upper(), encoding="utf-8")       # another "domain"
    start = plumbing.load_checkpoint(str(tmp_path / "first" / "ckpt.pt"))
    cfg = tiny_config(str(other), tmp_path / "second", tokenizer="bpe:300", max_iters=1, lr=1e-9, min_lr=0.0,
                      warmup=0.0, init_from=str(tmp_path / "first" / "ckpt.pt"))
    result = train(cfg)
    second = plumbing.load_checkpoint(str(tmp_path / "second" / "ckpt.pt"))
    assert second["tokenizer"] == start["tokenizer"]
    for name, weight in start["model"].items():                 # one step at lr 1e-9: unchanged
        assert torch.allclose(second["model"][name], weight, atol=1e-6), name
    assert second["state"]["step"] == 1 and result["history"][-1]["step"] == 1   # a new run
    # A tokenizer trained on the other corpus would differ: the checkpoint's was used, not rebuilt.
    train(tiny_config(str(other), tmp_path / "fresh", tokenizer="bpe:300", max_iters=1))
    assert plumbing.load_checkpoint(str(tmp_path / "fresh" / "ckpt.pt"))["tokenizer"] != start["tokenizer"]
    train(dataclasses.replace(cfg, n_layer=3, out_dir=str(tmp_path / "third")))
    assert plumbing.load_checkpoint(str(tmp_path / "third" / "ckpt.pt"))["model_config"]["n_layer"] == 2
    with pytest.raises(plumbing.UserError, match=r"--block-size 64 is longer"):
        train(dataclasses.replace(cfg, block_size=64, out_dir=str(tmp_path / "fourth")))


def test_help_shows_the_values_the_default_preset_runs_with(capsys):
    """`--help` states what a run without flags uses: the cpu preset's values, naming the preset,
    not the config class's defaults (TrainConfig says lr 2e-3; the cpu preset runs at 3e-3)."""
    import train_mlm
    for main in (train_clm.main, train_mlm.main):
        with pytest.raises(SystemExit):
            main(["--help"])
    text = " ".join(capsys.readouterr().out.split())           # argparse wraps lines anywhere
    clm, mlm = text.split("usage:")[1], text.split("usage:")[2]
    assert "(default: 0.003, from --preset cpu; range (0, inf))" in clm  # --lr
    assert "(default: 0.049, from --preset cpu; range (0, inf))" in clm  # --init-std
    assert "(default: 0.02, from --preset cpu; range [0, inf))" in clm   # --muon-lr
    assert "(default: 2, from --preset cpu; range [1, inf))" in mlm      # --n-layer
    assert "(default: 64, from --preset cpu; range [1, inf))" in mlm     # --block-size
    assert "(default: 0.4, from --preset cpu; range (0, 1])" in mlm      # --mask-prob
    import transfer                              # a flag outside the config (add_flag): one default
    with pytest.raises(SystemExit):
        transfer.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 3; range [1, inf))" in text and "(default: 3)" not in text       # --seeds


def test_same_seed_same_losses_whether_or_not_precision_was_measured(corpus_file, tmp_path, monkeypatch):
    """With --precision auto the first run on a machine times training steps (the answer is then
    cached). Those steps run with dropout on; measuring must not move the random stream dropout
    draws from, or the first run would differ from every later one."""
    monkeypatch.setattr(plumbing, "bf16_is_accelerated", lambda device: True)   # measure on any CPU
    monkeypatch.setattr(plumbing, "MEASURED_THIS_PROCESS", {})
    cfg = tiny_config(corpus_file, "", precision="auto", dropout=0.2, max_iters=6, log_interval=1,
                      cache_dir=str(tmp_path / "cache"))
    cold = train(cfg)                                           # measures, then trains
    measured = json.loads((tmp_path / "cache" / "measured.json").read_text())
    assert any(key.startswith("precision|") for key in measured)
    monkeypatch.setattr(plumbing, "MEASURED_THIS_PROCESS", {})
    warm = train(cfg)                                           # reads the cached answer
    assert cold["precision"] == warm["precision"]
    losses = lambda result: [r["train_loss"] for r in result["history"] if "train_loss" in r]
    assert losses(cold) == losses(warm) and cold["val_loss"] == warm["val_loss"]


def test_each_preset_and_corpus_has_its_own_default_folder():
    """The README's commands run one after another as printed: without --out-dir, different presets
    and corpora never ask for the same folder."""
    import train_mlm
    folders = [plumbing.default_out_dir("clm", "cpu", "pydocs", "pydocs"),
               plumbing.default_out_dir("clm", "shakespeare", "shakespeare", "shakespeare"),
               plumbing.default_out_dir("clm", "cpu", "my/notes.txt", "pydocs"),
               plumbing.default_out_dir("clm", "cpu", "shakespeare", "pydocs"),
               plumbing.default_out_dir("mlm", "cpu", "pydocs", "pydocs"),
               plumbing.default_out_dir("mlm", "tiny", "pydocs", "pydocs")]
    assert folders == [os.path.join("out", name) for name in
                       ("clm", "shakespeare", "clm-notes", "clm-shakespeare", "mlm", "mlm-tiny")]
    ft = finetune.FinetuneConfig(n_train=256)
    args = lambda **kw: types.SimpleNamespace(**{**dict(checkpoint="gpt2", kind="causal", task="pydocs-topic",
                                                        init="pretrained"), **kw})
    assert finetune.results_folder(args(checkpoint="gpt2", task="data/sst2.tsv"), ft) == os.path.join(
        "out", "finetune", "gpt2-sst2-pretrained-full-n256-seed0")
    assert len({finetune.results_folder(args(init=init, checkpoint=ckpt), finetune.FinetuneConfig(mode=mode))
                for init in ("pretrained", "scratch") for ckpt in (None, "gpt2") for mode in ("full", "lora")}) == 8
    assert train_mlm.MLMConfig().out_dir == "out/mlm"
    parse = lambda main_config, presets, argv, kind: plumbing.config_from_args(
        plumbing.build_parser("x", main_config, presets).parse_args(argv), main_config, presets, kind=kind).out_dir
    assert parse(TrainConfig, train_clm.PRESETS, [], "clm") == os.path.join("out", "clm")
    assert parse(TrainConfig, train_clm.PRESETS, ["--preset", "shakespeare"], "clm") == os.path.join("out", "shakespeare")
    assert parse(TrainConfig, train_clm.PRESETS, ["--corpus", "a/notes.txt"], "clm") == os.path.join("out", "clm-notes")
    assert parse(train_mlm.MLMConfig, train_mlm.MLM_PRESETS, ["--preset", "tiny"], "mlm") == os.path.join("out", "mlm-tiny")
    assert parse(TrainConfig, train_clm.PRESETS, ["--out-dir", "mine"], "clm") == "mine"      # given: used


def test_kept_checkpoints_along_the_budget_load_and_fine_tune_like_the_final_one(corpus_file, tmp_path):
    """--keep 0.25,0.5 keeps the checkpoints at 25% and 50% of the budget beside ckpt.pt: normal
    checkpoints, each recording its step, tokens and FLOPs (the model's count times the tokens),
    that a fine-tuning run takes like the final one. Without --keep only ckpt.pt is written."""
    run = tmp_path / "run"
    result = train(tiny_config(corpus_file, run, max_iters=20, eval_interval=100, keep="0.25,0.5"))
    assert sorted(p.name for p in run.glob("ckpt*.pt")) == ["ckpt-step10.pt", "ckpt-step5.pt", "ckpt.pt"]
    flops_per_token = result["model"].flops_per_token()
    tokens_per_step = 8 * 32                                            # the tiny preset's batch x block
    for step in (5, 10):
        checkpoint, enc = train_clm.load_pretrained(str(run / f"ckpt-step{step}.pt"))
        state = checkpoint["state"]
        assert (state["step"], state["tokens"]) == (step, step * tokens_per_step)
        assert state["flops"] == flops_per_token * state["tokens"]
        assert "val_loss" in checkpoint["metrics"]
    labels = tmp_path / "task.tsv"
    labels.write_text("".join(f"{'the cat' if i % 2 else 'my friend'} sees it.\t{i % 2}\n" for i in range(60)))
    finetune.main(["--checkpoint", str(run / "ckpt-step5.pt"), "--task", str(labels), "--min-steps", "4",
                   "--epochs", "1", "--precision", "fp32", "--out-dir", str(tmp_path / "ft")])
    assert json.loads((tmp_path / "ft" / "results.json").read_text())["checkpoint"].endswith("ckpt-step5.pt")
    with pytest.raises(plumbing.UserError, match="every fraction must be in"):
        train(tiny_config(corpus_file, "", keep="0.5,2"))
    with pytest.raises(plumbing.UserError, match="--keep keeps checkpoints in --out-dir"):
        train(tiny_config(corpus_file, "", keep="0.5"))                  # nothing saved: nothing kept


def test_the_loss_is_read_from_the_device_only_when_logged(corpus_file, monkeypatch):
    """Reading the loss makes the host wait for the device (and, under DDP, is an all-reduce): the
    loop reads it at log steps only, 4 times in 20 steps logged every 5, not at every step."""
    reads = []
    agree_mean = plumbing.agree_mean
    monkeypatch.setattr(plumbing, "agree_mean", lambda value, *args: reads.append(value) or agree_mean(value, *args))
    result = train(tiny_config(corpus_file, "", max_iters=20, log_interval=5, eval_interval=10))
    assert len(reads) == 4
    assert [r["train_loss"] for r in result["history"] if "train_loss" in r] == reads


def test_a_wrong_gpt2_folder_is_one_line(tmp_path):
    """--init-from/--sample with a folder that is not GPT-2's: config.json that is not an object, or
    of another vocabulary, or no weights beside it; each refused in one line, never a traceback."""
    write_gpt2_tokenizer(tmp_path / "data")
    folder = tmp_path / "model"
    folder.mkdir()
    for config, message in (("[]", "None tokens in config.json"), ('{"vocab_size": 50257}', "50257 tokens"),
                            ('{"vocab_size": 300}', "holds neither model.safetensors nor pytorch_model.bin")):
        (folder / "config.json").write_text(config)
        with pytest.raises(plumbing.UserError, match=message):
            train_clm.load_pretrained(str(folder), data_dir=str(tmp_path / "data"),
                                      cache_dir=str(tmp_path / "cache"))
