"""Tests for finetune.py: pooling reads only real tokens, LoRA starts exactly at the pretrained model
and merges exactly, frozen parameters stay frozen, a tiny model learns a separable task, and the
command line (single run, forgetting, sweep, export) works end to end on tiny data.

That the pydocs-topic dev/test docstrings are absent from the pydocs pretraining text is checked
once, in tests/test_data.py::test_pydocs_topic_is_balanced_disjoint_and_held_out_of_pretraining.
"""
import copy
import dataclasses
import json
import math
import random
import shutil

import pytest
import torch
import torch.nn.functional as F

import data
import plumbing
import finetune
import tasks
import prompting
import train_clm
import train_mlm
import transfer
from conftest import generated_text
from finetune import FinetuneConfig, LoRALinear, make_classifier, merge_lora, pool
from model import ModelConfig, Transformer, padded_vocab_size

ENC = data.get_tokenizer("bytes")
PAD = data.special_ids(ENC)["pad"]
DEVICE = torch.device("cpu")


def tiny_body(causal=True, seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=ENC.n_vocab, block_size=64, n_layer=2, n_head=2,
                                   n_embd=32, causal=causal))


def tiny_config(**overrides):
    settings = dict(epochs=1, min_steps=20, batch_size=16, lr=3e-3, eval_points=0, max_len=64,
                    device="cpu", precision="fp32")
    return FinetuneConfig(**{**settings, **overrides})


def separable_set(n=240, seed=0):
    """Two classes with disjoint vocabularies: trivially separable."""
    rng = random.Random(seed)
    words = (["cat", "dog", "bird", "fish", "horse"], ["red", "blue", "green", "pink", "grey"])
    examples = [(" ".join(rng.choice(words[i % 2]) for _ in range(rng.randint(2, 6))), i % 2)
                for i in range(n)]
    cut1, cut2 = int(0.6 * n), int(0.8 * n)
    return tasks.LabelledSet("separable", examples[:cut1], examples[cut1:cut2], examples[cut2:],
                            label_names=["animal", "colour"])


def padded_batch(texts, cls_first=False):
    return tasks.collate(finetune.encode_texts(ENC, texts, 64, cls_first), PAD)


# ----------------------------------------------------------------------------- pooling

def test_pooling_reads_the_last_real_token_and_averages_only_real_tokens():
    torch.manual_seed(0)
    h = torch.randn(3, 5, 4)                                           # (B, T, C)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    lengths = mask.sum(1)
    last, mean = pool(h, mask, "last"), pool(h, mask, "mean")
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(last[b], h[b, n - 1])
        assert torch.allclose(mean[b], h[b, :n].mean(0))
    scrambled = h.masked_fill(~mask.bool().unsqueeze(-1), 1e3)         # garbage at the pads
    assert torch.equal(pool(scrambled, mask, "last"), last)
    assert torch.allclose(pool(scrambled, mask, "mean"), mean)
    assert torch.equal(pool(h, mask, "cls"), h[:, 0])


@pytest.mark.parametrize("causal, pooling", [(True, "auto"), (True, "last"), (False, "auto"), (False, "mean")])
def test_classifier_output_does_not_depend_on_padding(causal, pooling):
    classifier = make_classifier(tiny_body(causal), 3, tiny_config(pooling=pooling)).eval()
    texts = ["a short one", "a much longer text that forces padding on the first one"]
    alone = classifier(*padded_batch(texts[:1], cls_first=not causal))
    batched = classifier(*padded_batch(texts, cls_first=not causal))
    assert padded_batch(texts)[1][0].sum() < padded_batch(texts)[1][1].sum()    # really padded
    assert torch.allclose(alone[0], batched[0], atol=1e-5)
    assert classifier.pooling == {"auto": "mean" if causal else "cls"}.get(pooling, pooling)


def test_inputs_put_cls_first_for_bidirectional_models_and_truncate():
    cls = data.special_ids(ENC)["cls"]
    (bidirectional,) = finetune.encode_texts(ENC, ["hello world"], 6, cls_first=True)
    (causal,) = finetune.encode_texts(ENC, ["hello world"], 6, cls_first=False)
    assert bidirectional == [cls] + list(b"hello")
    assert causal == list(b"hello ")


def test_masked_lm_gives_the_top_cls_vector_no_gradient():
    """The masked loss never reads the final vector at CLS (finetune.py's docstring: pooling)."""
    body = tiny_body(causal=False)
    idx = torch.tensor([[data.special_ids(ENC)["cls"], *b"the cat sat"]])
    targets = torch.full_like(idx, -100)
    targets[0, [2, 5]] = idx[0, [2, 5]]                               # two masked positions
    idx = idx.masked_fill(targets != -100, data.special_ids(ENC)["mask"])
    h = body.hidden_states(idx)
    h.retain_grad()
    F.cross_entropy(body.lm_head(h)[0], targets[0], ignore_index=-100).backward()
    assert torch.equal(h.grad[0, 0], torch.zeros_like(h.grad[0, 0]))
    assert h.grad[0, 2].abs().sum() > 0


# ----------------------------------------------------------------------------- modes and LoRA

def snapshot(classifier):
    return {name: p.detach().clone() for name, p in classifier.named_parameters()}


def train_a_little(classifier, steps=15, **overrides):
    labelled = separable_set()
    sequences = finetune.encode_texts(ENC, [t for t, _ in labelled.train], 64, not classifier.body.config.causal)
    labels = [y for _, y in labelled.train]
    finetune.finetune(classifier, sequences, labels,
                      tiny_config(min_steps=steps, epochs=0, **overrides), PAD, DEVICE, log=lambda *a: None)


def test_lora_starts_exactly_at_the_pretrained_model_and_merges_exactly():
    body = tiny_body()
    plain = make_classifier(copy.deepcopy(body), 2, tiny_config(mode="frozen"))
    lora = make_classifier(copy.deepcopy(body), 2, tiny_config(mode="lora", lora_r=4))
    batch = padded_batch(["the cat", "a much longer sentence about a dog"])
    assert torch.equal(plain(*batch), lora(*batch))                   # B = 0: exactly the same
    before = snapshot(lora)
    train_a_little(lora, lr=1e-2)
    after = snapshot(lora)
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("head.") or n.endswith((".A", ".B")) for n in trainable)
    for name in before:
        assert torch.equal(before[name], after[name]) == (name not in trainable), name
    lora.eval()
    merged = merge_lora(copy.deepcopy(lora)).eval()
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert torch.allclose(merged(*batch), lora(*batch), atol=1e-5)
    assert not torch.allclose(lora(*batch), plain(*batch), atol=1e-3)  # and training did something
    fresh = Transformer(body.config)
    fresh.load_state_dict(merged.body.state_dict())                    # a plain Transformer again


@pytest.mark.parametrize("mode", ["frozen", "last-k"])
def test_frozen_parameters_do_not_change(mode):
    classifier = make_classifier(tiny_body(), 2, tiny_config(mode=mode, last_k=1))
    before = snapshot(classifier)
    train_a_little(classifier)
    after = snapshot(classifier)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    expected = {n for n, p in classifier.named_parameters() if p.requires_grad}
    assert changed == expected
    if mode == "frozen":
        assert expected == {"head.weight", "head.bias"}
    else:
        assert all(n.startswith(("head.", "body.blocks.1.", "body.final_norm.")) for n in expected)
        assert any(n.startswith("body.blocks.1.") for n in expected)


def test_lora_r8_trains_under_5_percent_of_the_cpu_preset_model():
    shape = train_clm.TrainConfig(**train_clm.PRESETS["cpu"])
    config = train_clm.model_config(shape, causal=True)
    body = Transformer(dataclasses.replace(config, vocab_size=padded_vocab_size(4100)))
    for targets in finetune.LORA_TARGETS:
        trainable, total = finetune.parameter_counts(
            make_classifier(body, 6, tiny_config(mode="lora", lora_r=8, lora_targets=targets)))
        assert 0 < trainable / total < 0.05
        body = Transformer(body.config)                               # add_lora changed it in place


# ----------------------------------------------------------------------------- learning and metrics

def test_tiny_model_fine_tunes_to_high_accuracy_on_a_separable_task():
    labelled = separable_set()
    result, _ = finetune.run_one(tiny_body(), ENC, labelled, labelled.train, tiny_config(min_steps=60),
                                 DEVICE, log=lambda *a: None)
    assert result["test"]["accuracy"] >= 0.95 and result["test"]["macro_f1"] >= 0.95
    baseline = tasks.bag_of_words_baseline(labelled.train, labelled.dev, labelled.test, 2)
    assert baseline["test"]["accuracy"] == 1.0


def test_accuracy_and_macro_f1_by_hand():
    # gold 0 0 1 1, predicted 0 1 1 1: F1(0) = 2*1/(2+0+1) = 2/3, F1(1) = 2*2/(4+1+0) = 4/5
    metrics = tasks.classification_metrics(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]))
    assert metrics["accuracy"] == 0.75
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    always_majority = tasks.classification_metrics([0] * 10, [0] * 9 + [1])
    assert always_majority["accuracy"] == pytest.approx(0.9)
    assert always_majority["macro_f1"] == pytest.approx((18 / 19) / 2)     # F1(1) = 0


# ----------------------------------------------------------------------------- command line

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """Tiny CLM and MLM checkpoints (trained once for the module, with their own cache dir) and a
    labelled TSV of sentences from the same grammar: 120 rows, so 96 train / 12 dev / 12 test."""
    folder = tmp_path_factory.mktemp("pretrained")
    (folder / "corpus.txt").write_text(generated_text())
    paths = {}
    for name, config_class, pretraining in (
            ("clm", train_clm.TrainConfig, dict(causal=True)),
            ("mlm", train_mlm.MLMConfig, dict(causal=False, get_batch=train_mlm.get_mlm_batch,
                                              evaluate=train_mlm.evaluate_mlm))):
        cfg = config_class(**{**train_clm.PRESETS["tiny"], "corpus": str(folder / "corpus.txt"),
                              "cache_dir": str(folder / "cache"), "out_dir": str(folder / name),
                              "quiet": True, "precision": "fp32", "device": "cpu", "max_iters": 10})
        paths[name] = (str(folder / name / "ckpt.pt"), train_clm.train(cfg, **pretraining)["val_loss"])
    rng = random.Random(1)
    rows = [f"{rng.choice(['the cat', 'a dog', 'a bird'] if y else ['my friend', 'the teacher'])} "
            f"{rng.choice(['sees', 'likes'])} the river.\t{'animal' if y else 'person'}"
            for y in [i % 2 for i in range(120)]]
    (folder / "labelled.tsv").write_text("\n".join(rows) + "\n")
    return dict(paths, tsv=str(folder / "labelled.tsv"))


def quick_flags(out_dir, precision="fp32"):
    return ["--min-steps", "6", "--epochs", "1", "--device", "cpu", "--precision", precision,
            "--eval-points", "2", "--out-dir", str(out_dir)]


def test_cli_single_runs_measure_forgetting(pretrained, tmp_path, capsys):
    runs = {}
    for which, mode in (("clm", "frozen"), ("clm", "lora"), ("clm", "full"), ("mlm", "frozen")):
        out = tmp_path / f"{which}-{mode}"
        finetune.main(["--checkpoint", pretrained[which][0], "--task", pretrained["tsv"], "--mode", mode,
                       "--forgetting", "--n-train", "40", "--lr", "1e-2", *quick_flags(out)])
        runs[which, mode] = json.loads((out / "results.json").read_text())
        assert (out / "curve.png").stat().st_size > 1000
        loss = runs[which, mode]["pretraining_loss"]
        assert loss["before"] == pytest.approx(pretrained[which][1], rel=1e-4)   # the script's own number
        assert (loss["after"] == loss["before"]) == (mode == "frozen")
        # The curve's last dev point is the reported dev score: the same model, scored once more.
        history = runs[which, mode]["history"]
        assert history[-1]["dev_accuracy"] == runs[which, mode]["dev"]["accuracy"]
    assert runs["mlm", "frozen"]["pooling"] == "cls" and runs["clm", "full"]["pooling"] == "mean"
    assert runs["clm", "lora"]["lora_merge_max_abs_diff"] < 1e-4
    assert runs["clm", "lora"]["trainable"] < runs["clm", "full"]["trainable"]
    assert runs["clm", "full"]["bag_of_words"]["test"]["accuracy"] > 0.5
    printed = capsys.readouterr().out
    assert "forgetting: pretraining val loss" in printed
    assert f"body: checkpoint {pretrained['mlm'][0]} (bidirectional, " in printed   # where the body came from


def test_cli_scratch_without_a_checkpoint_builds_the_preset_shape_with_the_asked_tokenizer(pretrained, tmp_path):
    """--init scratch with no --checkpoint: --preset gives the shape, --corpus/--tokenizer the vocabulary,
    --kind the mask."""
    corpus = str(tmp_path / "corpus.txt")
    (tmp_path / "corpus.txt").write_text(generated_text())
    finetune.main(["--init", "scratch", "--preset", "tiny", "--corpus", corpus, "--tokenizer", "bytes",
                   "--kind", "bidirectional", "--task", pretrained["tsv"], "--cache-dir", str(tmp_path / "cache"),
                   *quick_flags(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    tiny = train_clm.PRESETS["tiny"]
    expected = Transformer(ModelConfig(vocab_size=padded_vocab_size(ENC.n_vocab), causal=False,
                                       **{k: tiny[k] for k in ("n_layer", "n_head", "n_embd", "block_size")}))
    assert result["pooling"] == "cls"                                   # bidirectional: reads CLS
    assert result["total"] == expected.num_params(non_embedding=False) + 2 * tiny["n_embd"] + 2   # + the head


def test_cli_sweep_resumes_and_export_writes_only_training_text(pretrained, tmp_path, capsys):
    flags = ["--clm", pretrained["clm"][0], "--task", pretrained["tsv"], "--sizes", "8,all",
             "--seeds", "2", "--workers", "1", *quick_flags(tmp_path / "sweep", precision="auto")]
    transfer.main([*flags, "--methods", "scratch,mlm"])
    assert "skipping mlm" in capsys.readouterr().out
    with pytest.raises(data.UserError, match="holds a causal model, but a bidirectional one is needed"):
        transfer.main([*flags, "--mlm", pretrained["clm"][0]])             # its rows would say "mlm"
    transfer.main([*flags, "--mlm", pretrained["mlm"][0]])
    records = [json.loads(line) for line in (tmp_path / "sweep" / "sweep.jsonl").read_text().splitlines()]
    assert {(r["method"], r["n_train"], r["seed"]) for r in records} >= {
        (m, k, s) for m in ("bow", "scratch", "clm", "scratch-mlm", "mlm", "lora") for k in (8, 96)
        for s in (0, 1)}
    assert {(r["method"], r["n_train"]) for r in records} >= {("prompt", 0)}   # prompting's zero-shot row
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 1000
    table = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "| mlm |" in table and "(n=2)" in table and "macro-f1" in table
    assert "clm minus scratch," in table and "mlm minus scratch-mlm," in table and "lora minus scratch," in table
    assert "s left)" in capsys.readouterr().out
    transfer.main([*flags, "--mlm", pretrained["mlm"][0]])               # everything already done
    assert "0 runs to do" in capsys.readouterr().out
    results = tmp_path / "sweep" / "sweep.jsonl"
    edited = dict(records[-1], test=dict(records[-1]["test"], accuracy="0.9"))    # a record edited by hand
    results.write_text("".join(json.dumps(r) + "\n" for r in records[:-1] + [edited]))
    with pytest.raises(plumbing.UserError, match="sweep.jsonl: a record has no valid test.accuracy"):
        transfer.main([*flags, "--mlm", pretrained["mlm"][0]])

    export = ["--export-text", pretrained["tsv"], "-o", str(tmp_path / "train.txt")]
    finetune.main(export)
    labelled = tasks.load_labelled(pretrained["tsv"])
    assert (tmp_path / "train.txt").read_text().splitlines() == [t for t, _ in labelled.train]
    finetune.main(export)                                       # the same text again: a rerun, allowed
    (tmp_path / "train.txt").write_text("kept")                 # other text is replaced only if asked
    with pytest.raises(plumbing.UserError, match="already exists and holds other text; pass --overwrite"):
        finetune.main(export)
    assert (tmp_path / "train.txt").read_text() == "kept"
    finetune.main([*export, "--overwrite"])
    assert (tmp_path / "train.txt").read_text().splitlines() == [t for t, _ in labelled.train]


def test_prompt_scores_are_the_log_probability_of_each_word_after_the_whole_prompt():
    """Scored in pieces, right-padded, in batches: the same numbers as encoding each whole prompt
    string at once and reading log p(word | prompt) off the model, token by token."""
    text = generated_text(seed=3)
    enc = data.get_tokenizer("bpe:300", text=text)
    torch.manual_seed(0)
    body = Transformer(ModelConfig(vocab_size=320, block_size=256, n_layer=2, n_head=2, n_embd=32)).eval()
    demos, words = [("the cat sees the river.", 1), ("my friend likes  the book.", 0)], [" person", " animal"]
    texts = ["a dog reads a letter.", "the teacher paints\tthe garden and the river."]
    scores = prompting.prompt_scores(body, enc, demos, words, texts, 64, torch.device("cpu"), batch_size=3)
    n_text = data.n_ordinary(enc)
    for i, query in enumerate(texts):
        for c, word in enumerate(words):
            prompt = "".join(f"Text: {' '.join(t.split())}\nLabel:{words[y]}\n\n" for t, y in demos)
            prompt += f"Text: {' '.join(query.split())}\nLabel:"
            ids, word_ids = enc.encode_ordinary(prompt + word), enc.encode_ordinary(word)
            with torch.no_grad():
                logprobs = torch.log_softmax(body(torch.tensor([ids]))[0][0, :, :n_text].float(), -1)
            start = len(ids) - len(word_ids)
            expected = sum(logprobs[start - 1 + j, t].item() for j, t in enumerate(word_ids))
            assert scores[i, c].item() == pytest.approx(expected, abs=1e-4)


def test_prompts_fit_the_body_long_texts_are_cut_and_only_fitting_shot_counts_are_kept(capsys):
    """A body of 64 positions, byte tokens. Template pieces 'Text:' (5), '\\nLabel:' (7),
    '\\n\\nText:' (7); words ' animal' and ' colour' (7). With k demonstrations each text gets
    (64 - 5) // (k + 1) - 7 - 7 - 7 tokens: 38 at k = 0, 8 at k = 1, none at k = 4 or 8."""
    body, labelled = tiny_body().eval(), separable_set()
    cfg = tiny_config(max_len=64)
    assert prompting.shots_that_fit(body, ENC, labelled, (0, 1, 4, 8), cfg) == [0, 1]
    assert "only [0, 1] demonstrations fit the body's 64 positions" in capsys.readouterr().out
    words = prompting.verbalizers(labelled)
    assert [prompting.text_budget(body, ENC, k, words, 64) for k in (0, 1)] == [38, 8]
    # Texts far longer than the body reads are cut to the budget (a space, then budget - 1 bytes):
    # the scores equal those of the texts cut by hand, and no prompt overflows the 64 positions.
    demos = [("cat dog bird", 0)]
    long_texts = ["horse " * 200, "grey pink " * 150]
    cut = [text[:7] for text in long_texts]
    scores = prompting.prompt_scores(body, ENC, demos, words, long_texts, 64, DEVICE)
    assert torch.allclose(scores, prompting.prompt_scores(body, ENC, demos, words, cut, 64, DEVICE))
    with pytest.raises(plumbing.UserError, match="4 demonstrations do not fit"):
        prompting.prompt_scores(body, ENC, demos * 4, words, long_texts, 64, DEVICE)
    # More demonstrations than the training split holds: the error names the flag that asked.
    with pytest.raises(plumbing.UserError, match=r"use 1 <= --shots <= {}".format(len(labelled.train))):
        prompting.demonstrations(labelled.train, len(labelled.train) + 1, seed=0)


def test_majority_row_is_the_whole_training_splits_most_common_class(pretrained, tmp_path):
    """A balanced subsample of an imbalanced task has no majority: the floor must still be the class
    that is common in the task (here 3 in 4 rows), whatever the seed, not a tie broken by chance."""
    rows = [f"the river {'sees' if i % 4 else 'likes'} a cat.\t{'common' if i % 4 else 'rare'}"
            for i in range(160)]
    (tmp_path / "skewed.tsv").write_text("\n".join(rows) + "\n")
    for seed in ("0", "1", "2"):
        finetune.main(["--checkpoint", pretrained["clm"][0], "--task", str(tmp_path / "skewed.tsv"),
                       "--n-train", "8", "--seed", seed, *quick_flags(tmp_path / seed)])
        record = json.loads((tmp_path / seed / "results.json").read_text())
        assert record["majority_class"]["test"]["accuracy"] == pytest.approx(0.75)


def test_cli_prompting_scores_a_causal_body_and_refuses_a_bidirectional_one(pretrained, tmp_path, capsys):
    finetune.main(["--checkpoint", pretrained["clm"][0], "--task", pretrained["tsv"], "--mode", "prompt",
                   "--shots", "0", "--verbalizers", "animal=beast", "--out-dir", str(tmp_path / "p")])
    result = json.loads((tmp_path / "p" / "results.json").read_text())
    assert result["shots"] == 0 and result["verbalizers"] == [" beast", " person"] and result["trainable"] == 0
    assert "prompted (0 shots)" in capsys.readouterr().out
    # The run's test accuracy is the argmax of log p(word | prompt) over the classes, text by text.
    checkpoint, enc = train_clm.load_pretrained(pretrained["clm"][0])
    labelled = tasks.load_labelled(pretrained["tsv"])
    scores = prompting.prompt_scores(Transformer.from_checkpoint(checkpoint), enc, [], result["verbalizers"],
                                     [text for text, _ in labelled.test], 64, DEVICE)
    gold = torch.tensor([y for _, y in labelled.test])
    assert result["test"]["accuracy"] == pytest.approx((scores.argmax(dim=1) == gold).float().mean().item())
    with pytest.raises(SystemExit) as exit_info:
        plumbing.run_cli(lambda: finetune.main(["--checkpoint", pretrained["mlm"][0], "--task", pretrained["tsv"],
                                                "--mode", "prompt", "--out-dir", ""]))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "needs a causal" in err and err.count("\n") == 1
    with pytest.raises(data.UserError, match="--verbalizers"):
        prompting.verbalizers(tasks.load_labelled(pretrained["tsv"]), "robot=beep")
    with pytest.raises(data.UserError, match="animal and person are both scored by 'person'"):
        prompting.verbalizers(tasks.load_labelled(pretrained["tsv"]), "animal=person")


@pytest.mark.parametrize("edit", [lambda saved: saved.pop("corpus"), lambda saved: saved.update(batch_size="8"),
                                  lambda saved: saved.update(block_size=0), lambda saved: saved.update(data_dir=3)])
def test_forgetting_refuses_a_checkpoint_whose_saved_flags_were_edited(pretrained, tmp_path, capsys, edit):
    """--forgetting finds the pretraining text and scores on it by the run's saved flags: a ckpt.pt
    whose flags lack one (or hold a string for a number) is refused in one line, before any training."""
    checkpoint = torch.load(pretrained["clm"][0], weights_only=True)
    edit(checkpoint["train_config"])
    torch.save(checkpoint, tmp_path / "edited.pt")
    with pytest.raises(SystemExit) as exit_info:
        plumbing.run_cli(lambda: finetune.main(["--checkpoint", str(tmp_path / "edited.pt"), "--task",
                                                pretrained["tsv"], "--forgetting", *quick_flags(tmp_path / "out")]))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert f"{tmp_path / 'edited.pt'}: the run's saved flags have no valid train_config." in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint", "no/such/ckpt.pt"], "no checkpoint at"),
    ([], "--init pretrained needs --checkpoint"),
    (["--export-text", "sst2"], "needs -o FILE"),
    ([transfer], "give --clm CKPT"),
    ([transfer, "--clm", "no/such/ckpt.pt", "--methods", "clm,bogus"], "--methods: unknown bogus; choose from"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    script, argv = (argv[0], argv[1:]) if argv and argv[0] is transfer else (finetune, argv)
    with pytest.raises(SystemExit) as exit_info:
        plumbing.run_cli(lambda: script.main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1


def test_a_diverged_fine_tuning_run_stops_in_one_line_and_reports_nothing(pretrained, tmp_path):
    """A loss that became NaN leaves no accuracy worth printing (argmax of NaN scores is class 0):
    the run stops, as pretraining does, before any results are written."""
    with pytest.raises(data.UserError, match=r"loss became (nan|inf) at step \d+; nothing from that step"):
        finetune.main(["--checkpoint", pretrained["clm"][0], "--task", pretrained["tsv"], "--lr", "1e30",
                       *quick_flags(tmp_path / "out")])
    assert not (tmp_path / "out" / "results.json").exists()


def test_user_errors_for_impossible_settings():
    with pytest.raises(data.UserError, match="--last-k"):
        make_classifier(tiny_body(), 2, tiny_config(mode="last-k", last_k=5))
    with pytest.raises(data.UserError, match="--lora-r 32: the matrices LoRA adapts are 32 wide"):
        make_classifier(tiny_body(), 2, tiny_config(mode="lora", lora_r=32))
    make_classifier(tiny_body(), 2, tiny_config(mode="lora", lora_r=31))          # the largest low rank
    with pytest.raises(data.UserError, match="needs a bidirectional"):
        make_classifier(tiny_body(), 2, tiny_config(pooling="cls"))
    with pytest.raises(data.UserError, match="--sizes"):
        plumbing.parse_sizes("32,abc", 100)
    assert plumbing.parse_sizes("32,128,all,4096", 100) == [32, 100]


def test_lora_merges_into_a_layer_on_the_base_weights_device_and_dtype():
    """The merged layer is built where the base weight is, in its dtype: a bf16 base gives a bf16
    layer (it used to be a new fp32 layer on the CPU, which a GPU's inputs then could not reach)."""
    base = torch.nn.Linear(8, 4).to(torch.bfloat16)
    lora = LoRALinear(base, r=2, alpha=4)
    torch.nn.init.normal_(lora.B)                     # as after training: the update is not zero
    merged = lora.merged()
    assert merged.weight.dtype == torch.bfloat16 and merged.weight.device == base.weight.device
    expected = base.weight.float() + lora.scale * (lora.B @ lora.A).detach()
    assert torch.allclose(merged.weight.float(), expected, atol=3e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):       # as fine-tuning runs it
        x = torch.randn(3, 8)
        assert torch.allclose(merged(x).float(), lora(x).float(), atol=5e-2)


def test_transfer_curve_fine_tunes_every_kept_body_with_scratch_at_zero_compute(pretrained, tmp_path, capsys):
    """transfer.py --curve: a run folder's kept checkpoints and its final one, each fine-tuned, and
    scratch at zero compute, which is the same shape with random weights drawn by the same seed
    (so it equals finetune.py's own scratch run). A second run of the same kind (a wider body, no
    kept checkpoints) is a line of its own, named by its folder, with its own scratch."""
    folder, wide = tmp_path / "clm", tmp_path / "clm-wide"
    corpus = str(tmp_path / "corpus.txt")
    (tmp_path / "corpus.txt").write_text(generated_text())
    for out_dir, extra in ((folder, dict(keep="0.5")), (wide, dict(n_embd=48))):
        train_clm.train(train_clm.TrainConfig(**{**train_clm.PRESETS["tiny"], "corpus": corpus, "out_dir": str(out_dir),
                                                 "quiet": True, "precision": "fp32", **extra}))
    out = tmp_path / "curve"
    transfer.main(["--curve", "--clm", f"{folder},{wide}", "--task", pretrained["tsv"], "--sizes", "16",
                   "--seeds", "1", "--workers", "2", *quick_flags(out)])
    records = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert {r["method"] for r in records} == {"bow", "clm@0", "clm@10", "clm@20", "clm-wide@0", "clm-wide@20"}
    table = (out / "curve.md").read_text()
    assert "| clm (scratch) | 0 | 0 |" in table and "| clm | 10 |" in table and (out / "curve.png").stat().st_size > 1000
    assert "| clm-wide (scratch) | 0 | 0 |" in table and "| clm-wide | 20 |" in table
    assert "- clm, 16 labels: " in table and "3 runs from" in table    # the trend: both runs' bodies
    with pytest.raises(data.UserError, match="the same name"):       # two lines may not share a name
        transfer.main(["--curve", "--clm", f"{folder},{folder}", "--task", pretrained["tsv"], "--out-dir", str(out)])
    with pytest.raises(data.UserError, match="holds a causal model, but a bidirectional one is needed"):
        transfer.main(["--curve", "--mlm", str(folder), "--task", pretrained["tsv"], "--out-dir", str(out)])
    with pytest.raises(data.UserError, match="--out-dir '': a sweep keeps its results in a folder"):
        transfer.main(["--curve", "--clm", str(folder), "--task", pretrained["tsv"], "--out-dir", ""])
    edited = tmp_path / "edited"                        # a kept checkpoint without its loss: one line
    shutil.copytree(folder, edited)
    kept = plumbing.load_checkpoint(str(edited / "ckpt-step10.pt"))
    plumbing.save_checkpoint(str(edited / "ckpt-step10.pt"), dict(kept, metrics={}))
    with pytest.raises(data.UserError, match=r"ckpt-step10\.pt has no valid metrics\.val_loss: --curve places"):
        transfer.main(["--curve", "--clm", str(edited), "--task", pretrained["tsv"], "--out-dir", str(out)])
    scratch = next(r for r in records if r["method"] == "clm@0")
    checkpoint, enc = train_clm.load_pretrained(str(folder / "ckpt.pt"))
    labelled = tasks.load_labelled(pretrained["tsv"])
    alone, _ = finetune.run_one(finetune.body_from(checkpoint, "scratch", 0), enc, labelled,
                                tasks.subsample_balanced(labelled.train, 16, 0),
                                FinetuneConfig(min_steps=6, epochs=1, device="cpu", precision="fp32", eval_points=0),
                                DEVICE, log=lambda *a: None)
    assert scratch["test"] == alone["test"]
    kept = train_clm.load_pretrained(str(folder / "ckpt-step10.pt"))[0]["state"]
    assert kept["flops"] == Transformer.from_checkpoint(checkpoint).flops_per_token() * kept["tokens"]


@pytest.mark.parametrize("presets, causal", [(train_clm.PRESETS, True), (train_mlm.MLM_PRESETS, False)])
def test_large_preset_extends_the_transfer_curve_two_decades_past_the_main_job(presets, causal):
    """The GPU preset for the curve's top spends 100-1000x the default preset's pretraining FLOPs
    (the README's estimate: about 250x and 200x), counted as a run counts them."""
    def pretraining_flops(name):
        cfg = (train_clm.TrainConfig if causal else train_mlm.MLMConfig)(**presets[name])
        config = train_clm.model_config(cfg, causal)                                  # as train() builds it,
        vocab_size = padded_vocab_size(4096 + len(data.SPECIAL_TOKENS))             # with bpe:4096's tokens
        with torch.device("meta"):                  # the shape alone: no 88M weights allocated
            model = Transformer(dataclasses.replace(config, vocab_size=vocab_size))
        return model.flops_per_token() * cfg.max_iters * cfg.batch_size * cfg.block_size
    assert 100 <= pretraining_flops("large") / pretraining_flops("cpu") <= 1000


def test_log_trend_recovers_a_known_slope_and_brackets_it_when_noisy():
    flops = [1e11, 1e11, 1e12, 1e12, 1e13, 1e13]
    exact = [0.3 + 0.1 * (math.log10(f) - 11) for f in flops]      # +0.1 accuracy per decade
    assert transfer.log_trend(flops, exact) == pytest.approx((0.1, 0.1, 0.1))
    noisy = [a + e for a, e in zip(exact, [0.03, -0.03, 0.02, -0.02, 0.04, -0.04])]   # mean unmoved
    slope, low, high = transfer.log_trend(flops, noisy)
    assert slope == pytest.approx(0.1) and low < 0.1 < high and high - low < 0.1
