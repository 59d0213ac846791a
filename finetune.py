"""Fine-tuning: one costly pretraining run, then cheap specialisation with few labels.

Pretraining (train_clm.py, train_mlm.py) turns unlabelled text into a body f that maps a text of
T tokens to T vectors, h = f(x), shape (T, C). A classifier for K classes adds two small pieces:

    p(y | x) = softmax(W pool(f(x)) + b)            W: (K, C), b: (K,)

and minimises cross-entropy on labelled pairs (x, y). The claim under test (Howard & Ruder 2018;
Radford et al. 2018; Devlin et al. 2019): starting f from pretrained weights instead of random ones
reaches a given accuracy with far fewer labels. This file measures that instead of asserting it.

Pooling: which vectors of h the head reads.
    causal model          the LAST non-pad token: under a causal mask it is the only position that
                          has read the whole text (GPT-1 reads its final token the same way).
    bidirectional model   the CLS token at position 0 (default, as BERT), or the MEAN over non-pad
        tokens. A surprise worth knowing: masked-LM pretraining never trains the top CLS vector.
        The masked loss scores only the masked positions and CLS is never masked, so nothing the
        loss sees reads the final vector at CLS: its gradient is exactly zero for the whole of
        pretraining (a test checks this; BERT trains it with next-sentence prediction, which we
        do not have). We first made the mean the default for that reason. Measured, CLS wins
        after fine-tuning all the same (pydocs-topic, 256 labels, 3 seeds: 0.767 against 0.685
        for the mean; README): the lower layers' CLS states are trained, since every token
        attends to them, and fine-tuning needs only to teach the top layer to summarise into it.
        From random weights it is the other way round (0.577 against 0.629).

Modes: which parameters move.
    full      everything: the strongest, and the one that can forget pretraining
    last-k    the top k blocks, the final norm and the head; lower layers hold the most general
              features (Yosinski et al. 2014; Howard & Ruder 2018), so freezing them costs little
    frozen    the head alone: a linear probe of what pretraining put in the vectors
    lora      low-rank adaptation (Hu et al. 2021). Each adapted matrix W0 (out, in) stays frozen
              and learns a low-rank update:
                  h = W0 x + (alpha / r) B A x        A: (r, in) random, B: (out, r) zero
              B = 0 makes the update exactly zero at the start, so training starts exactly at the
              pretrained model; only A, B and the head train, r (in + out) numbers per matrix
              instead of in * out. After training, W = W0 + (alpha / r) B A is one plain matrix
              again (merge_lora): the same outputs at no extra cost at inference.

Prompting (--mode prompt): the third route to a task, next to full and parameter-efficient
fine-tuning, and the only one with no gradient step. A causal body reads K labelled examples
written out as text, then the query, and the class whose word it finds likeliest next wins
(GPT-3, Brown et al. 2020). It is unique to causal bodies, and it needs scale: section 6.

What is measured: accuracy and macro-F1 (the mean of per-class F1, which a classifier that always
says "ham" cannot fake on imbalanced spam) on dev and test; a bag-of-words logistic regression on
the same examples, so a reader sees what the Transformer buys, and the majority class, the floor;
forgetting, the body's own pretraining validation loss before and after fine-tuning; and --sweep,
test accuracy against the number of labels for scratch, CLM, MLM, LoRA and prompting, 3+ seeds.

Bodies: a checkpoint of train_clm.py or train_mlm.py, or GPT-2 itself (`--checkpoint gpt2`, or a
Hugging Face GPT-2 folder), read by plumbing.load_checkpoint into the same format.

Read in this order: 0. labelled sets; 1. inputs and pooling; 2. the classifier, the modes and
LoRA; 3. bodies (pretrained or scratch); 4. the fine-tuning loop and its metrics; 5. the
bag-of-words baseline; 6. prompting; 7. forgetting; 8. one run; 9. the sweep; 10. the command line.

    python finetune.py --checkpoint out/clm/ckpt.pt --n-train 256          # CLM, full fine-tuning
    python finetune.py --checkpoint out/clm/ckpt.pt --init scratch         # same shape, random
    python finetune.py --checkpoint out/mlm/ckpt.pt --mode lora --forgetting
    python finetune.py --checkpoint out/clm/ckpt.pt --mode prompt --shots 4  # no gradient step
    python finetune.py --sweep --clm out/clm/ckpt.pt --mlm out/mlm/ckpt.pt # the paradigm in a picture
"""
import copy
import dataclasses
import json
import math
import os
import random
import re
import time
import types
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

import data
import plumbing
import train_clm
import train_mlm
from model import ModelConfig, Transformer
from plumbing import UserError, knob


# ----------------------------------------------------------------------------------------------
# 0. Labelled sets: (text, label) pairs in train, dev and test splits.

@dataclass
class LabelledSet:
    name: str
    train: list        # [(text, label id)]
    dev: list
    test: list
    label_names: list  # label id -> name


def read_tsv(path, label_first=False):
    """[(text, label string)] from `text<TAB>label` lines (`label<TAB>text` if label_first).
    Blank lines are skipped; any other line without both parts is an error naming its number."""
    rows, bad = [], []
    for number, line in enumerate(plumbing.read_text(path).split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        if label_first:
            label, tab, text = line.partition("\t")
        else:
            text, tab, label = line.rpartition("\t")  # last column is the label; text may hold tabs
        if not (tab and text.strip() and label.strip()):
            bad.append(number)
        elif not rows and is_header(text, label):
            continue              # a header line names the columns: it is not an example
        rows.append((text.strip(), label.strip()))
    if bad:
        raise UserError(f"{path}: malformed line(s) {', '.join(map(str, bad[:5]))}"
                        f"{' ...' if len(bad) > 5 else ''}; each line must be "
                        f"{'label<TAB>text' if label_first else 'text<TAB>label'}, both non-empty")
    if not rows:
        raise UserError(f"{path} has no rows; add text<TAB>label lines")
    return rows


def is_header(text, label):
    """`text<TAB>label` (or `sentence<TAB>label`, as GLUE's files begin): column names, not data."""
    return (text.strip().lower() in ("text", "sentence", "message", "sms")
            and label.strip().lower() in ("label", "labels", "class", "category"))


def stratified_split(rows, name, seed=0):
    """No official split: 80/10/10 within each class (seeded), so every split keeps the class mix."""
    label_names = sorted({label for _, label in rows})
    if len(label_names) < 2:
        raise UserError(f"{name}: only one label ({label_names[0]}); a classifier needs at least two")
    rng, splits = random.Random(seed), {"train": [], "dev": [], "test": []}
    for k, label in enumerate(label_names):
        examples = [(text, k) for text, lab in rows if lab == label]
        rng.shuffle(examples)
        n_train, n_dev = round(0.8 * len(examples)), round(0.1 * len(examples))
        splits["train"] += examples[:n_train]
        splits["dev"] += examples[n_train:n_train + n_dev]
        splits["test"] += examples[n_train + n_dev:]
    if not (splits["dev"] and splits["test"]):
        raise UserError(f"{name}: {len(rows)} rows are too few for an 80/10/10 split; add more rows")
    for examples in splits.values():
        rng.shuffle(examples)
    return LabelledSet(name, label_names=label_names, **splits)


def load_labelled(name, data_dir=None, cache_dir=None):
    """"pydocs-topic" (offline), "sst2", "sms-spam", or a path to a text<TAB>label .tsv file."""
    if name == "pydocs-topic":
        stored = json.loads(data.pydocs_paths(cache_dir)[1].read_text("utf-8"))
        return LabelledSet(name, *([tuple(e) for e in stored[s]] for s in ("train", "dev", "test")),
                           label_names=stored["label_names"])
    if name == "sst2":  # the official split (Socher et al. 2013, sentence level): labels 0/1
        splits = {}
        for split in ("train", "dev", "test"):
            path = plumbing.obtain_data_file(f"sst2/{split}.tsv", data_dir, cache_dir)
            rows = read_tsv(path)
            if any(label not in ("0", "1") for _, label in rows):
                raise UserError(f"{path}: labels must be 0 or 1; use the original SST-2 files")
            splits[split] = [(text, int(label)) for text, label in rows]
        return LabelledSet(name, label_names=["negative", "positive"], **splits)
    if name == "sms-spam":  # UCI SMS Spam Collection (Almeida & Hidalgo 2011): ham|spam<TAB>text
        path = plumbing.obtain_data_file("sms_spam/SMSSpamCollection", data_dir, cache_dir)
        return stratified_split(read_tsv(path, label_first=True), name)
    if Path(name).is_file():
        return stratified_split(read_tsv(name), name)
    raise UserError(f"unknown labelled set {name!r} (or no such file); use pydocs-topic, sst2, "
                    f"sms-spam, or a path to a text<TAB>label .tsv file")


def subsample_balanced(examples, k, seed=0):
    """k examples, as equal as possible across classes (round robin over shuffled classes)."""
    if not 1 <= k <= len(examples):
        raise UserError(f"cannot take {k} examples from {len(examples)}; use 1 <= --n-train <= {len(examples)}")
    rng = random.Random(seed)
    by_label = [[e for e in examples if e[1] == label] for label in sorted({e[1] for e in examples})]
    for group in by_label:
        rng.shuffle(group)
    picked, i = [], 0
    while len(picked) < k:
        picked += [group[i] for group in by_label if i < len(group)][:k - len(picked)]
        i += 1
    rng.shuffle(picked)
    return picked


# ----------------------------------------------------------------------------------------------
# 1. Inputs and pooling.

def encode_texts(enc, texts, max_len, cls_first):
    """One list of token ids per text, cut to max_len. Bidirectional models read [CLS] + text,
    as they were pretrained (train_mlm.py puts CLS first); causal models read the text alone."""
    prefix = [data.special_ids(enc)["cls"]] if cls_first else []
    eot = data.special_ids(enc)["eot"]
    return [((prefix + ids)[:max_len] or [eot]) for ids in enc.encode_ordinary_batch(list(texts))]


def encode_examples(enc, examples, max_len, body):
    """[(text, label)] -> (token id lists, labels), the way `body` reads them."""
    max_len = min(max_len, body.config.block_size)
    texts, labels = [t for t, _ in examples], [y for _, y in examples]
    return encode_texts(enc, texts, max_len, not body.config.causal), labels


def collate(sequences, pad_id):
    """Right-pad to the longest sequence: idx (B, T) and attention_mask (B, T), 1 = real token.
    Padding to the batch's longest, not to max_len, keeps short texts cheap."""
    T = max(len(s) for s in sequences)
    idx = torch.full((len(sequences), T), pad_id, dtype=torch.long)          # (B, T)
    attention_mask = torch.zeros((len(sequences), T), dtype=torch.long)      # (B, T)
    for row, ids in enumerate(sequences):
        idx[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = 1
    return idx, attention_mask


def pool(h, attention_mask, how):
    """(B, T, C) -> (B, C), reading only real tokens (right padding)."""
    if how == "last":
        last = attention_mask.sum(dim=1) - 1                                 # (B,) last real index
        return h[torch.arange(h.size(0), device=h.device), last]             # (B, C)
    if how == "mean":
        weights = attention_mask.unsqueeze(-1).to(h.dtype)                   # (B, T, 1)
        return (h * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)    # (B, C)
    if how == "cls":
        return h[:, 0]                                                       # (B, C)
    raise UserError(f"unknown pooling {how!r}; use auto, last, mean or cls")


# ----------------------------------------------------------------------------------------------
# 2. The classifier, the modes, and LoRA.

class Classifier(nn.Module):
    """The pretrained body, a pooling rule and one new linear layer, the head: (B, T) ids ->
    (B, K) class scores. The head is the only part that starts from nothing; it is what even a
    frozen body trains."""

    def __init__(self, body: Transformer, n_classes, pooling):
        super().__init__()
        self.body = body
        self.pooling = pooling
        self.head = nn.Linear(body.config.n_embd, n_classes)
        nn.init.normal_(self.head.weight, std=0.02)          # the body's own init scale (GPT-2)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx, attention_mask):
        h = self.body.hidden_states(idx, attention_mask)                     # (B, T, C)
        return self.head(pool(h, attention_mask, self.pooling))              # (B, K)


class LoRALinear(nn.Module):
    """W0 x + (alpha / r) B A x around a frozen nn.Linear (Hu et al. 2021, eq. 3)."""

    def __init__(self, base: nn.Linear, r, alpha):
        super().__init__()
        self.base = base
        self.scale = alpha / r     # dividing by r keeps the update's size steady when r changes
        self.A = nn.Parameter(torch.empty(r, base.in_features))                # (r, in)
        self.B = nn.Parameter(torch.zeros(base.out_features, r))               # (out, r): zero
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))     # nn.Linear's own init, as loralib

    def forward(self, x):                                                      # (..., in)
        return self.base(x) + (x @ self.A.T @ self.B.T) * self.scale           # (..., out)

    def merged(self):
        """One nn.Linear with W = W0 + (alpha / r) B A: the same function, no extra cost."""
        linear = nn.Linear(self.base.in_features, self.base.out_features,
                           bias=self.base.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(self.base.weight + self.scale * self.B @ self.A)
            if self.base.bias is not None:
                linear.bias.copy_(self.base.bias)
        return linear


LORA_TARGETS = {"attn": ("attn.qkv", "attn.proj"),
                "all": ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")}   # all: Dettmers et al. 2023


def add_lora(body, r, alpha, targets="all"):
    """Wrap the chosen matrices of every block in LoRALinear (in place)."""
    for block in body.blocks:
        for path in LORA_TARGETS[targets]:
            parent_name, name = path.split(".")
            parent = getattr(block, parent_name)
            setattr(parent, name, LoRALinear(getattr(parent, name), r, alpha))


def merge_lora(module):
    """Replace every LoRALinear by its merged nn.Linear (in place): a plain Transformer again."""
    for name, child in module.named_children():
        if isinstance(child, LoRALinear):
            setattr(module, name, child.merged())
        else:
            merge_lora(child)
    return module


MODES = ("full", "last-k", "frozen", "lora", "prompt")


def apply_mode(classifier, cfg):
    """Set requires_grad for cfg.mode (inserting LoRA first); the optimiser gets only these."""
    body = classifier.body
    if cfg.mode not in MODES:
        raise UserError(f"unknown mode {cfg.mode!r}; use {', '.join(MODES)}")
    if cfg.mode == "last-k" and not 1 <= cfg.last_k <= body.config.n_layer:
        raise UserError(f"--last-k {cfg.last_k}: the model has {body.config.n_layer} blocks; "
                        f"use 1 <= --last-k <= {body.config.n_layer}")
    if cfg.mode == "lora":
        if cfg.lora_r < 1 or cfg.lora_targets not in LORA_TARGETS:
            raise UserError(f"LoRA needs --lora-r >= 1 and --lora-targets in {', '.join(LORA_TARGETS)}")
        add_lora(body, cfg.lora_r, cfg.lora_alpha, cfg.lora_targets)
    for name, parameter in body.named_parameters():
        parameter.requires_grad = (cfg.mode == "full" or
                                   (cfg.mode == "lora" and name.rsplit(".", 1)[-1] in ("A", "B")))
    if cfg.mode == "last-k":
        for module in [*body.blocks[-cfg.last_k:], body.final_norm]:
            module.requires_grad_(True)
    return classifier


def parameter_counts(classifier):
    """(trainable, total) where total is the model being adapted: body + head, LoRA excluded."""
    trainable = sum(p.numel() for p in classifier.parameters() if p.requires_grad)
    total = sum(p.numel() for name, p in classifier.named_parameters()
                if name.rsplit(".", 1)[-1] not in ("A", "B"))
    return trainable, total


# ----------------------------------------------------------------------------------------------
# 3. Bodies: a pretrained checkpoint, or the same architecture from random weights.

def read_checkpoint(path, data_dir=None, cache_dir=None):
    """A pretraining checkpoint, gpt2 or a GPT-2 folder (plumbing's one reader: data only,
    checked), and its tokenizer."""
    checkpoint = plumbing.load_checkpoint(path, data_dir=data_dir, cache_dir=cache_dir)
    checkpoint.pop("optimizer", None)                          # not needed here: free the memory
    enc = data.tokenizer_from_state(checkpoint["tokenizer_state"])
    plumbing.check_compatible(checkpoint, enc)                # the rebuilt vocabulary is the saved one
    return checkpoint, enc


def body_from(checkpoint, init, seed):
    """The checkpoint's weights, or (init="scratch") random weights in exactly its architecture:
    the fair comparison."""
    if init == "pretrained":
        return plumbing.model_from_checkpoint(checkpoint)
    torch.manual_seed(seed)
    return Transformer(ModelConfig(**checkpoint["model_config"]))


def scratch_from_flags(args, seed):
    """No checkpoint: the tokenizer from --corpus/--tokenizer, the shape from --preset."""
    dataset = data.prepare_dataset(args.corpus, args.tokenizer, args.data_dir, args.cache_dir, verbose=False)
    shape = train_clm.TrainConfig(**{**train_clm.PRESETS[args.preset], "corpus": args.corpus,
                                     "tokenizer": args.tokenizer})
    torch.manual_seed(seed)
    model_config = train_clm.make_model_config(shape, dataset.enc, args.kind == "causal")
    return Transformer(model_config), dataset.enc


def make_classifier(body, n_classes, cfg):
    """Body + pooling + head, with cfg.mode applied. Seeded here, so that for one seed the head
    (and LoRA's A) start the same whether the body is pretrained or random."""
    pooling = cfg.pooling if cfg.pooling != "auto" else ("last" if body.config.causal else "cls")
    if pooling == "cls" and body.config.causal:
        raise UserError("--pooling cls needs a bidirectional model: under a causal mask the first "
                        "token sees only itself; use last (the default for causal models)")
    torch.manual_seed(cfg.seed)
    return apply_mode(Classifier(body, n_classes, pooling), cfg)


# ----------------------------------------------------------------------------------------------
# 4. Fine-tuning and its metrics.

@dataclass
class FinetuneConfig:
    mode: str = knob("full", "full, last-k, frozen (head only) or lora: which parameters train; or prompt: "
                             "none, the body reads --shots labelled examples in its prompt")
    shots: int = knob(4, "with --mode prompt: demonstrations per prompt, balanced and seeded", "[0, inf)")
    verbalizers: Optional[str] = knob(None, "with --mode prompt: LABEL=WORD,... the word each class is "
                                            "scored by (None: the class names)")
    last_k: int = knob(2, "with --mode last-k: how many top blocks train", "[1, inf)")
    lora_r: int = knob(8, "LoRA rank r", "[1, inf)")
    lora_alpha: float = knob(16.0, "LoRA alpha: the update is scaled by alpha / r", "(0, inf)")
    lora_targets: str = knob("all", "LoRA on attention (attn: qkv, proj) or on every block matrix (all)")
    pooling: str = knob("auto", "auto (last for causal, cls for bidirectional), last, mean or cls")
    n_train: Optional[int] = knob(None, "train on K labelled examples, balanced and seeded (None: all "
                                        "of the train split)", "[1, inf)")
    max_len: int = knob(64, "tokens per text, longer texts are cut (64 keeps a docstring's summary "
                            "and more; 128 costs twice as much)", "[2, inf)")
    epochs: float = knob(3.0, "passes over the labelled training examples", "(0, inf)")
    min_steps: int = knob(50, "at least this many steps, so that tiny label sets still train", "[1, inf)")
    batch_size: int = knob(16, "examples per step", "[1, inf)")
    lr: Optional[float] = knob(None, "peak learning rate (None: 1e-3 full/last-k, 5e-3 lora, 1e-2 frozen)",
                               "(0, inf)")
    min_lr: float = knob(0.0, "final learning rate (BERT decays to zero); at most the peak", "[0, inf)")
    warmup: float = knob(0.1, "warmup as a fraction of the steps (BERT: a tenth)", "[0, 1)")
    weight_decay: float = knob(0.01, "AdamW weight decay on matrices (BERT fine-tuning's 0.01)", "[0, inf)")
    beta1: float = knob(0.9, "AdamW beta1", "[0, 1)")
    beta2: float = knob(0.999, "AdamW beta2 (BERT's; short runs need no 0.95)", "[0, 1)")
    grad_clip: float = knob(1.0, "clip the global gradient norm to this (0: off)", "[0, inf)")
    eval_points: int = knob(5, "dev evaluations during training, for the curve (0: only at the end)",
                            "[0, inf)")
    seed: int = knob(0, "seed for the subsample, the head, LoRA, scratch weights and batch order", "[0, inf)")
    device: str = knob("auto", "auto (cuda, then mps, then cpu), cuda, cuda:N, mps or cpu")
    precision: str = knob("auto", "auto (time fp32 and bf16 on this model, keep the faster), fp32 or bf16")


# Default peak learning rates, picked on pydocs-topic dev accuracy (256 labels, 3 seeds, a small
# pretrained body: 2 layers, width 128). For full fine-tuning 1e-3 was the best of 5e-4, 1e-3, 2e-3
# for a random body; a pretrained one did a little better at 2e-3. Both share 1e-3, so the choice
# errs against pretraining, never for it. New parameters alone (head; LoRA's A and B) take larger steps.
DEFAULT_LR = {"full": 1e-3, "last-k": 1e-3, "frozen": 1e-2, "lora": 5e-3}


def resolved(cfg):
    """cfg with its learning rate filled in: --lr if given, else the mode's default."""
    if cfg.mode not in MODES:
        raise UserError(f"unknown mode {cfg.mode!r}; use {', '.join(MODES)}")
    if cfg.mode == "prompt":
        return cfg                                          # nothing trains: no learning rate
    cfg = cfg if cfg.lr is not None else dataclasses.replace(cfg, lr=DEFAULT_LR[cfg.mode])
    if cfg.min_lr > cfg.lr:
        raise UserError(f"--min-lr {cfg.min_lr} is above the peak learning rate {cfg.lr}; lower it")
    return cfg


def n_steps(cfg, n_examples):
    """--epochs passes over the labels, but at least --min-steps: 32 labels are 2 steps a pass."""
    return max(cfg.min_steps, math.ceil(cfg.epochs * n_examples / cfg.batch_size))


def classification_loss(classifier, batch):
    """Cross-entropy of the true class: the same loss as pretraining, over K classes, not V tokens."""
    logits = classifier(batch["idx"], batch["attention_mask"])                 # (B, K)
    return F.cross_entropy(logits.float(), batch["labels"])


def make_batch(sequences, labels, pad_id, device):
    """Token id lists and labels -> the tensors one step needs, on the device."""
    idx, attention_mask = collate(sequences, pad_id)
    return dict(idx=idx.to(device), attention_mask=attention_mask.to(device),
                labels=torch.tensor(labels, dtype=torch.long, device=device))


def pick_precision(classifier, sequences, labels, pad_id, cfg, device):
    """--precision, or with auto the faster of fp32 and bf16 on this classifier (measured once per
    machine and shape, plumbing.choose_precision)."""
    if cfg.precision != "auto":
        return cfg.precision
    batch = make_batch(sequences[:cfg.batch_size], labels[:cfg.batch_size], pad_id, device)
    return plumbing.choose_precision(classifier, classification_loss, batch, device)


@torch.no_grad()
def predict(classifier, sequences, pad_id, device, autocast, batch_size=64):
    """Predicted class per sequence. Sorted by length, so each batch pads little."""
    classifier.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    predictions = torch.empty(len(sequences), dtype=torch.long)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        idx, attention_mask = collate([sequences[i] for i in rows], pad_id)
        with autocast():
            logits = classifier(idx.to(device), attention_mask.to(device))     # (B, K)
        predictions[rows] = logits.argmax(dim=-1).cpu()
    classifier.train()
    return predictions


def classification_metrics(predictions, labels):
    """Accuracy and macro-F1: F1_k = 2 TP / (2 TP + FP + FN) per class, averaged over the classes
    that occur (in labels or predictions), so a minority class counts as much as a majority one."""
    predictions, labels = torch.as_tensor(predictions), torch.as_tensor(labels)
    f1s = []
    for k in torch.unique(torch.cat([predictions, labels])).tolist():
        tp = ((predictions == k) & (labels == k)).sum().item()
        fp = ((predictions == k) & (labels != k)).sum().item()
        fn = ((predictions != k) & (labels == k)).sum().item()
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return dict(accuracy=(predictions == labels).float().mean().item(), macro_f1=sum(f1s) / len(f1s))


def finetune(classifier, train_sequences, train_labels, cfg, pad_id, device, dev=None, log=print):
    """Train classifier in place on (sequences, labels). dev: optional (sequences, labels) for the
    curve. Reuses the pretraining loop's optimiser (AdamW, decay groups) and schedule (warmup +
    cosine, ending exactly at the last step). Returns (history, precision)."""
    cfg = resolved(cfg)
    steps = n_steps(cfg, len(train_sequences))
    precision = pick_precision(classifier, train_sequences, train_labels, pad_id, cfg, device)
    autocast, scaler = plumbing.precision_context(device, precision)
    optimizer = train_clm.make_optimizer(classifier, cfg, device)
    generator = torch.Generator().manual_seed(cfg.seed)
    batch_size = min(cfg.batch_size, len(train_sequences))
    eval_at = {round(steps * (i + 1) / cfg.eval_points) for i in range(cfg.eval_points)} if dev else set()
    order, history, start = [], [], time.perf_counter()
    classifier.train()
    for step in range(1, steps + 1):
        lr = train_clm.learning_rate((step - 1) / steps, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if len(order) < batch_size:                       # a fresh shuffle for each epoch
            order += torch.randperm(len(train_sequences), generator=generator).tolist()
        rows, order = order[:batch_size], order[batch_size:]
        batch = make_batch([train_sequences[i] for i in rows], [train_labels[i] for i in rows],
                           pad_id, device)
        loss = train_clm.accumulate_gradients(classifier, classification_loss, lambda: batch, 1,
                                              autocast, scaler)      # forward + backward, as pretraining
        train_clm.optimizer_step(classifier, optimizer, scaler, cfg.grad_clip)
        record = dict(step=step, train_loss=loss.item(), lr=lr, seconds=time.perf_counter() - start)
        if step in eval_at:
            record.update({f"dev_{k}": v for k, v in classification_metrics(
                predict(classifier, dev[0], pad_id, device, autocast), dev[1]).items()})
            log(f"step {step:5d}/{steps} | train loss {record['train_loss']:.4f} | dev accuracy "
                f"{record['dev_accuracy']:.3f} | dev macro-F1 {record['dev_macro_f1']:.3f} | "
                f"{record['seconds']:.1f}s")
        history.append(record)
    return history, precision


# ----------------------------------------------------------------------------------------------
# 5. The reference row: bag-of-words logistic regression on the same examples.

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def bag_of_words(texts, vocabulary):
    """(N, V) sparse features: log(1 + count) per known word, each row scaled to unit length
    (sublinear tf with cosine normalisation: Manning et al. 2008, ch. 6)."""
    rows, cols, values = [], [], []
    for row, text in enumerate(texts):
        counts = Counter(w for w in WORD.findall(text.lower()) if w in vocabulary)
        norm = math.sqrt(sum(math.log1p(c) ** 2 for c in counts.values())) or 1.0
        for word, count in counts.items():
            rows.append(row), cols.append(vocabulary[word]), values.append(math.log1p(count) / norm)
    return torch.sparse_coo_tensor([rows, cols], values, (len(texts), len(vocabulary)),
                                   dtype=torch.float64, check_invariants=True)


def fit_logistic(features, labels, n_classes, l2):
    """Multinomial logistic regression, mean cross-entropy + l2/2 |W|^2, with L-BFGS: the problem
    is convex, so this is the optimum, not one run of a noisy optimiser."""
    weights = torch.zeros(features.size(1) + 1, n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = torch.sparse.mm(features, weights[:-1]) + weights[-1]        # (N, K), last row = bias
        loss = F.cross_entropy(logits, labels) + 0.5 * l2 * weights[:-1].pow(2).sum()
        loss.backward()
        return loss
    optimizer.step(closure)
    return weights.detach()


def bag_of_words_baseline(train, dev, test, n_classes, l2_grid=(1e-2, 1e-3, 1e-4, 1e-5)):
    """Vocabulary from the training texts only; the l2 strength with the best dev accuracy (ties go
    to the stronger one, tried first). Tuning on dev gives the baseline its best shot, so what the
    Transformer buys is not overstated."""
    vocabulary = {w: i for i, w in enumerate(sorted({w for t, _ in train for w in WORD.findall(t.lower())}))}
    splits = {name: (bag_of_words([t for t, _ in examples], vocabulary),
                     torch.tensor([y for _, y in examples])) for name, examples in
              (("train", train), ("dev", dev), ("test", test))}
    best = None
    for l2 in l2_grid:
        weights = fit_logistic(*splits["train"], n_classes, l2)
        scores = {name: classification_metrics(
            (torch.sparse.mm(x, weights[:-1]) + weights[-1]).argmax(-1), y)
            for name, (x, y) in splits.items() if name != "train"}
        if best is None or scores["dev"]["accuracy"] > best["dev"]["accuracy"]:
            best = dict(scores, l2=l2, vocabulary=len(vocabulary))
    return best


def majority_baseline(train, dev, test):
    """Always the most frequent training label: the floor that any learning must clear (on a test
    set that is 58% one class, 0.58 accuracy means nothing has been learned)."""
    majority = Counter(y for _, y in train).most_common(1)[0][0]
    return {name: classification_metrics([majority] * len(examples), [y for _, y in examples])
            for name, examples in (("dev", dev), ("test", test))}


# ----------------------------------------------------------------------------------------------
# 6. Prompting: the third route to a task, with no gradient step at all (GPT-3, Brown et al. 2020).
#
# A causal body continues text. Show it K labelled examples ("demonstrations") as text, then the
# query, and ask which class's word (its verbalizer) is the likelier continuation:
#
#     Text: <demonstration 1>\nLabel: positive\n\n ... Text: <query>\nLabel:   -> " negative"?
#
#     prediction = argmax_y  log p(verbalizer(y) | prompt)     (summed over the word's tokens)
#
# Nothing trains; the K demonstrations are the only labels used (K = 0: zero-shot). In-context
# learning appears with scale (Brown et al. 2020; Wei et al. 2022 call it emergent): a body of a
# few million parameters, pretrained for minutes, is expected near chance, and the README shows it.

def verbalizers(labelled, spec=None):
    """The word each class is scored by, in label order: the class names, or --verbalizers
    LABEL=WORD,... for a task whose names are codes ("0", "ham"). A leading space: it follows ':'."""
    words = {name: name for name in labelled.label_names}
    for item in (spec.split(",") if spec else []):
        label, _, word = item.partition("=")
        if label.strip() not in words or not word.strip():
            raise UserError(f"--verbalizers: {item!r} is not LABEL=WORD with LABEL one of "
                            f"{', '.join(labelled.label_names)}")
        words[label.strip()] = word.strip()
    return [" " + words[name] for name in labelled.label_names]


def demonstrations(train, shots, seed):
    """K training examples, balanced over classes and seeded, in shuffled order (all of one class
    last would pull the answer towards it: Zhao et al. 2021)."""
    return subsample_balanced(train, shots, seed) if shots else []


PROMPT_PIECES = ("Text:", "\nLabel:", "\n\nText:")


def text_budget(body, enc, shots, words, max_len):
    """Tokens per text such that shots + 1 texts, their labels and the template fit the body."""
    head, mid, sep = (len(enc.encode_ordinary(piece)) for piece in PROMPT_PIECES)
    longest_word = max(len(enc.encode_ordinary(w)) for w in words)
    return min(max_len, (body.config.block_size - head) // (shots + 1) - mid - sep - longest_word)


@torch.no_grad()
def prompt_scores(body, enc, demos, words, texts, max_len, device, batch_size=32):
    """log p(word of class c | prompt for text i), shape (N, K). Each row is prefix + query + one class's word:
        prefix = "Text:" + (" <demo>" "\nLabel:" " <its word>" "\n\nText:") per demonstration
        query  = " <text>" "\nLabel:"
    The pieces meet where GPT-2's split pattern always cuts (before a space or a newline that
    follows a non-space), so encoding them apart gives exactly the tokens of the whole prompt, and
    texts can be cut in tokens to fit the body's positions. The prefix is encoded once and shared
    by every row; the model has no KV cache, so each row recomputes it (cheap at these sizes)."""
    head, mid, sep = (enc.encode_ordinary(piece) for piece in PROMPT_PIECES)
    word_ids = [enc.encode_ordinary(w) for w in words]
    budget = text_budget(body, enc, len(demos), words, max_len)
    if budget < 1:
        raise UserError(f"{len(demos)} demonstrations do not fit the body's {body.config.block_size} "
                        f"positions; use fewer --shots")

    def text_ids(text):
        return enc.encode_ordinary(" " + " ".join(text.split()))[:budget]
    prefix = head + [t for text, y in demos for t in text_ids(text) + mid + word_ids[y] + sep]
    queries = [prefix + text_ids(text) + mid for text in texts]           # encoded once per text
    pad, n_text = data.special_ids(enc)["pad"], data.n_ordinary(enc)
    body.eval().to(device)
    scores = torch.empty(len(texts), len(words))
    rows = [(i, c) for i in range(len(texts)) for c in range(len(words))]
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        idx, _ = collate([queries[i] + word_ids[c] for i, c in chunk], pad)  # (B, T), right-padded
        logits = body(idx.to(device))[0].float()                          # (B, T, V)
        logprobs = torch.log_softmax(logits[..., :n_text], dim=-1).cpu()  # over text tokens only
        for row, (i, c) in enumerate(chunk):
            # the word's j-th token is predicted at the position just before it
            at = torch.arange(len(queries[i]) - 1, len(queries[i]) - 1 + len(word_ids[c]))
            scores[i, c] = logprobs[row, at, word_ids[c]].sum()
    return scores


def prompt_run(body, enc, labelled, cfg, device):
    """Prompting's 'run': demonstrations from the training split, dev and test scored."""
    if not body.config.causal:
        raise UserError("--mode prompt needs a causal (CLM) body: a bidirectional one was never "
                        "trained to continue text; use train_clm.py's checkpoint or gpt2")
    start = time.perf_counter()
    words = verbalizers(labelled, cfg.verbalizers)
    demos = demonstrations(labelled.train, cfg.shots, cfg.seed)
    result = dict(shots=cfg.shots, verbalizers=words, trainable=0, total=body.num_params(False))
    for split in ("dev", "test"):
        texts, labels = [t for t, _ in getattr(labelled, split)], [y for _, y in getattr(labelled, split)]
        predictions = prompt_scores(body, enc, demos, words, texts, cfg.max_len, device).argmax(dim=-1)
        result[split] = classification_metrics(predictions, labels)
    result["seconds"] = time.perf_counter() - start
    return result


# ----------------------------------------------------------------------------------------------
# 7. Forgetting: the body's own pretraining loss, before and after fine-tuning.

PRETRAINING_OBJECTIVES = {"clm": train_clm.CLM, "mlm": train_mlm.MLM}


def pretraining_eval(checkpoint, device, data_dir=None, cache_dir=None):
    """A function model -> validation loss, on the checkpoint's own validation split and objective
    (the whole split: for a CLM checkpoint the 'before' number is the one train_clm.py printed)."""
    settings = types.SimpleNamespace(**checkpoint["train_config"])     # the run's saved flags
    objective = PRETRAINING_OBJECTIVES[checkpoint.get("objective", "clm")]
    dataset = data.prepare_dataset(settings.corpus, settings.tokenizer, data_dir or settings.data_dir,
                                   cache_dir or settings.cache_dir, verbose=False)
    plumbing.check_compatible(checkpoint, dataset.enc, checkpoint["kind"])   # same text, same vocabulary
    batches = objective.eval_batches(dataset.val, settings, dataset, None, device)  # fixed once

    def loss_of(model):
        model.eval()
        with torch.no_grad():
            loss = objective.metrics(model, batches, dataset)["val_loss"]
        model.train()
        return loss
    return loss_of


# ----------------------------------------------------------------------------------------------
# 8. One run: body -> classifier -> fine-tune -> metrics, baseline, forgetting.

def load_task(name, n_train, seed, data_dir=None, cache_dir=None):
    """The labelled set, and the training examples of this run: all, or a balanced seeded K."""
    labelled = load_labelled(name, data_dir, cache_dir)
    train = subsample_balanced(labelled.train, n_train, seed) if n_train else labelled.train
    return labelled, train


def run_one(body, enc, labelled, train, cfg, device, log=print, forgetting=None):
    """Fine-tune `body` on `train` and score it on dev and test. forgetting: an optional function
    model -> pretraining validation loss. Returns (a dict of results, the classifier)."""
    cfg = resolved(cfg)
    encoded = {name: encode_examples(enc, examples, cfg.max_len, body)
               for name, examples in (("train", train), ("dev", labelled.dev), ("test", labelled.test))}
    classifier = make_classifier(body, len(labelled.label_names), cfg).to(device)
    trainable, total = parameter_counts(classifier)
    before = forgetting(classifier.body) if forgetting else None
    pad_id = data.special_ids(enc)["pad"]
    history, precision = finetune(classifier, *encoded["train"], cfg, pad_id, device, dev=encoded["dev"],
                                  log=log)
    autocast, _ = plumbing.precision_context(device, precision)
    result = dict(trainable=trainable, total=total, steps=len(history), precision=precision, lr=cfg.lr,
                  seconds=history[-1]["seconds"], history=history, pooling=classifier.pooling)
    for split in ("dev", "test"):
        predictions = predict(classifier, encoded[split][0], pad_id, device, autocast)
        result[split] = classification_metrics(predictions, encoded[split][1])
    if forgetting:
        result["pretraining_loss"] = dict(before=before, after=forgetting(classifier.body))
    if cfg.mode == "lora":        # the merged model must be the same function
        merged = merge_lora(copy.deepcopy(classifier)).eval()
        idx, attention_mask = collate(encoded["dev"][0][:64], pad_id)
        classifier.eval()
        with torch.no_grad():
            unmerged_logits = classifier(idx.to(device), attention_mask.to(device))
            merged_logits = merged(idx.to(device), attention_mask.to(device))
        classifier.train()
        result["lora_merge_max_abs_diff"] = (unmerged_logits - merged_logits).abs().max().item()
    return result, classifier


def single_run(args, cfg):
    """One body on one task: fine-tuned (or prompted), scored beside bag-of-words and the majority
    class, with forgetting if asked; results.json and the curve go to --out-dir."""
    plumbing.check_results_dir(args.out_dir, args.overwrite, ("results.json", "curve.png"))
    device = plumbing.pick_device(cfg.device)
    checkpoint = None
    if args.checkpoint:
        checkpoint, enc = read_checkpoint(args.checkpoint, args.data_dir, args.cache_dir)
        body = body_from(checkpoint, args.init, cfg.seed)
        source = f"{checkpoint.get('objective', '?')} checkpoint {args.checkpoint}"
        source = source if args.init == "pretrained" else f"random weights shaped like {source}"
    elif args.init == "pretrained":
        raise UserError("--init pretrained needs --checkpoint CKPT (from train_clm.py or train_mlm.py); "
                        "or pass --init scratch")
    else:
        body, enc = scratch_from_flags(args, cfg.seed)
        source = f"random weights, --preset {args.preset} shape, tokenizer {args.tokenizer}"
    if args.forgetting and (checkpoint is None or args.init == "scratch" or cfg.mode == "prompt"):
        raise UserError("--forgetting compares a pretrained body before and after training; pass "
                        "--checkpoint with --init pretrained and a mode that trains")
    if args.forgetting and "train_config" not in checkpoint:
        raise UserError(f"--forgetting needs the body's pretraining text, which {args.checkpoint} does "
                        f"not name; use a checkpoint from train_clm.py or train_mlm.py")
    labelled, train = load_task(args.task, cfg.n_train, cfg.seed, args.data_dir, args.cache_dir)
    forgetting = None
    if args.forgetting:
        forgetting = pretraining_eval(checkpoint, device, args.data_dir, args.cache_dir)
    print(f"task {args.task}: {len(labelled.label_names)} classes, {len(train)} train"
          f"{' (balanced subsample)' if cfg.n_train else ''} / {len(labelled.dev)} dev / "
          f"{len(labelled.test)} test")
    print(f"body: {source} ({'causal' if body.config.causal else 'bidirectional'}, "
          f"{body.num_params(non_embedding=False):,} parameters); mode {cfg.mode}")
    if cfg.mode == "prompt":
        result = prompt_run(body, enc, labelled, cfg, device)
        print(f"prompting: {cfg.shots} demonstrations per prompt, classes scored by the words "
              f"{result['verbalizers']}, no training step, {result['seconds']:.1f}s")
    else:
        result, _ = run_one(body, enc, labelled, train, cfg, device, forgetting=forgetting)
        print(f"pooling {result['pooling']}; trained {result['trainable']:,} of {result['total']:,} parameters "
              f"({100 * result['trainable'] / result['total']:.2f}%), peak lr {result['lr']:g}, "
              f"{result['steps']} steps in {result['seconds']:.1f}s, precision {result['precision']}")
    baseline = bag_of_words_baseline(train, labelled.dev, labelled.test, len(labelled.label_names))
    majority = majority_baseline(train, labelled.dev, labelled.test)
    label = f"prompted ({cfg.shots} shots)" if cfg.mode == "prompt" else f"fine-tuned ({args.init}, {cfg.mode})"
    plumbing.print_results(result, baseline, majority, label)
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        record = dict(task=args.task, checkpoint=args.checkpoint, init=args.init,
                      config=dataclasses.asdict(cfg), **result, bag_of_words=baseline,
                      majority_class=majority)
        with open(os.path.join(args.out_dir, "results.json"), "w") as f:
            json.dump(record, f, indent=1)
        if "history" in result:                            # prompting has no curve
            plumbing.plot_curve(result["history"], os.path.join(args.out_dir, "curve.png"),
                       f"{Path(args.task).name}: {args.init} {cfg.mode}, {len(train)} labels")
        print(f"saved results in {args.out_dir}")
    return result, baseline


# ----------------------------------------------------------------------------------------------
# 9. The sweep: test accuracy against the number of labels.

# method -> (which checkpoint, init, mode). LoRA adapts the CLM body. Each pretrained method is
# compared with random weights in its own architecture (mask, shape, pooling), which is not the
# same for the two checkpoints: "scratch" has the CLM's, "scratch-mlm" the MLM's.
SWEEP_METHODS = {"scratch": ("clm", "scratch", "full"), "clm": ("clm", "pretrained", "full"),
                 "scratch-mlm": ("mlm", "scratch", "full"), "mlm": ("mlm", "pretrained", "full"),
                 "lora": ("clm", "pretrained", "lora"), "prompt": ("clm", "pretrained", "prompt")}
PROMPT_SHOTS = (0, 1, 4, 8)   # prompting's rows: its "labels" are the demonstrations in the prompt


def baseline_of(method, methods):
    """The scratch run in the same architecture as `method`, if it is among `methods` (None for a
    scratch method itself)."""
    which, init, _ = SWEEP_METHODS[method]
    if init == "scratch":
        return None
    return next((m for m in methods if SWEEP_METHODS[m][:2] == (which, "scratch")), None)


def parse_sizes(text, n_available):
    """--sizes 32,128,all -> [32, 128, n_available], capped at the training split, sorted."""
    sizes = set()
    for item in text.split(","):
        item = item.strip()
        if item != "all" and not (item.isdigit() and int(item) > 0):
            raise UserError(f"--sizes: {item!r} is not a positive integer or 'all'; e.g. --sizes 32,128,all")
        sizes.add(n_available if item == "all" else min(int(item), n_available))
    return sorted(sizes)


def sweep(args, cfg):
    """Every method at every size for --seeds seeds, beside bag-of-words; prompting at PROMPT_SHOTS
    demonstrations. Each pretrained method is compared with scratch in its own architecture."""
    device = plumbing.pick_device(cfg.device)
    if not args.clm:
        raise UserError("--sweep needs --clm CKPT (and --mlm CKPT for the MLM curve)")
    checkpoints = {which: read_checkpoint(path, args.data_dir, args.cache_dir)
                   for which, path in (("clm", args.clm), ("mlm", args.mlm)) if path}
    methods = [m.strip() for m in args.methods.split(",")]
    unknown = [m for m in methods if m not in SWEEP_METHODS]
    if unknown:
        raise UserError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(SWEEP_METHODS)}")
    skipped = [m for m in methods if SWEEP_METHODS[m][0] not in checkpoints]
    methods = [m for m in methods if m not in skipped]
    if skipped:
        print(f"skipping {', '.join(skipped)}: no --mlm checkpoint given")
    if not methods:
        raise UserError("--methods: nothing left to run; give --mlm CKPT or other methods")
    labelled = load_labelled(args.task, args.data_dir, args.cache_dir)
    sizes = parse_sizes(args.sizes, len(labelled.train))
    seeds = range(cfg.seed, cfg.seed + args.seeds)
    cfg = dataclasses.replace(cfg, eval_points=0, n_train=None)        # the sweep scores at the end only

    def body_for(method, seed):
        which, init, _ = SWEEP_METHODS[method]
        checkpoint, enc = checkpoints[which]
        return body_from(checkpoint, init, seed), enc

    def run(method, k, seed):
        if method == "bow":
            train = subsample_balanced(labelled.train, k, seed)
            return bag_of_words_baseline(train, labelled.dev, labelled.test, len(labelled.label_names))
        body, enc = body_for(method, seed)
        run_cfg = dataclasses.replace(cfg, seed=seed, mode=SWEEP_METHODS[method][2], shots=k)
        if method == "prompt":
            return prompt_run(body, enc, labelled, run_cfg, device)
        train = subsample_balanced(labelled.train, k, seed)
        return run_one(body, enc, labelled, train, run_cfg, device, log=lambda *a: None)[0]

    plan = [(m, k, s) for k in sizes for s in seeds for m in ["bow"] + methods if m != "prompt"]
    if "prompt" in methods:
        body, enc = body_for("prompt", cfg.seed)
        words = verbalizers(labelled, cfg.verbalizers)
        shots = [k for k in PROMPT_SHOTS if text_budget(body, enc, k, words, cfg.max_len) >= 1]
        if len(shots) < len(PROMPT_SHOTS):
            print(f"prompting: only {shots} demonstrations fit the body's {body.config.block_size} positions")
        plan += [("prompt", k, s) for k in shots for s in seeds]
        sizes = sorted(set(sizes) | set(shots))
    # Records made with other settings (or from a checkpoint since rewritten) are never mixed in.
    settings = [args.task, {p: os.path.getmtime(p) for p in (args.clm, args.mlm) if p and os.path.isfile(p)},
                args.clm, args.mlm, dataclasses.asdict(cfg)]
    print(f"sweep on {args.task}: methods {', '.join(methods)} (+ bag-of-words), sizes {sizes}, seeds {list(seeds)}")
    records = plumbing.run_sweep(plan, run, os.path.join(args.out_dir, "sweep.jsonl"), settings)
    baselines = {m: baseline_of(m, methods) for m in methods if m != "prompt"}
    print(plumbing.write_sweep_report(records, ["bow"] + methods, sizes, labelled, baselines, args.out_dir))
    print(f"saved {args.out_dir}/sweep.jsonl, sweep.md and sweep.png")


# ----------------------------------------------------------------------------------------------
# 10. The command line.

def export_text(args):
    """A labelled set's TRAINING texts without labels, one per line: in-domain text to pretrain on
    (domain-adaptive pretraining, Gururangan et al. 2020). Dev and test are never exported."""
    if not args.output:
        raise UserError("--export-text needs -o FILE (where to write the text)")
    labelled = load_labelled(args.export_text, args.data_dir, args.cache_dir)
    text = "\n".join(" ".join(t.split()) for t, _ in labelled.train) + "\n"
    plumbing.write_atomic(args.output, text.encode("utf-8"))
    print(f"wrote {len(labelled.train):,} {args.export_text} training texts "
          f"({len(text.encode()) / 1e6:.2f} MB) to {args.output}; pretrain on it with: "
          f"python train_clm.py --corpus {args.output}")


def main(argv=None):
    parser = plumbing.build_parser(__doc__.split("\n")[0], FinetuneConfig, train_clm.PRESETS, epilog=(
        "--preset only sets the shape of a scratch model when no --checkpoint gives one. Without "
        "--checkpoint, --init scratch builds the tokenizer from --corpus/--tokenizer."))
    parser.add_argument("--task", default="pydocs-topic", help="pydocs-topic (offline), sst2, sms-spam, "
                        "or a path to a text<TAB>label .tsv file")
    parser.add_argument("--checkpoint", metavar="CKPT", help="a checkpoint from train_clm.py or train_mlm.py")
    parser.add_argument("--init", choices=("pretrained", "scratch"), default="pretrained",
                        help="scratch: --checkpoint's architecture and tokenizer with random weights")
    parser.add_argument("--corpus", default="pydocs", help="scratch without --checkpoint: tokenizer corpus")
    parser.add_argument("--tokenizer", default="bpe:4096", help="scratch without --checkpoint: tokenizer")
    parser.add_argument("--kind", choices=("causal", "bidirectional"), default="causal",
                        help="scratch without --checkpoint: which model")
    parser.add_argument("--forgetting", action="store_true",
                        help="measure the body's pretraining validation loss before and after")
    parser.add_argument("--data-dir", help="folder searched for data files (None: $PTFT_DATA_DIR)")
    parser.add_argument("--cache-dir", help="cache folder (None: $PTFT_CACHE_DIR or ~/.cache/ptft)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results.json and curve.png already in --out-dir")
    parser.add_argument("--out-dir", help="where results.json and curve.png go (None: out/finetune; "
                        "'': nothing is saved), or the sweep's files (None: out/finetune-sweep)")
    group = parser.add_argument_group("sweep: test accuracy against the number of labels")
    group.add_argument("--sweep", action="store_true", help="run the sweep instead of one fine-tuning")
    group.add_argument("--clm", metavar="CKPT", help="CLM checkpoint (scratch and lora use its shape)")
    group.add_argument("--mlm", metavar="CKPT", help="MLM checkpoint")
    group.add_argument("--methods", default="scratch,clm,scratch-mlm,mlm,lora,prompt",
                       help=f"from {', '.join(SWEEP_METHODS)} (prompt: at {PROMPT_SHOTS} demonstrations)")
    group.add_argument("--sizes", default="32,128,256,512,2048,all",
                       help="labelled set sizes (capped at the train split)")
    plumbing.add_flag(group, "--seeds", 3, "seeds per point (from --seed on)", "[1, inf)")
    group = parser.add_argument_group("export: in-domain text for domain-adaptive pretraining")
    group.add_argument("--export-text", metavar="TASK",
                       help="write TASK's training texts (no labels) to -o FILE")
    group.add_argument("-o", "--output", metavar="FILE", help="with --export-text: the text file to write")
    args = parser.parse_args(argv)
    if args.export_text:
        return export_text(args)
    # --preset names a scratch shape (train_clm.PRESETS), not fine-tuning settings: nothing to merge.
    cfg = plumbing.config_from_args(args, FinetuneConfig, dict.fromkeys(train_clm.PRESETS, {}))
    if args.sweep:
        args.out_dir = args.out_dir or "out/finetune-sweep"
        return sweep(args, cfg)
    args.out_dir = "out/finetune" if args.out_dir is None else args.out_dir
    return single_run(args, cfg)


if __name__ == "__main__":
    plumbing.run_cli(main)
