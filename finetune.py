"""Fine-tuning: one costly pretraining run, then cheap specialisation with few labels.

Pretraining (train_clm.py, train_mlm.py) turns unlabelled text into a body f that maps a text of
T tokens to T vectors, h = f(x), shape (T, C). A classifier for K classes adds two small pieces:

    p(y | x) = softmax(W pool(f(x)) + b)            W: (K, C), b: (K,)

and minimises cross-entropy on labelled pairs (x, y). The claim under test (Howard & Ruder 2018;
Radford et al. 2018; Devlin et al. 2019): starting f from pretrained weights instead of random ones
reaches a given accuracy with far fewer labels. This file measures that instead of asserting it.

Pooling: which vectors of h the head reads.
    causal model          the MEAN over non-pad tokens (default), or the LAST non-pad token, the
        only position that has read the whole text under a causal mask (GPT-1 reads its final token
        so). Checked on the dev splits of four tasks (RESULTS.md), the mean was ahead on three and
        on average: every position's state adds evidence, where the last one alone must carry it.
    bidirectional model   the CLS token at position 0 (default, as BERT, and ahead on the same
        dev check), or the MEAN over non-pad tokens. A surprise worth knowing: masked-LM
        pretraining never trains the top CLS vector. The masked loss scores only the masked
        positions and CLS is never masked, so nothing the loss sees reads the final vector at CLS:
        its gradient is exactly zero for the whole of pretraining (a test checks this; BERT trains
        it with next-sentence prediction, which we do not have). Measured, CLS wins after
        fine-tuning all the same (RESULTS.md): the lower layers' CLS states are trained, since
        every token attends to them, and fine-tuning needs only to teach the top layer to
        summarise into it.

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

Prompting (--mode prompt), the third route to a task and the only one with no gradient step
(GPT-3, Brown et al. 2020), has a lesson of its own, prompting.py; this file runs it.

What is measured (the tasks, splits, scores and reference rows are tasks.py's): accuracy and
macro-F1 on dev and test, each read beside the majority class (above it, something was learned)
and a bag-of-words logistic regression on the same examples (above it, the Transformer earned its
cost); and forgetting, the body's own pretraining validation loss before and after fine-tuning.
How accuracy grows with the number of labels, for every route at once, is transfer.py's lesson.

Bodies: a checkpoint of train_clm.py or train_mlm.py, or GPT-2 itself (`--checkpoint gpt2`, or a
Hugging Face GPT-2 folder), read into the same format by train_clm.load_pretrained.

Read tasks.py first (labelled sets and how a classifier is scored), then in this order:
1. inputs and pooling; 2. the classifier, the modes and LoRA; 3. bodies (pretrained or scratch);
4. the fine-tuning loop; 5. forgetting; 6. one run; 7. the command line. prompting.py, the
third route, comes after, and transfer.py, which measures all three against the number of labels.

    python finetune.py --checkpoint out/clm/ckpt.pt --n-train 256          # CLM, full fine-tuning
    python finetune.py --checkpoint out/clm/ckpt.pt --init scratch         # same shape, random
    python finetune.py --checkpoint out/mlm/ckpt.pt --mode lora --forgetting
    python finetune.py --checkpoint out/clm/ckpt.pt --mode prompt --shots 4  # no gradient step
"""
import copy
import dataclasses
import json
import math
import os
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

import data
import optim
import plumbing
import prompting
import tasks
import train_clm
import train_mlm
from model import ModelConfig, Transformer, padded_vocab_size
from plumbing import UserError, knob


# ----------------------------------------------------------------------------------------------
# 1. Inputs and pooling.

def encode_texts(enc, texts, max_len, cls_first):
    """One list of token ids per text, cut to max_len. Bidirectional models read [CLS] + text,
    as they were pretrained (train_mlm.py puts CLS first); causal models read the text alone."""
    prefix = [data.special_ids(enc)["cls"]] if cls_first else []
    eot = data.special_ids(enc)["eot"]
    # An empty text becomes one end-of-text token: every row needs a position for the head to read.
    return [((prefix + ids)[:max_len] or [eot]) for ids in enc.encode_ordinary_batch(list(texts))]


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
    raise ValueError(f"unknown pooling {how!r}")         # a user's --pooling is checked before: pooling_for


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
        # The body runs exactly as in pretraining, minus its language-model head: the head that
        # predicted V tokens is dropped, and this K-way one reads the pooled vector instead.
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
        weight = self.base.weight                   # on its device, in its dtype (a GPU, bf16)
        linear = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                           device=weight.device, dtype=weight.dtype)
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
    """Set requires_grad for cfg.mode (checked by resolved), inserting LoRA first; the optimiser
    gets only these."""
    body = classifier.body
    if cfg.mode == "last-k" and not 1 <= cfg.last_k <= body.config.n_layer:
        raise UserError(f"--last-k {cfg.last_k}: the model has {body.config.n_layer} blocks; "
                        f"use 1 <= --last-k <= {body.config.n_layer}")
    if cfg.mode == "lora":
        if cfg.lora_r < 1 or cfg.lora_targets not in LORA_TARGETS:
            raise UserError(f"LoRA needs --lora-r >= 1 and --lora-targets in {', '.join(LORA_TARGETS)}")
        if cfg.lora_r >= body.config.n_embd:    # every matrix it adapts is n_embd wide on one side
            raise UserError(f"--lora-r {cfg.lora_r}: the matrices LoRA adapts are {body.config.n_embd} wide, so "
                            f"that rank is not low (it trains more than the matrices hold); give --lora-r "
                            f"below {body.config.n_embd}, e.g. 8, or fine-tune in full (--mode full)")
        add_lora(body, cfg.lora_r, cfg.lora_alpha, cfg.lora_targets)
    for name, parameter in body.named_parameters():
        parameter.requires_grad = (cfg.mode == "full" or
                                   (cfg.mode == "lora" and name.rsplit(".", 1)[-1] in ("A", "B")))
    if cfg.mode == "last-k":
        # The top blocks and the final LayerNorm, whose output is what the head reads.
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
#
# The experiment's control: "scratch" is the same architecture, the same tokenizer and the same
# fine-tuning recipe, with only the weights random. A gap between the two rows is what pretraining
# put into the weights, and nothing else.

def body_from(checkpoint, init, seed):
    """The checkpoint's weights, or (init="scratch") random weights in exactly its architecture:
    the fair comparison."""
    if init == "pretrained":
        return Transformer.from_checkpoint(checkpoint)
    torch.manual_seed(seed)
    return Transformer(ModelConfig(**checkpoint["model_config"]))


def scratch_from_flags(args, seed):
    """No checkpoint: the tokenizer from --corpus/--tokenizer, the shape from --preset."""
    dataset = data.prepare_dataset(args.corpus, args.tokenizer, args.data_dir, args.cache_dir, verbose=False)
    shape = train_clm.TrainConfig(**{**train_clm.PRESETS[args.preset], "corpus": args.corpus,
                                     "tokenizer": args.tokenizer})
    config = train_clm.model_config(shape, causal=args.kind == "causal")       # its vocabulary: the tokenizer's
    torch.manual_seed(seed)
    return Transformer(dataclasses.replace(config, vocab_size=padded_vocab_size(dataset.enc.n_vocab))), dataset.enc


# --pooling auto: what each kind of body reads, chosen on the dev splits of four tasks (RESULTS.md).
AUTO_POOLING = {"causal": "mean", "bidirectional": "cls"}


def pooling_for(kind, cfg):
    """The pooling a body of this kind ("causal" or "bidirectional") is read with: --pooling, or
    auto's choice; refused in one line where it cannot work."""
    pooling = AUTO_POOLING[kind] if cfg.pooling == "auto" else cfg.pooling
    if pooling not in ("last", "mean", "cls"):
        raise UserError(f"unknown pooling {cfg.pooling!r}; use auto, last, mean or cls")
    if pooling == "cls" and kind == "causal":
        raise UserError("--pooling cls needs a bidirectional model: under a causal mask the first "
                        "token sees only itself; use mean (the default for causal models) or last")
    return pooling


def make_classifier(body, n_classes, cfg):
    """Body + pooling + head, with cfg.mode applied. Seeded here, so that for one seed the head
    (and LoRA's A) start the same whether the body is pretrained or random."""
    pooling = pooling_for("causal" if body.config.causal else "bidirectional", cfg)
    torch.manual_seed(cfg.seed)
    return apply_mode(Classifier(body, n_classes, pooling), cfg)


# ----------------------------------------------------------------------------------------------
# 4. Fine-tuning.

@dataclass
class FinetuneConfig:
    """The knobs of one fine-tuning run; finetune.py's other flags choose the body, the task, the
    sweep and where to write. The defaults are BERT's fine-tuning recipe scaled down (Devlin et al. 2019,
    appendix A.3: a few epochs at a small peak rate, warmup, weight decay 0.01, beta2 0.999), with
    the cosine decay of the pretraining loop in place of BERT's linear one."""
    mode: str = knob("full", "full, last-k, frozen (head only) or lora: which parameters train; or prompt: "
                             "none, the body reads --shots labelled examples in its prompt")
    shots: int = knob(4, "with --mode prompt: demonstrations per prompt, balanced and seeded", "[0, inf)")
    verbalizers: Optional[str] = knob(None, "with --mode prompt: LABEL=WORD,... (None: the class names)")
    last_k: int = knob(2, "with --mode last-k: how many top blocks train", "[1, inf)")
    lora_r: int = knob(8, "LoRA rank r, below the model's width (Hu et al. 2021: 1 to 8 sufficed for GPT-3)",
                       "[1, inf)")
    lora_alpha: float = knob(16.0, "LoRA alpha: the update is scaled by alpha / r", "(0, inf)")
    lora_targets: str = knob("all", "LoRA on attention (attn: qkv, proj) or on every block matrix (all)")
    pooling: str = knob("auto", "auto (mean for causal, cls for bidirectional), mean, last or cls")
    n_train: Optional[int] = knob(None, "train on K labelled examples, balanced and seeded (None: all "
                                        "of the train split)", "[1, inf)")
    max_len: int = knob(64, "tokens per text, longer ones are cut (64 keeps a docstring's summary)", "[2, inf)")
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
    eval_points: int = knob(5, "dev evaluations during training, for the curve (0: at the end only)", "[0, inf)")
    seed: int = knob(0, "seed for the subsample, the head, LoRA, scratch weights and batch order", "[0, inf)")
    device: str = knob("auto", "auto (cuda, then mps, then cpu), cuda, cuda:N, mps or cpu")
    precision: str = knob("auto", "auto (time fp32 and bf16 on this model, keep the faster), fp32 or bf16")


# Default peak learning rates, picked on pydocs-topic dev accuracy (RESULTS.md). Full fine-tuning
# uses a random body's best, 1e-3, for both (a pretrained one did a little better at 2e-3), so the
# choice errs against pretraining. New parameters alone (head; LoRA's A and B) take larger steps.
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


def check_settings(cfg, device, kind):
    """--mode, the learning rates, --precision and --pooling (for a body of this kind), refused in
    one line before a results folder is made or a worker starts: fine-tuning itself meets them only
    once the labels are read and the classifier is built."""
    resolved(cfg)
    if cfg.precision != "auto":
        plumbing.check_precision(device, cfg.precision)
    if cfg.mode != "prompt":                            # prompting reads the body's own next-word guess
        pooling_for(kind, cfg)


def n_steps(cfg, n_examples):
    """--epochs passes over the labels, but at least --min-steps: 32 labels are 2 steps a pass."""
    return max(cfg.min_steps, math.ceil(cfg.epochs * n_examples / cfg.batch_size))


def classification_loss(classifier, batch):
    """Cross-entropy of the true class: the same loss as pretraining, over K classes, not V tokens."""
    logits = classifier(batch["idx"], batch["attention_mask"])                 # (B, K)
    return F.cross_entropy(logits.float(), batch["labels"])


def make_batch(sequences, labels, pad_id, device):
    """Token id lists and labels -> the tensors one step needs, on the device."""
    idx, attention_mask = tasks.collate(sequences, pad_id)
    return dict(idx=idx.to(device), attention_mask=attention_mask.to(device),
                labels=torch.tensor(labels, dtype=torch.long, device=device))


@torch.no_grad()
def predict(classifier, sequences, pad_id, device, autocast, batch_size=64):
    """Predicted class per sequence. Sorted by length, so each batch pads little. eval() turns
    dropout off, so the same inputs always get the same predictions."""
    classifier.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    predictions = torch.empty(len(sequences), dtype=torch.long)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        idx, attention_mask = tasks.collate([sequences[i] for i in rows], pad_id)
        with autocast():
            logits = classifier(idx.to(device), attention_mask.to(device))     # (B, K)
        predictions[rows] = logits.argmax(dim=-1).cpu()
    classifier.train()
    return predictions


def finetune(classifier, train_sequences, train_labels, cfg, pad_id, device, dev=None, log=print):
    """Train classifier in place on (sequences, labels). dev: optional (sequences, labels) for the
    curve. Uses the pretraining loop's optimiser (optim.py: AdamW, decay groups) and schedule
    (warmup + cosine, reaching --min-lr where the last step ends; each step at its middle's rate,
    so that neither the first nor, with BERT's floor of 0, the last is a step of size zero).
    Returns (history, precision)."""
    cfg = resolved(cfg)
    steps = n_steps(cfg, len(train_sequences))
    precision = cfg.precision
    if precision == "auto":     # bf16 is far faster on some CPUs and slower on others: measured, once
        probe = make_batch(train_sequences[:cfg.batch_size], train_labels[:cfg.batch_size], pad_id, device)
        precision = plumbing.choose_precision(classifier, classification_loss, probe, device)
    autocast, scaler = optim.precision_context(device, plumbing.check_precision(device, precision))
    optimizer = optim.make_optimizer(classifier, cfg, device)
    generator = torch.Generator().manual_seed(cfg.seed)
    batch_size = min(cfg.batch_size, len(train_sequences))
    # Dev accuracy at eval_points evenly spaced steps: the curve that shows when a run has converged
    # (or, from a random body, that it has not).
    eval_at = {round(steps * (i + 1) / cfg.eval_points) for i in range(cfg.eval_points)} if dev else set()
    order, history, start = [], [], time.perf_counter()
    classifier.train()
    for step in range(1, steps + 1):
        lr = optim.learning_rate((step - 0.5) / steps, cfg)         # the step's middle, as pretraining
        for group in optimizer.param_groups:
            group["lr"] = lr
        if len(order) < batch_size:                       # a fresh shuffle for each epoch
            order += torch.randperm(len(train_sequences), generator=generator).tolist()
        rows, order = order[:batch_size], order[batch_size:]
        batch = make_batch([train_sequences[i] for i in rows], [train_labels[i] for i in rows],
                           pad_id, device)
        with autocast():
            loss = classification_loss(classifier, batch)       # forward: class scores, cross-entropy
        scaler.scale(loss).backward()                            # backward, as in pretraining
        optim.optimizer_step(classifier, optimizer, scaler, cfg.grad_clip)
        record = dict(step=step, train_loss=loss.item(), lr=lr, seconds=time.perf_counter() - start)
        plumbing.check_finite(record["train_loss"], "loss", step)   # diverged: no accuracy to report
        if step in eval_at:
            record.update({f"dev_{k}": v for k, v in tasks.classification_metrics(
                predict(classifier, dev[0], pad_id, device, autocast), dev[1]).items()})
            log(f"step {step:5d}/{steps} | train loss {record['train_loss']:.4f} | dev accuracy "
                f"{record['dev_accuracy']:.3f} | dev macro-F1 {record['dev_macro_f1']:.3f} | "
                f"{record['seconds']:.1f}s")
        history.append(record)
    return history, precision


# ----------------------------------------------------------------------------------------------
# 5. Forgetting: the body's own pretraining loss, before and after fine-tuning.

# Fine-tuning moves every weight of the body towards the task (full mode); how much of what the body
# learned in pretraining does it lose? Measured directly: the pretraining objective's own
# validation loss on the body, before and after. The frozen mode cannot forget (the body does not
# move); LoRA can move it only along a low-rank update, and forgot less than full fine-tuning in the
# README's measurement.
PRETRAINING_EVALUATIONS = {"causal": train_clm.evaluate_clm, "bidirectional": train_mlm.evaluate_mlm}


def pretraining_eval(checkpoint, path, device, data_dir=None, cache_dir=None):
    """A function model -> validation loss, on the checkpoint's own validation split and objective
    (the whole split: for a CLM checkpoint the 'before' number is the one train_clm.py printed)."""
    dataset = train_clm.pretraining_dataset(checkpoint, path, data_dir, cache_dir)   # same text, same vocabulary
    settings = types.SimpleNamespace(**checkpoint["train_config"])     # the run's saved flags
    evaluate = PRETRAINING_EVALUATIONS[checkpoint["kind"]]           # the objective it was trained on

    def loss_of(model):
        model.eval()
        with torch.no_grad():
            loss = evaluate(model, dataset, settings, None, device)["val_loss"]
        model.train()
        return loss
    return loss_of


# ----------------------------------------------------------------------------------------------
# 6. One run: body -> classifier -> fine-tune -> metrics, baseline, forgetting.

def run_one(body, enc, labelled, train, cfg, device, log=print, forgetting=None):
    """Fine-tune `body` on `train` and score it on dev and test (--mode prompt: prompting.py's run,
    no training). forgetting: an optional function model -> pretraining validation loss. Returns
    (a dict of results, the classifier)."""
    cfg = resolved(cfg)
    if cfg.mode == "prompt":
        return prompting.prompt_run(body, enc, labelled, cfg, device), None
    max_len, cls_first = min(cfg.max_len, body.config.block_size), not body.config.causal
    encoded = {split: (encode_texts(enc, [t for t, _ in examples], max_len, cls_first), [y for _, y in examples])
               for split, examples in (("train", train), ("dev", labelled.dev), ("test", labelled.test))}
    classifier = make_classifier(body, len(labelled.label_names), cfg).to(device)
    trainable, total = parameter_counts(classifier)
    before = forgetting(classifier.body) if forgetting else None
    pad_id = data.special_ids(enc)["pad"]
    history, precision = finetune(classifier, *encoded["train"], cfg, pad_id, device, dev=encoded["dev"],
                                  log=log)
    autocast, _ = optim.precision_context(device, precision)
    result = dict(trainable=trainable, total=total, steps=len(history), precision=precision, lr=cfg.lr,
                  seconds=history[-1]["seconds"], history=history, pooling=classifier.pooling)
    for split in ("dev", "test"):
        predictions = predict(classifier, encoded[split][0], pad_id, device, autocast)
        result[split] = tasks.classification_metrics(predictions, encoded[split][1])
    if forgetting:
        result["pretraining_loss"] = dict(before=before, after=forgetting(classifier.body))
    # LoRA's promise is a plain model after training (W = W0 + (alpha / r) B A, no extra cost at
    # inference): check it on real inputs, and keep the largest difference in the results.
    if cfg.mode == "lora":
        merged = merge_lora(copy.deepcopy(classifier)).eval()
        idx, attention_mask = tasks.collate(encoded["dev"][0][:64], pad_id)
        classifier.eval()
        with torch.no_grad():
            unmerged_logits = classifier(idx.to(device), attention_mask.to(device))
            merged_logits = merged(idx.to(device), attention_mask.to(device))
        classifier.train()
        result["lora_merge_max_abs_diff"] = (unmerged_logits - merged_logits).abs().max().item()
    return result, classifier


def print_results(result, baseline, majority, label):
    """The run's report: how it went, its scores beside the two reference rows (the floor and the
    bar, tasks.py), then the forgetting and LoRA checks."""
    if "verbalizers" in result:
        print(f"prompting: {result['shots']} demonstrations per prompt, classes scored by the words "
              f"{result['verbalizers']}, no training step, {result['seconds']:.1f}s")
    else:
        print(f"pooling {result['pooling']}; trained {result['trainable']:,} of {result['total']:,} parameters "
              f"({100 * result['trainable'] / result['total']:.2f}%), peak lr {result['lr']:g}, "
              f"{result['steps']} steps in {result['seconds']:.1f}s, precision {result['precision']}")
    print(f"{'':34s} {'dev acc':>8s} {'dev F1':>8s} {'test acc':>9s} {'test F1':>8s}")
    for name, row in ((label, result), ("bag-of-words logistic regression", baseline),
                      ("majority class (always one label)", majority)):
        print(f"{name:34s} {row['dev']['accuracy']:8.3f} {row['dev']['macro_f1']:8.3f} "
              f"{row['test']['accuracy']:9.3f} {row['test']['macro_f1']:8.3f}")
    if "pretraining_loss" in result:
        pre = result["pretraining_loss"]
        print(f"forgetting: pretraining val loss {pre['before']:.4f} -> {pre['after']:.4f} "
              f"({pre['after'] - pre['before']:+.4f} nats per token)")
    if "lora_merge_max_abs_diff" in result:
        print(f"lora: merged vs unmerged logits, max |difference| = {result['lora_merge_max_abs_diff']:.2e}")


def plot_curve(history, path, title):
    """Training loss by step, and the dev scores at the evaluation points."""
    evals = [r for r in history if "dev_accuracy" in r]
    with plumbing.figure(path, ncols=2, size=(11, 4)) as (fig, (left, right)):
        left.plot([r["step"] for r in history], [r["train_loss"] for r in history], alpha=0.7)
        left.set(xlabel="step", ylabel="training loss (cross-entropy, nats)", title="training loss")
        for key in ("dev_accuracy", "dev_macro_f1"):
            right.plot([r["step"] for r in evals], [r[key] for r in evals], "o-", label=key.replace("_", " "))
        right.set(xlabel="step", ylabel="score", title="dev set", ylim=(0, 1.02))
        right.legend()
        for ax in (left, right):
            ax.grid(alpha=0.3)
        fig.suptitle(title)


def single_run(args, cfg):
    """One body on one task: fine-tuned (or prompted), scored beside bag-of-words and the majority
    class, with forgetting if asked; results.json and the curve go to --out-dir."""
    plumbing.check_results_dir(args.out_dir, args.overwrite, ("results.json", "curve.png"))
    device = plumbing.pick_device(cfg.device)
    checkpoint = None
    if args.checkpoint:
        checkpoint, enc = train_clm.load_pretrained(args.checkpoint, None, args.data_dir, args.cache_dir)
        body = body_from(checkpoint, args.init, cfg.seed)
        source = f"checkpoint {args.checkpoint}"
        source = source if args.init == "pretrained" else f"random weights shaped like {source}"
    elif args.init == "pretrained":
        raise UserError("--init pretrained needs --checkpoint CKPT (from train_clm.py or train_mlm.py); "
                        "or pass --init scratch")
    else:
        body, enc = scratch_from_flags(args, cfg.seed)
        source = f"random weights, --preset {args.preset} shape, tokenizer {args.tokenizer}"
    check_settings(cfg, device, "causal" if body.config.causal else "bidirectional")
    # Forgetting needs a pretrained body that moves, and the text it was pretrained on (gpt2's is unknown).
    if args.forgetting and (checkpoint is None or args.init == "scratch" or cfg.mode == "prompt"
                            or "train_config" not in checkpoint):
        raise UserError("--forgetting compares a pretrained body on its own pretraining text before and after "
                        "training; pass --checkpoint from train_clm.py or train_mlm.py, --init pretrained "
                        "and a mode that trains")
    labelled = tasks.load_labelled(args.task, args.data_dir, args.cache_dir)
    train = tasks.subsample_balanced(labelled.train, cfg.n_train, cfg.seed) if cfg.n_train else labelled.train
    forgetting = (pretraining_eval(checkpoint, args.checkpoint, device, args.data_dir, args.cache_dir)
                  if args.forgetting else None)
    lock = plumbing.lock_folder(args.out_dir)         # every input is good: the folder is this run's
    print(f"task {args.task}: {len(labelled.label_names)} classes, {len(train)} train"
          f"{' (balanced subsample)' if cfg.n_train else ''} / {len(labelled.dev)} dev / "
          f"{len(labelled.test)} test")
    print(f"body: {source} ({'causal' if body.config.causal else 'bidirectional'}, "
          f"{body.num_params(non_embedding=False):,} parameters); mode {cfg.mode}")
    result, _ = run_one(body, enc, labelled, train, cfg, device, forgetting=forgetting)
    # Two reference rows on the same labels: the score to beat and the floor.
    baseline = tasks.bag_of_words_baseline(train, labelled.dev, labelled.test, len(labelled.label_names))
    majority = tasks.majority_baseline(labelled.train, labelled.dev, labelled.test)
    label = f"prompted ({cfg.shots} shots)" if cfg.mode == "prompt" else f"fine-tuned ({args.init}, {cfg.mode})"
    print_results(result, baseline, majority, label)
    if args.out_dir:
        record = dict(task=args.task, checkpoint=args.checkpoint, init=args.init, config=dataclasses.asdict(cfg),
                      **result, bag_of_words=baseline, majority_class=majority)
        title = f"{Path(args.task).name}: {args.init} {cfg.mode}, {len(train)} labels"
        plumbing.write_atomic(os.path.join(args.out_dir, "results.json"), json.dumps(record, indent=1).encode())
        if "history" in record:                    # prompting trains nothing: no curve
            plot_curve(record["history"], os.path.join(args.out_dir, "curve.png"), title)
        print(f"saved results in {args.out_dir}")
    if lock:
        lock.release()
    return result, baseline


def results_folder(args, cfg):
    """out/finetune/BODY-TASK-INIT-MODE[-nK][-Sshots]-seedS: runs with other settings never share a
    folder. BODY is the checkpoint's folder (clm for out/clm/ckpt.pt), gpt2, or scratch-KIND."""
    if args.checkpoint is None:
        body = f"scratch-{args.kind}"
    elif os.path.isfile(args.checkpoint):
        body = Path(args.checkpoint).parent.name
    else:
        body = Path(args.checkpoint).name                       # gpt2, or a GPT-2 folder
    parts = [body, Path(args.task).stem, args.init, cfg.mode] + ([f"n{cfg.n_train}"] if cfg.n_train else [])
    parts += [f"{cfg.shots}shots"] if cfg.mode == "prompt" else []
    return os.path.join("out", "finetune", "-".join(parts + [f"seed{cfg.seed}"]))


# ----------------------------------------------------------------------------------------------
# 7. The command line.

def main(argv=None):
    """One run (the default) or a text export (--export-text)."""
    # --preset names a scratch shape (train_clm.PRESETS), not fine-tuning settings: nothing to merge.
    presets = dict.fromkeys(train_clm.PRESETS, {})
    parser = plumbing.build_parser(__doc__.split("\n")[0], FinetuneConfig, presets, epilog=(
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
                        help="replace the results.json and curve.png already in --out-dir (or "
                             "--export-text's -o FILE)")
    parser.add_argument("--out-dir", help="where results.json and curve.png go ('': nothing is saved; None: "
                        "out/finetune/BODY-TASK-INIT-MODE[-nK]-seedS, e.g. out/finetune/clm-pydocs-topic-"
                        "pretrained-full-n256-seed0 for --checkpoint out/clm/ckpt.pt --n-train 256)")
    group = parser.add_argument_group("export: in-domain text for domain-adaptive pretraining")
    group.add_argument("--export-text", metavar="TASK",
                       help="write TASK's training texts (no labels) to -o FILE")
    group.add_argument("-o", "--output", metavar="FILE", help="with --export-text: the text file to write")
    args = parser.parse_args(argv)
    if args.export_text:        # in-domain text to pretrain on (domain-adaptive pretraining)
        if not args.output:
            raise UserError("--export-text needs -o FILE (where to write the text)")
        text = tasks.training_text(args.export_text, args.data_dir, args.cache_dir)
        # Never replace a file unasked; writing the same text again (a rerun) loses nothing.
        if os.path.isfile(args.output) and not args.overwrite and plumbing.read_text(args.output) != text:
            raise UserError(f"{args.output} already exists and holds other text; pass --overwrite to replace "
                            f"it, or another -o")
        plumbing.write_atomic(args.output, text.encode("utf-8"))
        return print(f"wrote {text.count(chr(10)):,} training texts ({len(text.encode()) / 1e6:.2f} MB) to "
                     f"{args.output}; pretrain on it with: python train_clm.py --corpus {args.output}")
    cfg = plumbing.config_from_args(args, FinetuneConfig, presets)
    if args.out_dir is None:              # a folder of its own for each body, task and setting
        args.out_dir = results_folder(args, cfg)
    return single_run(args, cfg)


if __name__ == "__main__":
    plumbing.run_cli(main)
