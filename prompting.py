"""Prompting: the third route from a pretrained model to a task, with no gradient step at all.

Full fine-tuning moves every weight and LoRA a low-rank few (finetune.py); prompting moves none. A
causal body continues text, so the task is written as text for it to continue: K labelled
examples (the "demonstrations"), then the query, and the class whose word (its verbalizer) is the
likelier continuation wins (GPT-3, Brown et al. 2020):

    Text: <demonstration 1>\nLabel: positive\n\n ... Text: <query>\nLabel:   -> " negative"?

    prediction = argmax_y  log p(verbalizer(y) | prompt)      (summed over the word's tokens)

The K demonstrations are the only labels used (K = 0: zero-shot). Only a causal body can do this:
a bidirectional one was never trained to continue text. In-context learning appears with scale
(Brown et al. 2020; Wei et al. 2022 call it emergent): a body of a few million parameters,
pretrained for minutes, is expected near chance, and the README shows it.

Read in this order: verbalizers (the word per class), demonstrations, text_budget and
shots_that_fit (what fits in the body's positions), prompt_scores (the equation above),
prompt_run (dev and test scored).
finetune.py runs it as a mode, and as rows of its sweep:

    python finetune.py --checkpoint out/clm/ckpt.pt --mode prompt --shots 4
"""
import time

import torch

import data
import tasks
from plumbing import UserError


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
    for name in labelled.label_names:        # one word for two classes: the first would always win
        twins = [other for other in labelled.label_names if words[other] == words[name]]
        if len(twins) > 1:
            raise UserError(f"--verbalizers: {' and '.join(twins)} are both scored by {words[name]!r}; "
                            f"give each class its own word")
    return [" " + words[name] for name in labelled.label_names]


def demonstrations(train, shots, seed):
    """K training examples, balanced over classes and seeded, in shuffled order (all of one class
    last would pull the answer towards it: Zhao et al. 2021)."""
    return tasks.subsample_balanced(train, shots, seed, flag="--shots") if shots else []


PROMPT_PIECES = ("Text:", "\nLabel:", "\n\nText:")


def text_budget(body, enc, shots, words, max_len):
    """Tokens per text such that shots + 1 texts, their labels and the template fit the body."""
    head, mid, sep = (len(enc.encode_ordinary(piece)) for piece in PROMPT_PIECES)
    longest_word = max(len(enc.encode_ordinary(w)) for w in words)
    return min(max_len, (body.config.block_size - head) // (shots + 1) - mid - sep - longest_word)


def shots_that_fit(body, enc, labelled, candidates, cfg):
    """The numbers of demonstrations, among `candidates`, whose prompts leave the query a token."""
    words = verbalizers(labelled, cfg.verbalizers)
    shots = [k for k in candidates if text_budget(body, enc, k, words, cfg.max_len) >= 1]
    if len(shots) < len(candidates):
        print(f"prompting: only {shots} demonstrations fit the body's {body.config.block_size} positions")
    return shots


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
        # Whitespace collapsed, so a text's own line breaks cannot pass for the template's.
        return enc.encode_ordinary(" " + " ".join(text.split()))[:budget]
    prefix = head + [t for text, y in demos for t in text_ids(text) + mid + word_ids[y] + sep]
    queries = [prefix + text_ids(text) + mid for text in texts]           # encoded once per text
    pad, n_text = data.special_ids(enc)["pad"], data.n_ordinary(enc)
    body.eval().to(device)
    scores = torch.empty(len(texts), len(words))
    rows = [(i, c) for i in range(len(texts)) for c in range(len(words))]
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        idx, _ = tasks.collate([queries[i] + word_ids[c] for i, c in chunk], pad)  # (B, T), right-padded
        logits = body(idx.to(device))[0].float()                          # (B, T, V)
        logprobs = torch.log_softmax(logits[..., :n_text], dim=-1)       # over text tokens only
        # Gather each row's scored tokens where they are (a GPU), and bring home only those: the
        # whole (B, T, V) tensor is about 2 GB a batch with GPT-2 and 4 demonstrations.
        row_of, at, token = [], [], []
        for row, (i, c) in enumerate(chunk):
            # the word's j-th token is predicted at the position just before it
            row_of += [row] * len(word_ids[c])
            at += range(len(queries[i]) - 1, len(queries[i]) - 1 + len(word_ids[c]))
            token += word_ids[c]
        where = [torch.tensor(index, device=logprobs.device) for index in (row_of, at, token)]
        picked = logprobs[where[0], where[1], where[2]].cpu()                               # (n,)
        per_row = torch.zeros(len(chunk)).index_add_(0, torch.tensor(row_of), picked)       # (B,)
        for row, (i, c) in enumerate(chunk):
            scores[i, c] = per_row[row]
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
        result[split] = tasks.classification_metrics(predictions, labels)
    result["seconds"] = time.perf_counter() - start
    return result
