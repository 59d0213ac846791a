"""Masked-language-model pretraining (BERT-style): the same model, the same loop, another objective.

A causal model predicts every token from the tokens on its left. A masked LM hides a random set M
of the tokens (15% of them, BERT: Devlin et al. 2019) and predicts each hidden token from ALL the
others, on both sides:

    L = -(1/|M|) sum_{t in M} log p(x_t | x~)      x~ = x with the positions in M corrupted

Seeing both sides is what makes its vectors good for understanding a whole sentence (the
classification fine-tuning of finetune.py); the price is that it cannot generate text left to
right, and that only |M| = 15% of the positions give a training signal per sequence, where the
causal loss scores all of them.

Only two things differ from train_clm.py, and they are all this file defines:
  1. the mask: the model is built with causal=False, so attention may look both ways (model.py);
  2. the objective: a batch is [CLS] + a window of text, some of it padding, with a share of its
     tokens corrupted (BERT: 15%; mask_tokens, mlm_batch); the loss is scored at those positions
     only, and the LM head runs only there (sparse prediction).
Config, optimiser, schedule, loop, logs, plot, checkpoints and resume are train_clm's: main()
calls its train() with causal=False and this file's batch and evaluation. So are the presets,
except that the cpu preset's shape and masking rate are tuned for this objective. Read beside
train_clm.py, the two files are the whole difference between GPT and BERT pretraining.

Read in this order: MLMConfig (three knobs) and MLM_PRESETS, BERT's masking, the batch and the
evaluation, fill-in-the-blank, the causal-vs-bidirectional comparison, the command line.
"""
import re
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

import data
import plumbing
from model import Transformer
from plumbing import UserError, knob
from train_clm import (PRESETS, TrainConfig, fixed_windows, load_pretrained, plot_losses, pretraining_dataset,
                       report, train)


@dataclass
class MLMConfig(TrainConfig):
    out_dir: Optional[str] = knob("out/mlm", "where checkpoint, log and plot go ('' to save nothing); "
                                             "without the flag: out/mlm for the cpu preset on pydocs, "
                                             "out/mlm-PRESET for another preset, -CORPUS added for another corpus")
    mask_prob: float = knob(0.15, "fraction of the text tokens selected for prediction (BERT: 0.15; the "
                                  "cpu preset: 0.4, as Wettig et al. 2022)", "(0, 1]")
    mask_draw: str = knob("fixed", "fixed: exactly round(mask_prob * n) tokens per sequence (static "
                                   "shapes); bernoulli: each token independently")
    short_seq_prob: float = knob(0.1, "share of sequences cut short and padded (BERT's 0.1)", "[0, 1]")

    def __post_init__(self):
        if self.mask_draw not in ("fixed", "bernoulli"):
            raise UserError(f"unknown --mask-draw {self.mask_draw!r}; use fixed or bernoulli")
        if self.block_size < 2:
            raise UserError(f"--block-size must be at least 2 for a masked LM ([CLS] and one token), "
                            f"got {self.block_size}")


# What differs in the presets: the cpu preset. In the causal preset's wall-clock budget a masked LM
# did best shallow and wide, on shorter windows (finetune.py reads 64 tokens per text anyway), with
# more of each window masked (Wettig et al. 2022's finding, at our scale), and with AdamW alone:
# on these cheaper steps Muon's cost per step weighs more, and at the preset's learning rate it cost
# both time and accuracy (RESULTS.md).
MLM_PRESETS = dict(PRESETS, cpu=dict(PRESETS["cpu"], n_layer=2, n_embd=192, n_head=6, block_size=64,
                                     batch_size=32, mask_prob=0.4, max_iters=1150, eval_interval=230,
                                     lr=2e-3, min_lr=2e-4, muon_lr=0.0, init_std=0.02))
# The transfer curve's top for a GPU, beside the causal one: its shape, Muon and rates (AdamW alone
# at 2e-3 is untried at 88M parameters), with the masked preset's windows and masking, for four
# times its steps: about 200x its compute (5.0e15 FLOPs). Not run on a GPU yet.
MLM_PRESETS["large"] = dict(PRESETS["large"], block_size=64, mask_prob=0.4, max_iters=4600, eval_interval=575)

# The validation mask is the same in every run, whatever --seed and --mask-prob, so runs compare:
# BERT's 15% of the positions, drawn by one fixed seed. (Scored at the training rate instead, a
# run with --mask-prob 0.4 would be marked on a harder test, with 40% of its context hidden.)
VAL_MASK_SEED, VAL_MASK_PROB = 0, 0.15


# ----------------------------------------------------------------------------------------------
# BERT's masking (Devlin et al. 2019, sec 3.1 and appendix A.1). The model must see a sequence with
# holes and say what was there; only the holes are scored.

def mask_tokens(idx, enc, mask_prob, generator, draw="fixed", corruption=(0.8, 0.1)):
    """BERT's masking of a batch of token ids: idx (B, T) -> (inputs, labels), both (B, T) int64.

    1. Select mask_prob of the positions that hold an ordinary token (never [CLS], [PAD] or any
       other special token: they are the ids >= n_ordinary), at least one per sequence, so no
       sequence and no batch ever has a loss over zero positions.
    2. Corrupt the selected positions: corruption[0] (80%) become the mask token, corruption[1]
       (10%) a random ordinary token, the rest (10%) stay unchanged. Why not always the mask token:
       it never occurs in fine-tuning inputs, so a model that only had to predict at mask tokens
       would owe nothing to the tokens it can see; the random and unchanged 10%s make it keep a
       good guess of the true token at every position (Devlin et al. 2019, sec 3.1 and
       appendix A.1; appendix C.2 compares other splits).
    3. labels: the original token at the selected positions, -100 (ignored by the loss) elsewhere.

    Two ways to select, `draw`:
      "fixed"      exactly max(1, round(mask_prob * n)) of a sequence's n ordinary tokens, as BERT's
                   create_pretraining_data.py: full-length sequences all yield as many predictions,
                   so the sparse LM head sees one (N, C) shape (torch.compile still breaks its
                   graph at the boolean indexing of the masked positions; short sequences vary N).
      "bernoulli"  each ordinary token independently with probability mask_prob (Hugging Face's
                   DataCollatorForLanguageModeling), so N varies. A sequence that drew none gets one
                   random position, which adds about (1 - mask_prob)^n / n to the rate at length n.
    Both select mask_prob of the tokens on average. The rate is a choice, not a law: a higher one
    hides more context (a harder task) but scores more predictions per sequence; Wettig et al. 2022
    find 40% beats 15% for BERT-large. 15% stays the default of --mask-prob; the cpu preset uses 0.4.
    All randomness comes from the CPU `generator`, so a resumed run masks exactly as the first did.
    """
    B, T = idx.shape
    n_ord, mask_id = data.n_ordinary(enc), data.special_ids(enc)["mask"]
    eligible = idx < n_ord                                                # (B, T) ordinary tokens
    n_eligible = eligible.sum(dim=1)                                      # (B,)
    if (n_eligible == 0).any():
        raise ValueError("every sequence needs at least one ordinary token to mask")
    # One uniform score per position; ineligible positions get 2.0, above every real score in [0, 1).
    scores = torch.rand(B, T, generator=generator).masked_fill(~eligible, 2.0)          # (B, T)
    if draw == "fixed":
        n_select = (n_eligible * mask_prob).round().long().clamp(min=1)   # (B,), <= n_eligible
        # The n_select positions with the lowest scores: at or below the n_select-th smallest score.
        threshold = scores.sort(dim=1).values.gather(1, (n_select - 1)[:, None])          # (B, 1)
        selected = scores <= threshold                                                    # (B, T)
    else:
        selected = scores < mask_prob                                                     # (B, T)
        none = ~selected.any(dim=1)                                                       # (B,)
        # A row that selected nothing has all its scores >= mask_prob; its lowest-scored eligible
        # position is a uniformly random one.
        selected[none, scores[none].argmin(dim=1)] = True
    mask_share, random_share = corruption
    choice = torch.rand(B, T, generator=generator)                        # (B, T): which corruption
    random_tokens = torch.randint(n_ord, (B, T), generator=generator)     # ordinary ids only
    inputs = idx.masked_fill(selected & (choice < mask_share), mask_id)
    use_random = selected & (choice >= mask_share) & (choice < mask_share + random_share)
    inputs = torch.where(use_random, random_tokens, inputs)               # (B, T)
    labels = idx.masked_fill(~selected, -100)                             # (B, T)
    return inputs, labels


def mlm_batch(windows, enc, mask_prob, generator, short_seq_prob=0.0, draw="fixed",
              corruption=(0.8, 0.1)):
    """Windows of text (B, T-1) ordinary token ids -> a masked-LM batch of T positions:

        idx             [CLS] w_1 .. w_L [PAD] .. [PAD], then corrupted by mask_tokens   (B, T)
        targets         the original token where selected, -100 elsewhere               (B, T)
        attention_mask  1 on [CLS] and the L text tokens, 0 on the padding              (B, T)

    [CLS] at position 0 gives a fine-tuned classifier a slot to pool from (BERT's [CLS] pooling).
    Short sequences: the corpus is one token stream with no end-of-text tokens to cut at, so, as
    BERT's create_pretraining_data.py, a share short_seq_prob (0.1) keeps only a random length in
    [2, T] (counting [CLS]), padded on the right. A model that never saw padding in pretraining
    would first meet it at fine-tuning, where sentences are short.
    """
    ids = data.special_ids(enc)
    B, T = windows.shape[0], windows.shape[1] + 1
    idx = torch.cat([torch.full((B, 1), ids["cls"], dtype=torch.long), windows.long()], dim=1)  # (B, T)
    # Both draws happen for every row, so the generator advances the same way whatever the rate.
    short = torch.rand(B, generator=generator) < short_seq_prob                         # (B,)
    random_lengths = torch.randint(2, T + 1, (B,), generator=generator)                 # (B,)
    lengths = torch.where(short, random_lengths, torch.full((B,), T))                   # (B,)
    attention_mask = (torch.arange(T)[None, :] < lengths[:, None]).long()               # (B, T)
    idx = idx.masked_fill(attention_mask == 0, ids["pad"])
    inputs, targets = mask_tokens(idx, enc, mask_prob, generator, draw, corruption)
    return dict(idx=inputs, targets=targets, attention_mask=attention_mask)


# ----------------------------------------------------------------------------------------------
# The batch and the evaluation: what train_clm.train() calls instead of the causal ones.

def get_mlm_batch(tokens, cfg, enc, generator, device):
    """B random windows of T-1 tokens (train_clm's sampler; its shifted copy is not needed here),
    then [CLS] in front, BERT's short sequences and masking, all drawn from the CPU generator:
    the model's arguments idx, targets and attention_mask, (B, T) each, and only_scored=True.

    only_scored is sparse prediction: the LM head (a C x vocab matrix product and a softmax) runs at
    the N masked positions only, not at all B*T. In the cpu preset (C=192, vocab 4160) it is 4.8 of
    the 10.4 MFLOP a position costs to train; at 40% of the positions that saves 28% of all training
    FLOPs, and most of the (B, T, vocab) logits. The loop's FLOP and MFU counts keep the dense
    figure, so that MLM and CLM curves share an axis."""
    windows, _ = data.get_batch(tokens, cfg.batch_size, cfg.block_size - 1, "cpu", generator)  # (B, T-1)
    batch = mlm_batch(windows, enc, cfg.mask_prob, generator, cfg.short_seq_prob, cfg.mask_draw)
    return dict({name: data.to_device(tensor, device) for name, tensor in batch.items()}, only_scored=True)


def evaluate_mlm(model, dataset, cfg, n_batches, device):
    """Masked-LM loss (nats per masked token), bits per byte of the masked tokens' own text,
    masked-token accuracy (top-1 among ordinary tokens, the only possible answers), and the
    unigram baseline: the accuracy of always answering the training split's most frequent token.

    On a fixed validation set: train_clm's evenly spaced windows of the validation split, full
    length (no short sequences), masked with one seeded generator so every run and every
    evaluation scores the same positions. Every selected position becomes the mask token (no 10%
    random, no 10% unchanged): the score measures filling a blank, as the fill-in demo does, and
    no answer is left visible in the input. So validation loss runs a little above training loss."""
    n_windows = None if n_batches is None else n_batches * cfg.batch_size
    # Windows of T tokens start every T-1 tokens: their first T-1 tokens tile the split exactly.
    windows = fixed_windows(dataset.val, cfg.block_size - 1, n_windows)
    windows = torch.from_numpy(np.stack([w[:-1] for w in windows]))                   # (n, T-1)
    # Masked all at once, then cut into batches: the mask does not depend on --batch-size either.
    masked = mlm_batch(windows, dataset.enc, VAL_MASK_PROB, torch.Generator().manual_seed(VAL_MASK_SEED),
                       short_seq_prob=0.0, draw="fixed", corruption=(1.0, 0.0))       # (n, T) each
    n_ord = data.n_ordinary(dataset.enc)
    byte_lengths = np.array([len(dataset.enc.decode_single_token_bytes(i)) for i in range(n_ord)])
    most_frequent = int(np.bincount(dataset.train).argmax())      # one pass over the split: cheap
    nats = hits = unigram_hits = count = n_bytes = 0
    for chunks in zip(*(masked[name].split(cfg.batch_size) for name in masked)):
        batch = {name: data.to_device(chunk, device) for name, chunk in zip(masked, chunks)}  # (B, T) each
        logits, loss = model(**batch, only_scored=True)                                 # (N, V)
        answers = batch["targets"][batch["targets"] != -100]        # (N,) in the same order as logits
        nats += loss.item() * len(answers)
        hits += (logits[:, :n_ord].argmax(dim=-1) == answers).sum().item()
        unigram_hits += (answers == most_frequent).sum().item()
        n_bytes += int(byte_lengths[answers.cpu().numpy()].sum())
        count += len(answers)
    val_loss = nats / count
    val_bpb = data.bits_per_unit(val_loss, count, n_bytes)
    meta = dataset.meta                   # per character: the split's own bytes per character
    return dict(val_loss=val_loss, val_bpb=val_bpb, val_bpc=val_bpb * meta["val_bytes"] / meta["val_chars"],
                val_acc=hits / count, unigram_acc=unigram_hits / count, n_masked=count)


def fill_in_demo(model, dataset, cfg, device):
    """The demo at the end of training: the start of the validation text with blanks, filled."""
    window = torch.from_numpy(np.asarray(dataset.val[:min(40, cfg.block_size - 1)], dtype=np.int64))
    generator = torch.Generator().manual_seed(VAL_MASK_SEED)
    batch = mlm_batch(window[None], dataset.enc, VAL_MASK_PROB, generator, corruption=(1.0, 0.0))
    tokens, targets = batch["idx"][0].tolist(), batch["targets"][0]
    print("--- fill in the blanks (validation text, top 3 per blank) ---")
    print_fills(dataset.enc, tokens, fill_blanks(model, dataset.enc, tokens, 3, device),
                truth=targets[targets != -100].tolist())


# ----------------------------------------------------------------------------------------------
# Fill in the blank: what a masked LM is for, out of the box.

MASK_SPELLINGS = ("[MASK]", data.SPECIAL_TOKENS[1])   # BERT's spelling and our token's own


def encode_with_blanks(enc, text, block_size):
    """'Return the [MASK] of a list.' -> [CLS] 'Return' ' the' <mask> ' of' ' a' ' list' '.' (ids).

    A blank takes the space before it: byte-level BPE words carry their leading space (' length'
    is one token), so 'the [MASK]' must become ' the' + blank, not ' the' + ' ' + blank."""
    pieces = re.split("|".join(map(re.escape, MASK_SPELLINGS)), text)
    if len(pieces) == 1:
        raise UserError(f"--text has no blank; write {MASK_SPELLINGS[0]} (or {MASK_SPELLINGS[1]}) "
                        f"where a token is missing")
    ids = data.special_ids(enc)
    tokens = [ids["cls"]]
    for i, piece in enumerate(pieces):
        before_a_blank = i < len(pieces) - 1
        if before_a_blank and piece.endswith(" "):
            piece = piece[:-1]
        tokens += enc.encode_ordinary(piece)
        if before_a_blank:
            tokens.append(ids["mask"])
    if len(tokens) > block_size:
        raise UserError(f"--text is {len(tokens)} tokens with [CLS], the model reads at most "
                        f"{block_size}; shorten it")
    return tokens


@torch.no_grad()
def fill_blanks(model, enc, tokens, top_k, device):
    """For each mask token in `tokens`: the top_k (token id, probability) the model predicts there,
    the probabilities renormalised over the ordinary tokens (a blank never hides a special one)."""
    model.eval()
    idx = torch.tensor([tokens], device=device)                                    # (1, T)
    blanks = (idx[0] == data.special_ids(enc)["mask"]).nonzero().flatten()         # (n_blanks,)
    h = model.hidden_states(idx)[0, blanks]                                         # (n_blanks, C)
    probs = model.lm_head(h)[:, :data.n_ordinary(enc)].float().softmax(dim=-1)     # (n_blanks, V')
    top = probs.topk(min(top_k, probs.size(-1)), dim=-1)
    return [list(zip(ids.tolist(), ps.tolist())) for ids, ps in zip(top.indices, top.values)]


def print_fills(enc, tokens, predictions, truth=None):
    """train_mlm.py's fill-in-the-blank output: the text with numbered blanks, the top-k tokens for
    each blank (with the true token when known), and the text with every blank filled by its top-1."""
    mask_id, n_ord = data.special_ids(enc)["mask"], data.n_ordinary(enc)
    spell = lambda ids: enc.decode([t for t in ids if t < n_ord])          # drops [CLS] and [PAD]
    segments = [[]]                                                         # the text between blanks
    for t in tokens:
        if t == mask_id:
            segments.append([])
        else:
            segments[-1].append(t)
    print("input: " + "".join(spell(segment) + (f"[MASK {i + 1}]" if i < len(predictions) else "")
                              for i, segment in enumerate(segments)))
    for i, choices in enumerate(predictions):
        answer = f"   (truth {spell([truth[i]])!r})" if truth else ""
        print(f"  blank {i + 1}: " + " | ".join(f"{spell([t])!r} {p:.2f}" for t, p in choices) + answer)
    best = iter(choices[0][0] for choices in predictions)
    print("top-1: " + spell([next(best) if t == mask_id else t for t in tokens]))


# ----------------------------------------------------------------------------------------------
# The lesson: a blank in the middle, with and without the right-hand context.

@torch.no_grad()
def compare_causal(clm_path, mlm_path, data_dir=None, cache_dir=None, batch_size=64):
    """On the validation split of the MLM's corpus, blank the middle token of windows of T-1
    tokens (T = the MLM's block size), starting every (T-1)//8 tokens so that each blank is a
    different token. The MLM reads [CLS] + the whole window with that token masked; the causal
    model reads the same tokens up to the blank and predicts the next one. Same left context, so
    any difference is what the right-hand context is worth. Returns a dict of top-1 accuracies."""
    mlm_ckpt = plumbing.load_checkpoint(mlm_path, "bidirectional")
    clm_ckpt = plumbing.load_checkpoint(clm_path, "causal")
    dataset = pretraining_dataset(mlm_ckpt, mlm_path, data_dir, cache_dir)
    plumbing.check_tokenizer(clm_ckpt, data.tokenizer_identity(dataset.enc))     # the same vocabulary, too
    device = plumbing.pick_device("auto")
    mlm = Transformer.from_checkpoint(mlm_ckpt).to(device).eval()
    clm = Transformer.from_checkpoint(clm_ckpt).to(device).eval()
    length = mlm.config.block_size - 1
    middle = length // 2                                  # index of the blank inside a window
    left = min(middle, clm.config.block_size)             # tokens of left context both models see
    if left < 1:
        raise UserError(f"block size {mlm.config.block_size} leaves no token left of the blank; use >= 4")
    starts = np.arange(0, len(dataset.val) - length + 1, max(1, length // 8))
    if len(starts) == 0:
        raise UserError(f"the validation split ({len(dataset.val)} tokens) is shorter than one window "
                        f"of {length}; use a larger corpus")
    windows = torch.from_numpy(np.stack([np.asarray(dataset.val[s:s + length], dtype=np.int64)
                                         for s in starts]))                       # (n, T-1)
    ids, n_ord = data.special_ids(dataset.enc), data.n_ordinary(dataset.enc)
    most_frequent = int(np.bincount(dataset.train).argmax())
    hits = dict(bidirectional=0, causal=0, unigram=0, only_bidirectional=0, only_causal=0)
    for chunk in windows.split(batch_size):
        chunk = chunk.to(device)
        answers = chunk[:, middle]                                                  # (b,)
        blanked = chunk.clone()
        blanked[:, middle] = ids["mask"]
        cls = torch.full((len(chunk), 1), ids["cls"], device=device)
        h = mlm.hidden_states(torch.cat([cls, blanked], dim=1))[:, 1 + middle]      # (b, C)
        mlm_right = mlm.lm_head(h)[:, :n_ord].argmax(-1) == answers                  # (b,)
        h = clm.hidden_states(chunk[:, middle - left:middle])[:, -1]                # (b, C)
        clm_right = clm.lm_head(h)[:, :n_ord].argmax(-1) == answers                  # (b,)
        # The same windows for both models: the counts that disagree are what the comparison rests on.
        for name, right in (("bidirectional", mlm_right), ("causal", clm_right),
                            ("unigram", answers == most_frequent), ("only_bidirectional", mlm_right & ~clm_right),
                            ("only_causal", clm_right & ~mlm_right)):
            hits[name] += right.sum().item()
    n = len(windows)
    return dict({name: hits[name] / n for name in ("bidirectional", "causal", "unigram")}, n=n, left=left,
                right=length - middle - 1, only_bidirectional=hits["only_bidirectional"],
                only_causal=hits["only_causal"])


def paired_difference(only_a, only_b, n):
    """The difference of two accuracies measured on the same n items, and its standard error. Only
    the items where the two disagree carry information (McNemar 1947): with b of them right for A
    alone and c for B alone, the difference is (b - c)/n with standard error sqrt(b + c - (b - c)^2/n)/n,
    usually far smaller than two separate binomial errors, which treat the items as independent."""
    return (only_a - only_b) / n, max(only_a + only_b - (only_a - only_b) ** 2 / n, 0.0) ** 0.5 / n


def print_comparison(result):
    """train_mlm.py --compare-causal's output: the two accuracies with their binomial standard
    errors, and their difference with its paired standard error."""
    se = lambda p: 100 * (p * (1 - p) / result["n"]) ** 0.5                  # binomial standard error
    print(f"blanked middle token of {result['n']:,} validation windows: {result['left']} tokens on the "
          f"left, {result['right']} on the right (seen only by the bidirectional model)")
    for name, label in (("bidirectional", "bidirectional (MLM)"), ("causal", "causal (CLM, left context only)")):
        print(f"{label} accuracy: {100 * result[name]:.1f}% (+/- {se(result[name]):.1f})")
    difference, paired_se = paired_difference(result["only_bidirectional"], result["only_causal"], result["n"])
    print(f"difference: {100 * difference:+.1f} points (+/- {100 * paired_se:.1f}, paired: the same windows; "
          f"{result['only_bidirectional']:,} right for the bidirectional model alone, "
          f"{result['only_causal']:,} for the causal one alone)")
    print(f"unigram baseline: {100 * result['unigram']:.1f}%")


# ----------------------------------------------------------------------------------------------
# The command line.

def main(argv=None):
    parser = plumbing.build_parser(__doc__.split("\n")[0], MLMConfig, MLM_PRESETS)
    parser.add_argument("--fill", metavar="CKPT", help="don't train: fill the blanks of --text with "
                        "this checkpoint and print the top-k tokens for each")
    parser.add_argument("--text", default="Return the [MASK] of the [MASK].",
                        help="with --fill: text with blanks written [MASK] or <|mask|>")
    plumbing.add_flag(parser, "--top-k", 5, "with --fill: predictions per blank", "[1, inf)")
    parser.add_argument("--compare-causal", nargs=2, metavar=("CLM_CKPT", "MLM_CKPT"),
                        help="don't train: blank the middle token of validation windows and compare "
                             "top-1 accuracy of a causal and a bidirectional checkpoint")
    args = parser.parse_args(argv)
    if args.fill:                   # no training: a bidirectional checkpoint fills --text's blanks
        checkpoint, enc = load_pretrained(args.fill, "bidirectional", getattr(args, "data_dir", None),
                                          getattr(args, "cache_dir", None))
        device = plumbing.pick_device(getattr(args, "device", "auto"))        # --device, as training
        model = Transformer.from_checkpoint(checkpoint).to(device)
        tokens = encode_with_blanks(enc, args.text, model.config.block_size)
        return print_fills(enc, tokens, fill_blanks(model, enc, tokens, args.top_k, device))
    if args.compare_causal:         # no training: what the right-hand context is worth, measured
        data_dir, cache_dir = getattr(args, "data_dir", None), getattr(args, "cache_dir", None)
        return print_comparison(compare_causal(*args.compare_causal, data_dir, cache_dir))
    cfg = plumbing.config_from_args(args, MLMConfig, MLM_PRESETS, kind="mlm")
    start = time.perf_counter()
    # The model without the causal mask, trained by train_clm's loop on this file's batches.
    result = train(cfg, causal=False, get_batch=get_mlm_batch, evaluate=evaluate_mlm)
    plot_losses(cfg, result["history"], "mlm", "training masks --mask-prob of the tokens; validation, a fixed 15%")
    if plumbing.is_main_process() and not cfg.quiet:
        fill_in_demo(result["model"], result["dataset"], cfg, next(result["model"].parameters()).device)
    report(cfg, result, start, [f"masked-token accuracy: {100 * result['val_acc']:.1f}%",
                                f"unigram baseline: {100 * result['unigram_acc']:.1f}%"])


if __name__ == "__main__":
    plumbing.run_cli(main)
