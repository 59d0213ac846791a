"""Labelled tasks, and what counts as learning one: splits, padded batches, scores, and the two
rows every classifier is read against.

Pretraining needs only text; a task adds a label y to each text x. Three rules keep the numbers of
finetune.py and prompting.py honest, and this file is where they live:

  1. Three splits. A model trains on train; every choice a person makes (learning rate, pooling,
     epochs, the baseline's regularisation) is made on dev; test is scored and reported, never
     used to choose. A task without an official split is split 80/10/10 within each class, seeded.
  2. Few labels, fairly drawn. `--n-train K` takes a balanced, seeded subsample (round robin over
     the classes), so every method at size K and seed s learns from exactly the same K examples.
  3. Reference rows. Accuracy misleads on imbalanced data, so macro-F1 stands beside it:

         F1_k = 2 TP_k / (2 TP_k + FP_k + FN_k)        macro-F1 = the mean of F1_k over classes k

     and every Transformer row is read against the majority class (the floor: nothing learned)
     and a bag-of-words logistic regression (the bar: what counting words alone achieves).

Read in this order: 1. labelled sets (LabelledSet, the loaders, subsample_balanced); 2. a batch of
texts of different lengths (collate); 3. the scores; 4. the reference rows.
"""
import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import plumbing
import pydocs
from plumbing import UserError


# ----------------------------------------------------------------------------------------------
# 1. Labelled sets: (text, label) pairs in train, dev and test splits.
#
# Three tasks have loaders, and each shows something different. pydocs-topic (6 classes: which
# part of the standard library a docstring documents) is built offline from the pretraining
# corpus, with its dev and test docstrings left out of the pretraining text, so it runs anywhere
# and never scores a text the body has read. SST-2 (Socher et al. 2013) is movie-review
# sentiment, the GLUE task every paper reports. SMS spam is imbalanced, 87% "ham": there accuracy
# flatters and macro-F1 does not. Any text<TAB>label file is a fourth.

@dataclass
class LabelledSet:
    """A task: (text, label id) pairs for each split, and the class names in label-id order.
    Plain lists are enough: the largest split here, SST-2's training set, has 67,349 sentences."""
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
        stored = plumbing.read_json(pydocs_topic_path(cache_dir))
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


def pydocs_topic_path(cache_dir=None):
    """Build (once per Python version) pydocs-topic: which of six stdlib areas a docstring documents
    (pydocs.TOPIC_AREAS). Splits by a hash of the summary line (pydocs.topic_split), and every class
    cut to the smallest one's size in each split. The pydocs corpus leaves the dev and test
    docstrings out (pydocs.corpus_path), so the body never pretrains on what it is scored on."""
    path = pydocs.cache_path(cache_dir, "pydocs-topic", ".json")
    if path.exists():
        return path
    label_names = sorted(pydocs.TOPIC_AREAS)
    labelled = {"train": [], "dev": [], "test": []}
    for source, text in pydocs.documents():
        topic = pydocs.topic_of(source)
        if topic is not None:
            labelled[pydocs.topic_split(text)].append((text, label_names.index(topic)))
    rng = random.Random(0)
    for split, examples in labelled.items():  # balance: every class cut to the smallest one
        by_label = [[e for e in examples if e[1] == k] for k in range(len(label_names))]
        n = min(len(group) for group in by_label)
        labelled[split] = [e for group in by_label for e in rng.sample(group, n)]
        rng.shuffle(labelled[split])
    plumbing.write_atomic(path, json.dumps(dict(labelled, label_names=label_names)).encode())
    return path


def subsample_balanced(examples, k, seed=0, flag="--n-train"):
    """k examples, as equal as possible across classes (round robin over shuffled classes); flag:
    the option that asked for k, named if k is out of range."""
    if not 1 <= k <= len(examples):
        raise UserError(f"cannot take {k} examples from {len(examples)}; use 1 <= {flag} <= {len(examples)}")
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


def training_text(name, data_dir=None, cache_dir=None):
    """A labelled set's TRAINING texts without labels, one per line: in-domain text to pretrain on
    (domain-adaptive pretraining, Gururangan et al. 2020). Dev and test are never included."""
    return "".join(" ".join(text.split()) + "\n" for text, _ in load_labelled(name, data_dir, cache_dir).train)


# ----------------------------------------------------------------------------------------------
# 2. A batch of texts of different lengths.

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


# ----------------------------------------------------------------------------------------------
# 3. The scores.

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


# ----------------------------------------------------------------------------------------------
# 4. The reference rows: bag-of-words logistic regression on the same examples, and the
#    majority class.

# The classic baseline of text classification, and a strong one with few labels: every word is a
# feature, its order is thrown away. If a fine-tuned Transformer cannot beat it, the Transformer
# and its pretraining bought nothing for this task. A word is a run of letters and digits, with an apostrophe suffix
# kept ("don't", "it's"): negations matter for sentiment.
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

    def closure():                        # L-BFGS evaluates the loss several times per step
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
    """Always the most frequent label of `train`: the floor that any learning must clear (on a test
    set that is 58% one class, 0.58 accuracy means nothing has been learned). Pass the whole
    training split, not a run's K examples: a balanced subsample has no majority, and its tie
    would pick a class by chance."""
    majority = Counter(y for _, y in train).most_common(1)[0][0]
    return {name: classification_metrics([majority] * len(examples), [y for _, y in examples])
            for name, examples in (("dev", dev), ("test", test))}
