"""Tests of masked-LM pretraining: BERT's masking statistics (data.mask_tokens), sparse prediction,
learning, and the command line of train_mlm.py (fill-in-the-blank, causal comparison)."""
import dataclasses
import json
import math
import re

import pytest
import torch

import data
import plumbing
import train_clm
import train_mlm
from model import ModelConfig, Transformer, padded_vocab_size
from train_mlm import MLMConfig


@pytest.fixture
def enc():
    return data.get_tokenizer("bytes")            # 256 ordinary tokens; specials 256..259


def batch_with_specials(enc, generator, B=512, T=64):
    """(B, T) ids as the MLM sees them: [CLS] first, right padding of random length (some rows
    keep a single ordinary token), and stray special tokens (end-of-text, mask) in the text."""
    ids = data.special_ids(enc)
    idx = torch.randint(data.n_ordinary(enc), (B, T), generator=generator)
    stray = torch.rand(B, T, generator=generator) < 0.05
    strays = torch.tensor([ids["eot"], ids["mask"]])[torch.randint(2, (B, T), generator=generator)]
    idx = torch.where(stray, strays, idx)
    idx[:, 0] = ids["cls"]
    lengths = torch.randint(2, T + 1, (B,), generator=generator)
    lengths[:16] = 2                                                     # [CLS] + one token
    idx[torch.arange(T)[None, :] >= lengths[:, None]] = ids["pad"]
    idx[:16, 1] = 7                                                      # that one token is ordinary
    return idx


@pytest.mark.parametrize("draw", ["fixed", "bernoulli"])
@pytest.mark.parametrize("mask_prob", [0.15, 0.4])
def test_masking_statistics_follow_berts_recipe(enc, draw, mask_prob):
    generator = torch.Generator().manual_seed(0)
    ids, n_ord = data.special_ids(enc), data.n_ordinary(enc)
    totals = dict(eligible=0, selected=0, mask=0, unchanged=0, random=0)
    for _ in range(4):                                                   # many draws: ~2,000 sequences
        idx = batch_with_specials(enc, generator)
        inputs, labels = train_mlm.mask_tokens(idx, enc, mask_prob, generator, draw=draw)
        eligible, selected = idx < n_ord, labels != -100
        assert not selected[~eligible].any()                            # specials and pad: never
        assert selected.sum(dim=1).min() >= 1                           # every sequence: at least one
        assert torch.equal(labels[selected], idx[selected])             # the answer is the original
        assert (labels[~selected] == -100).all()
        assert torch.equal(inputs[~selected], idx[~selected])           # the rest is untouched
        assert (inputs[selected & (inputs != ids["mask"])] < n_ord).all()   # random: never special
        if draw == "fixed":
            expected = (eligible.sum(dim=1) * mask_prob).round().clamp(min=1)
            assert torch.equal(selected.sum(dim=1), expected.long())
        totals["eligible"] += eligible.sum().item()
        totals["selected"] += selected.sum().item()
        totals["mask"] += (selected & (inputs == ids["mask"])).sum().item()
        totals["unchanged"] += (selected & (inputs == idx)).sum().item()
        totals["random"] += (selected & (inputs != idx) & (inputs != ids["mask"])).sum().item()
    # The 16 one-token rows per batch always select their token; the rest hold ~118k ordinary tokens.
    assert abs(totals["selected"] / totals["eligible"] - mask_prob) < 0.01
    share = lambda name: totals[name] / totals["selected"]
    assert abs(share("mask") - 0.8) < 0.015
    assert abs(share("unchanged") - (0.1 + 0.1 / n_ord)) < 0.015     # a random token can be the same
    assert abs(share("random") - 0.1 * (1 - 1 / n_ord)) < 0.015


def test_mlm_batch_layout(enc):
    generator = torch.Generator().manual_seed(1)
    ids = data.special_ids(enc)
    windows = torch.randint(data.n_ordinary(enc), (1000, 31), generator=generator)
    batch = train_mlm.mlm_batch(windows, enc, 0.15, generator, short_seq_prob=0.3)
    idx, targets, attention_mask = batch["idx"], batch["targets"], batch["attention_mask"]
    assert idx.shape == targets.shape == attention_mask.shape == (1000, 32)
    assert (idx[:, 0] == ids["cls"]).all() and (targets[:, 0] == -100).all()
    assert torch.equal(idx == ids["pad"], attention_mask == 0)          # pad exactly where masked out
    assert (targets[attention_mask == 0] == -100).all()
    short = (attention_mask == 0).any(dim=1).float().mean().item()
    assert 0.25 < short < 0.35                      # 30% asked; a random length of T is not short
    kept = targets != -100
    assert torch.equal(targets[kept], torch.cat([torch.zeros(1000, 1, dtype=torch.long), windows], 1)[kept])
    # The masking knobs are refused when the config is made, before any run starts.
    for flags, flag in ((["--mask-prob", "0"], "mask-prob"), (["--short-seq-prob", "1.5"], "short-seq-prob"),
                        (["--mask-draw", "x"], "mask-draw")):
        with pytest.raises(data.UserError, match=flag):
            parser = plumbing.build_parser("x", MLMConfig, train_mlm.MLM_PRESETS)
            plumbing.config_from_args(parser.parse_args(flags), MLMConfig, train_mlm.MLM_PRESETS)


def test_sparse_prediction_loss_equals_dense_loss(enc):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=320, block_size=32, n_layer=2, n_head=2, n_embd=32,
                                    causal=False))
    windows = torch.randint(data.n_ordinary(enc), (8, 31))
    batch = train_mlm.mlm_batch(windows, enc, 0.15, torch.Generator().manual_seed(0), short_seq_prob=0.5)

    def loss_and_grads(loss_fn):
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    sparse, sparse_grads = loss_and_grads(lambda: model(**batch, only_scored=True)[1])
    dense, dense_grads = loss_and_grads(
        lambda: model(batch["idx"], batch["targets"], batch["attention_mask"])[1])   # all T positions
    assert torch.allclose(sparse, dense, atol=1e-6)
    for g_sparse, g_dense in zip(sparse_grads, dense_grads):
        assert torch.allclose(g_sparse, g_dense, atol=1e-6)
    with torch.no_grad():
        sparse_logits, _ = model(batch["idx"], batch["targets"], batch["attention_mask"], only_scored=True)
        dense_logits, _ = model(batch["idx"], batch["targets"], batch["attention_mask"])
    scored = batch["targets"] != -100
    assert sparse_logits.shape == (scored.sum().item(), 320)
    assert torch.allclose(sparse_logits, dense_logits[scored], atol=1e-6)


def train_mlm_run(cfg):
    """train_clm's loop as train_mlm.py runs it: no causal mask, masked batches and evaluation."""
    return train_clm.train(cfg, causal=False, get_batch=train_mlm.get_mlm_batch, evaluate=train_mlm.evaluate_mlm)


def tiny_mlm_config(corpus, out_dir, **overrides):
    settings = dict(train_clm.PRESETS["tiny"], corpus=corpus, out_dir=str(out_dir), quiet=True,
                    precision="fp32", device="cpu")
    return MLMConfig(**dict(settings, **overrides))


def test_tiny_bidirectional_model_masked_loss_falls(corpus_file, tmp_path):
    cfg = tiny_mlm_config(corpus_file, tmp_path / "run", max_iters=30, eval_interval=10, lr=1e-2)
    result = train_mlm_run(cfg)
    uniform = torch.log(torch.tensor(256.0)).item()                  # 5.55 nats: the untrained guess
    assert result["val_loss"] < 0.6 * uniform                          # whole validation split
    train_losses = [r["train_loss"] for r in result["history"] if "train_loss" in r]
    assert max(train_losses[-3:]) < train_losses[0] - 0.5             # from step 5 to the end
    assert 0.0 <= result["unigram_acc"] <= result["val_acc"] + 0.05 and result["n_masked"] > 100
    checkpoint = plumbing.load_checkpoint(str(tmp_path / "run" / "ckpt.pt"))
    assert checkpoint["kind"] == "bidirectional"                      # and so the masked-LM objective
    assert checkpoint["model_config"]["causal"] is False
    assert checkpoint["train_config"]["mask_prob"] == 0.15
    records = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert records[-1]["final"] and "val_acc" in records[-1]


def test_resume_masks_exactly_as_the_uninterrupted_run(corpus_file, tmp_path, monkeypatch):
    # The masking draws from the loop's batch generator, whose state the checkpoint saves: a run
    # resumed from step 10 must see the same masks, hence the same losses, as one never stopped.
    real_save = plumbing.save_checkpoint

    def save_and_keep_step_10(path, payload):
        real_save(path, payload)
        if payload["state"]["step"] == 10:
            (tmp_path / "died").mkdir(exist_ok=True)
            (tmp_path / "died" / "ckpt.pt").write_bytes(open(path, "rb").read())

    monkeypatch.setattr(plumbing, "save_checkpoint", save_and_keep_step_10)
    straight = train_mlm_run(tiny_mlm_config(corpus_file, tmp_path / "a", max_iters=20))
    resumed = train_mlm_run(tiny_mlm_config(corpus_file, tmp_path / "died", max_iters=20, resume=True))
    after_10 = lambda result: [r["train_loss"] for r in result["history"] if r["step"] > 10 and "lr" in r]
    assert len(after_10(straight)) == 2 and after_10(resumed) == after_10(straight)
    assert resumed["val_loss"] == straight["val_loss"] and resumed["val_acc"] == straight["val_acc"]


def test_blanks_take_the_space_before_them(enc):
    ids = data.special_ids(enc)
    tokens = train_mlm.encode_with_blanks(enc, "ab [MASK]c<|mask|>", block_size=16)
    assert tokens == [ids["cls"], ord("a"), ord("b"), ids["mask"], ord("c"), ids["mask"]]
    with pytest.raises(data.UserError, match="no blank"):
        train_mlm.encode_with_blanks(enc, "no blank here", block_size=16)
    with pytest.raises(data.UserError, match="shorten"):
        train_mlm.encode_with_blanks(enc, "x" * 20 + "[MASK]", block_size=16)


def test_cli_trains_fills_and_compares_with_causal(corpus_file, tmp_path, capsys):
    common = ["--preset", "tiny", "--corpus", corpus_file, "--max-iters", "6", "--precision", "fp32",
              "--quiet"]
    train_mlm.main(common + ["--out-dir", str(tmp_path / "mlm")])
    out = capsys.readouterr().out
    accuracy = re.search(r"^masked-token accuracy: (\d+\.\d)%$", out, re.M)
    baseline = re.search(r"^unigram baseline: (\d+\.\d)%$", out, re.M)
    assert accuracy and baseline and 0 < float(baseline.group(1)) < 100

    train_mlm.main(["--fill", str(tmp_path / "mlm" / "ckpt.pt"), "--text", "the cat [MASK] the [MASK].",
                    "--top-k", "3"])
    out = capsys.readouterr().out
    assert out.startswith("input: the cat[MASK 1] the[MASK 2].")
    blanks = re.findall(r"^  blank \d: (.*)$", out, re.M)
    assert len(blanks) == 2 and all(line.count(" | ") == 2 for line in blanks)

    clm_settings = dict(train_clm.PRESETS["tiny"], corpus=corpus_file, max_iters=6, quiet=True,
                        out_dir=str(tmp_path / "clm"), precision="fp32")
    train_clm.train(train_clm.TrainConfig(**clm_settings))
    result = train_mlm.compare_causal(str(tmp_path / "clm" / "ckpt.pt"), str(tmp_path / "mlm" / "ckpt.pt"))
    assert result["n"] > 100 and result["left"] == result["right"] == 15
    # Both models are scored on the same windows: the difference is exactly the disagreements.
    assert result["bidirectional"] - result["causal"] == pytest.approx(
        (result["only_bidirectional"] - result["only_causal"]) / result["n"])
    with pytest.raises(data.UserError, match="causal model"):          # arguments swapped
        train_mlm.compare_causal(str(tmp_path / "mlm" / "ckpt.pt"), str(tmp_path / "clm" / "ckpt.pt"))
    with pytest.raises(data.UserError, match="causal model"):
        train_mlm.main(["--fill", str(tmp_path / "clm" / "ckpt.pt")])


def bidirectional_config(cfg, dataset):
    """The model train() builds for cfg: the flags' shape, the tokenizer's vocabulary."""
    config = train_clm.model_config(cfg, causal=False)
    return dataclasses.replace(config, vocab_size=padded_vocab_size(dataset.enc.n_vocab))


def test_validation_mask_ignores_training_knobs(corpus_file, tmp_path):
    """The fixed validation set scores the same positions whatever --batch-size, --mask-prob and
    --seed: otherwise runs that differ in those knobs would be marked on different tests. One
    model, scored under three settings, gets the same count of blanks and the same loss."""
    cfg = tiny_mlm_config(corpus_file, tmp_path / "unused")
    dataset = data.prepare_dataset(cfg.corpus, cfg.tokenizer, cache_dir=cfg.cache_dir, verbose=False)
    torch.manual_seed(0)
    model = Transformer(bidirectional_config(cfg, dataset)).eval()

    def scored(**overrides):
        with torch.no_grad():
            return train_mlm.evaluate_mlm(model, dataset, tiny_mlm_config(corpus_file, "", **overrides), None,
                                          torch.device("cpu"))
    first = scored()
    n_text = (len(dataset.val) // (cfg.block_size - 1)) * (cfg.block_size - 1)      # tokens in whole windows
    assert 0.13 < first["n_masked"] / n_text < 0.17                  # 15% of the text tokens
    for overrides in (dict(batch_size=3), dict(mask_prob=0.4, seed=7)):
        other = scored(**overrides)
        assert other["n_masked"] == first["n_masked"] and other["val_acc"] == first["val_acc"]
        assert abs(other["val_loss"] - first["val_loss"]) < 1e-5


class ShiftedReader(torch.nn.Module):
    """A stand-in model whose prediction at each position is the token `shift` places to its right
    (its hidden state is that token, one-hot; its head is the identity)."""
    def __init__(self, shift, block_size, vocab_size):
        super().__init__()
        self.shift, self.vocab_size = shift, vocab_size
        self.config = ModelConfig(vocab_size=vocab_size, block_size=block_size)

    def hidden_states(self, idx):
        return torch.nn.functional.one_hot(torch.roll(idx, -self.shift, dims=1), self.vocab_size).float()

    def lm_head(self, h):
        return h


def test_compare_causal_counts_on_a_hand_built_case(tmp_path, monkeypatch, capsys):
    """Text 'aab' repeated. The bidirectional stand-in reads the token 3 places right of the blank:
    in a period-3 text that is the blank itself, right every time. The causal one reads the token
    just left of the blank: right only where the blank is the second 'a' of 'aab'. Windows start
    every 4 tokens, so the blank takes all three phases; the counts follow by hand."""
    (tmp_path / "aab.txt").write_text("aab" * 2000)
    corpus = str(tmp_path / "aab.txt")
    for out, config, run in (("mlm", MLMConfig, train_mlm_run), ("clm", train_clm.TrainConfig, train_clm.train)):
        run(config(**dict(train_clm.PRESETS["tiny"], corpus=corpus, out_dir=str(tmp_path / out), quiet=True,
                          precision="fp32", device="cpu", max_iters=1, block_size=36, sample_tokens=0)))
    stand_ins = {True: ShiftedReader(0, 36, 260), False: ShiftedReader(3, 36, 260)}
    monkeypatch.setattr(train_mlm.Transformer, "from_checkpoint",
                        staticmethod(lambda checkpoint: stand_ins[checkpoint["model_config"]["causal"]]))
    result = train_mlm.compare_causal(str(tmp_path / "clm" / "ckpt.pt"), str(tmp_path / "mlm" / "ckpt.pt"))
    val = "aab" * 2000
    val = val[int(len(val) * 0.9):]                       # the validation split: the last 10%
    starts = range(0, len(val) - 35 + 1, 35 // 8)         # windows of 35 tokens, every 4
    blanks = [s + 17 for s in starts]                     # the middle of each window
    second_a = sum(val[b] == "a" and val[b - 1] == "a" for b in blanks)
    assert result["n"] == len(blanks) and (result["left"], result["right"]) == (17, 17)
    assert result["bidirectional"] == 1.0 and result["causal"] == second_a / len(blanks)
    assert result["only_bidirectional"] == len(blanks) - second_a and result["only_causal"] == 0
    assert result["unigram"] == sum(val[b] == "a" for b in blanks) / len(blanks)   # 'a' is most frequent
    train_mlm.print_comparison(result)
    b, n = len(blanks) - second_a, len(blanks)
    assert f"difference: {100 * b / n:+.1f} points (+/- {100 * (b - b * b / n) ** 0.5 / n:.1f}, paired" \
        in capsys.readouterr().out


def test_masked_lm_bits_per_byte_count_the_masked_tokens_own_bytes(corpus_file):
    """With a BPE a masked token spells several bytes: bits per byte is the loss per masked token
    over ln 2, divided by the bytes per masked token, which lie near the split's own bytes per token
    (counting tokens, or swapping the two counts, would put them at 1 or below)."""
    cfg = tiny_mlm_config(corpus_file, "", tokenizer="bpe:300")
    dataset = data.prepare_dataset(cfg.corpus, cfg.tokenizer, cache_dir=cfg.cache_dir, verbose=False)
    torch.manual_seed(0)
    model = Transformer(bidirectional_config(cfg, dataset)).eval()
    with torch.no_grad():
        result = train_mlm.evaluate_mlm(model, dataset, cfg, None, torch.device("cpu"))
    bytes_per_masked_token = result["val_loss"] / math.log(2) / result["val_bpb"]
    split_bytes_per_token = dataset.meta["val_bytes"] / dataset.meta["n_val_tokens"]
    assert split_bytes_per_token > 1.5
    assert bytes_per_masked_token == pytest.approx(split_bytes_per_token, rel=0.25)
    assert result["val_bpc"] == pytest.approx(result["val_bpb"] * dataset.meta["val_bytes"] / dataset.meta["val_chars"])
