"""Text in, integers out: corpora, tokenizers, batches, and the one metric that compares them.

A language model never sees text, only integers. This file is everything between a pile of text
and the (B, T) tensors of token ids that model.py consumes:

    corpus      one long string of text to learn from. `pydocs` (the default) needs no network:
                the English documentation that ships inside every Python (the pydoc topics plus
                the docstrings of the standard library). `shakespeare` is nanoGPT's 1 MB classic.
    tokenizer   turns a string into a list of token ids and back, losslessly. All three here are
                byte-level: text -> UTF-8 bytes -> tokens, so any string round-trips. `bytes` has
                one token per byte (256); `bpe:N` learns N-256 merges of frequent adjacent pairs
                (byte pair encoding, Sennrich et al. 2016, applied to bytes as in GPT-2, Radford
                et al. 2019); `gpt2` is GPT-2's own 50,000 merges. Four special tokens sit on top
                of every vocabulary: <|endoftext|> <|mask|> <|cls|> <|pad|> at ids n_ordinary+0..3.
    dataset     the corpus split 90/10 by characters (first 90% train, last 10% validation, as
                nanoGPT, so the validation text is unseen and contiguous), each part encoded once
                and cached on disk as a flat array of token ids (np.memmap).
    batch       B random windows of T+1 consecutive tokens: x is the first T, y the last T, so
                y[b, t] is the token that follows x[b, :t+1], the target of next-token prediction.

Why bits per byte. The loss is nats per *token*, and a token means something different for each
tokenizer: a bytes token is one byte, a bpe:4096 token is about four. To compare runs with
different tokenizers, convert to the information per unit of the underlying text:

    bits per byte = (nats per token / ln 2) * (tokens / bytes)

Total nats over the validation text are the same quantity whatever the tokenization (the
probability the model gives the text), so dividing by the byte count gives a tokenizer-free
number; per character works the same way (Shannon 1951 measured English in bits per character).

Read in this order: corpora; tokenizers, with byte pair encoding twice, as its definition
(train_bpe_simple, slow and short) and as the fast trainer the runs use (train_bpe, tested to
give the same merges), and how a tokenizer is saved (tiktoken's file of ranks); encoded datasets;
then batches and bits_per_unit. A trained tokenizer and an encoded corpus are cached on disk, and
each cache is read back beside the code that writes it, checked whole or made again. Where files
come from (data dir, cache, download) and how they are written atomically is plumbing.py's
business, and how pydocs is gathered from this Python's documentation is pydocs.py's; BERT's
masking lives in train_mlm.py and the labelled sets in tasks.py, beside the code that uses them.
"""
import base64
import json
import math
import os
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from heapq import heapify, heappop, heappush
from pathlib import Path

import numpy as np
import tiktoken
import torch

import pydocs
from plumbing import UserError, fingerprint, obtain_data_file, read_text, resolve_cache_dir, write_atomic

SPECIAL_TOKENS = ("<|endoftext|>", "<|mask|>", "<|cls|>", "<|pad|>")  # ids n_ordinary + 0..3
# GPT-2's pre-tokenization pattern, as tiktoken writes it (r50k_base): the possessive `++` and the
# `\s++$|...|\s` tail only make it faster; it splits exactly like GPT-2's original
# 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# The same split in the stdlib `re`, which has no \p{L}: a letter is a word character that is not
# a digit or "_" ([^\W\d_]), a number is \d, the rest is "not space, letter or digit". It differs
# from \p{L}/\p{N} only on rare characters (e.g. "²" counts as a letter); that can only make the
# BPE trainer's pieces differ a little from tiktoken's, never break a round trip. (On the pydocs
# training text the two give identical pieces: 17,408 distinct, checked against `regex`.)
SPLIT_RE = re.compile(r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")
# The trainer cuts longer pieces into chunks of this many characters. Text without spaces (DNA,
# base64, minified code) would otherwise be one giant piece that every merge rescans: quadratic
# time. 128 is above the longest piece of our corpora (pydocs: 93, a table border; shakespeare:
# 16), so their tokenizers are unchanged.
MAX_PIECE_CHARS = 128
VAL_FRACTION = 0.1         # nanoGPT's split: first 90% of characters train, last 10% validate


# ----------------------------------------------------------------------------- corpora

@dataclass(frozen=True)
class Corpus:
    name: str
    text: str
    fingerprint: str  # first 12 hex of sha256(text): names the exact text a result came from

    def __repr__(self):  # never print 2 MB by accident
        return f"Corpus({self.name!r}, {len(self.text):,} chars, {self.fingerprint})"


def load_corpus(name, data_dir=None, cache_dir=None, verbose=False):
    """A built-in corpus ("pydocs", "shakespeare") or a .txt file / folder of .txt files."""
    if name == "pydocs":
        path = pydocs.corpus_path(cache_dir, verbose)   # built from this Python once (pydocs.py)
        text = read_text(path)
    elif name == "shakespeare":
        text = read_text(obtain_data_file("tinyshakespeare.txt", data_dir, cache_dir))
    elif Path(name).is_dir():
        files = sorted(Path(name).rglob("*.txt"))
        if not files:
            raise UserError(f"corpus folder {name} has no .txt files; add some or pass a .txt file")
        text = "\n\n".join(read_text(f) for f in files)
    elif Path(name).is_file():
        text = read_text(name)
    elif os.path.exists(name):                          # /dev/null, a pipe: no file of text
        raise UserError(f"corpus {name} is neither a text file nor a folder; give a .txt file or a folder")
    elif os.sep in name or "/" in name or name.endswith(".txt"):
        raise UserError(f"corpus file {name} does not exist; check the path")
    else:
        raise UserError(f"unknown corpus {name!r}; use pydocs, shakespeare, or a path to a .txt "
                        f"file or a folder of .txt files")
    if not text.strip():
        raise UserError(f"corpus {name} is empty; give it some text")
    return Corpus(name, text, fingerprint(text))


# ----------------------------------------------------------------------------- tokenizers
# Byte pair encoding (Sennrich et al. 2016; on bytes as in GPT-2, Radford et al. 2019), twice: its
# definition, short and slow, then the trainer the runs use, fast. Then how a learned table becomes
# a tokenizer, and how it is saved.

def pre_tokens(text):
    """{piece: count}: the text cut by SPLIT_RE into words, numbers, punctuation runs and spaces,
    each cut again into chunks of MAX_PIECE_CHARS. Merges never cross a piece's edge, so " the"
    and "the" stay different tokens and no token spans two words."""
    return Counter(piece[i:i + MAX_PIECE_CHARS] for piece in SPLIT_RE.findall(text)
                   for i in range(0, len(piece), MAX_PIECE_CHARS))


def merge_pair(word, a, b, new):
    """Replace every adjacent (a, b) in word (left to right) by the single token `new`."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def train_bpe_simple(text, vocab_size):
    """Byte-level BPE, by its definition. Start from the 256 byte tokens; repeat until there are
    vocab_size tokens: count every adjacent pair of tokens in the text, and merge the most frequent
    pair into a new token (ties: the pair whose bytes sort first). Frequent strings ("the",
    " def", "\\n    ") become single tokens, so text gets shorter in tokens while staying exactly
    recoverable. Returns {token bytes: rank}, ranks in the order the merges were learned.

    Each merge recounts the whole text: fine for a page, hours for a corpus. train_bpe below
    learns the same merges in seconds."""
    words = pre_tokens(text)                                  # each distinct piece once, with its count
    tokens = {word: list(word.encode("utf-8")) for word in words}     # each piece as token ids
    token_bytes = [bytes([i]) for i in range(256)]            # id -> bytes
    ids = {t: i for i, t in enumerate(token_bytes)}           # bytes -> id
    while len(ids) < vocab_size:
        pair_counts = Counter()
        for word, count in words.items():
            for pair in zip(tokens[word], tokens[word][1:]):
                pair_counts[pair] += count
        if not pair_counts:
            raise UserError(f"bpe:{vocab_size}: the training text allows only {len(ids)} tokens; "
                            f"use a smaller N or a larger corpus")
        a, b = min(pair_counts, key=lambda p: (-pair_counts[p], token_bytes[p[0]], token_bytes[p[1]]))
        # Two different merges can spell the same bytes ("a"+"bc", "ab"+"c"): reuse that token.
        new = ids.setdefault(token_bytes[a] + token_bytes[b], len(ids))
        if new == len(token_bytes):
            token_bytes.append(token_bytes[a] + token_bytes[b])
        for word in tokens:
            tokens[word] = merge_pair(tokens[word], a, b, new)
    return ids


def train_bpe(text, vocab_size):
    """The same merges as train_bpe_simple, in the same order (tested on real text), fast.

    Efficiency, the two classic tricks: (1) as in the definition, each distinct piece ("word") is
    counted once, weighted by its frequency; (2) keep pair counts and an index pair -> words
    containing it, and after each merge update only the words that contained the merged pair,
    instead of recounting the whole text. Both need short words, hence MAX_PIECE_CHARS: with it,
    training time grows about linearly with the text.
    """
    counts = pre_tokens(text)
    words = [list(w.encode("utf-8")) for w in counts]   # each word as a list of token ids
    freqs = list(counts.values())
    token_bytes = [bytes([i]) for i in range(256)]       # id -> bytes
    ids = {t: i for i, t in enumerate(token_bytes)}      # bytes -> id
    pair_counts, where = defaultdict(int), defaultdict(set)
    for w, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freq
            where[pair].add(w)
    # Max-heap of pairs by (count desc, then the smaller pair of byte strings: a deterministic tie
    # break). Stale entries (the count changed since the push) are skipped when popped.
    heap = [(-c, token_bytes[a], token_bytes[b], a, b) for (a, b), c in pair_counts.items()]
    heapify(heap)
    while len(ids) < vocab_size:
        while heap and pair_counts.get(heap[0][3:], 0) != -heap[0][0]:
            heappop(heap)
        if not heap:
            raise UserError(f"bpe:{vocab_size}: the training text allows only {len(ids)} tokens; "
                            f"use a smaller N or a larger corpus")
        _, bytes_a, bytes_b, a, b = heappop(heap)
        # Two different merges can spell the same bytes ("a"+"bc", "ab"+"c"): reuse that token.
        new = ids.setdefault(bytes_a + bytes_b, len(ids))
        if new == len(token_bytes):
            token_bytes.append(bytes_a + bytes_b)
        delta = defaultdict(int)
        for w in where.pop((a, b)):
            old, freq = words[w], freqs[w]
            words[w] = merge_pair(old, a, b, new)
            for pair in zip(old, old[1:]):
                delta[pair] -= freq
            for pair in zip(words[w], words[w][1:]):
                delta[pair] += freq
                where[pair].add(w)  # words that lost a pair stay indexed: harmless, merge no-ops
        for pair, d in delta.items():
            if d:
                pair_counts[pair] += d
                if pair_counts[pair] > 0:
                    heappush(heap, (-pair_counts[pair], token_bytes[pair[0]], token_bytes[pair[1]]) + pair)
        pair_counts.pop((a, b), None)
    return {t: i for i, t in enumerate(token_bytes)}


# Every tokenizer is a tiktoken.Encoding: a table `mergeable ranks` {token bytes: id}, the split
# pattern above, and our special tokens. tiktoken encodes by splitting text into pieces with the
# pattern, then inside each piece repeatedly merging the adjacent pair whose concatenation has the
# lowest rank: with ranks in the order a BPE trainer learned its merges, that replays the merges.

def make_encoding(name, ranks):
    n = len(ranks)
    enc = tiktoken.Encoding(name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={tok: n + i for i, tok in enumerate(SPECIAL_TOKENS)})
    probe = "héllo, 世界 🙂\n\tend  of\r\n  text 'll ²"
    assert enc.decode(enc.encode_ordinary(probe)) == probe, f"tokenizer {name} does not round-trip"
    return enc

def special_ids(enc):
    return dict(zip(("eot", "mask", "cls", "pad"), map(enc.encode_single_token, SPECIAL_TOKENS)))

def n_ordinary(enc):
    """Number of ordinary (mergeable) tokens; the specials are the ids right after them."""
    return special_ids(enc)["eot"]

# A tokenizer is saved as its table of ranks, in tiktoken's file format (GPT-2's gpt2.tiktoken is
# one): in the cache, and inside every checkpoint, so that a model always travels with its tokenizer.

def ranks_text(ranks):
    """tiktoken's ranks format: one `base64(token bytes) rank` line per token, by rank."""
    return "".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in sorted(ranks.items(), key=lambda x: x[1]))

def parse_ranks(text, source):
    """The inverse of ranks_text, checked: ranks 0..n-1 including all 256 single bytes. (We do not
    use tiktoken.load.load_tiktoken_bpe: it keeps a hidden copy in /tmp/data-gym-cache keyed by the
    file's path and serves that stale copy when the file at the same path changes.)"""
    ranks = {}
    for number, line in enumerate(text.splitlines(), 1):
        try:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise UserError(f"{source} line {number} is not 'base64-token rank'; "
                            f"replace it with a valid tiktoken ranks file") from None
    if sorted(ranks.values()) != list(range(len(ranks))) or any(bytes([b]) not in ranks for b in range(256)):
        raise UserError(f"{source}: ranks must be 0..n-1 and include all 256 single bytes; "
                        f"replace it with a valid tiktoken ranks file")
    return ranks

def tokenizer_state(enc):
    """Everything needed to rebuild enc (plain strings: safe for weights_only checkpoints)."""
    return dict(name=enc.name, ranks=ranks_text({enc.decode_single_token_bytes(i): i
                                                 for i in range(n_ordinary(enc))}))

def tokenizer_identity(enc):
    """Name, size and a fingerprint of the exact vocabulary (ordinary tokens in id order, then the
    specials), recorded with every dataset and checkpoint. All encodings here share GPT2_PATTERN,
    so the vocabulary determines the tokenization."""
    blob = tokenizer_state(enc)["ranks"] + "\n".join(SPECIAL_TOKENS)
    return dict(name=enc.name, n_vocab=enc.n_vocab, fingerprint=fingerprint(blob))

def tokenizer_from_state(state, identity):
    """The tokenizer a checkpoint saved (tokenizer_state), checked to be the one it records
    (`identity`, tokenizer_identity's): a damaged or edited file is refused, not used to mis-read text."""
    try:
        enc = make_encoding(state["name"], parse_ranks(state["ranks"], "the checkpoint's tokenizer"))
        recorded = identity["fingerprint"]
    except (KeyError, TypeError, AttributeError):             # not the tables tokenizer_state writes
        raise UserError("the checkpoint's tokenizer record is damaged or edited; use an intact copy") from None
    if tokenizer_identity(enc)["fingerprint"] != recorded:
        raise UserError(f"the checkpoint's tokenizer does not rebuild into the one it records "
                        f"({identity.get('name')}, {recorded}): the file is damaged or edited; "
                        f"use an intact copy")
    return enc


def cached_ranks(path, size):
    """A BPE's ranks from the cache, read whole and checked (the format, and `size` tokens); None if
    there is none yet, or if it is damaged, which is said in one line: it is then trained again."""
    if not path.exists():
        return None
    try:
        ranks = parse_ranks(path.read_bytes().decode("ascii"), path)     # base64 and digits only
        if len(ranks) != size:
            raise UserError(f"{len(ranks)} tokens, not {size}")
        return ranks
    except (UserError, OSError, UnicodeDecodeError) as error:
        print(f"note: the cached tokenizer {path} is damaged ({str(error).split(';')[0]}); training it "
              f"again", file=sys.stderr)
        return None


def get_tokenizer(name, text=None, cache_dir=None, data_dir=None, verbose=False):
    """"bytes", "gpt2" (offline from gpt2.tiktoken in the data dir) or "bpe:N" trained on `text`."""
    if name == "bytes":
        return make_encoding("bytes", {bytes([i]): i for i in range(256)})
    if name == "gpt2":
        path = obtain_data_file("gpt2/gpt2.tiktoken", data_dir, cache_dir, also=("gpt2.tiktoken",))
        return make_encoding("gpt2", parse_ranks(read_text(path), path))
    if name.startswith("bpe:"):
        size = name[4:]
        if not (size.isascii() and size.isdigit()) or int(size) < 256:
            raise UserError(f"tokenizer {name!r}: N must be an integer >= 256 (the byte tokens), "
                            f"e.g. bpe:4096")
        if text is None:
            raise ValueError(f"{name} is learned from a text: pass text= (the training split)")
        key = f"bpe{int(size)}-{fingerprint(text)}"
        path = resolve_cache_dir(cache_dir) / "tokenizers" / f"{key}.tiktoken"
        ranks = cached_ranks(path, int(size))
        trained = ranks is None
        if trained:
            start = time.time()
            ranks = train_bpe(text, int(size))
            seconds = time.time() - start
        enc = make_encoding(key, ranks)
        sample = text[:20_000]
        assert enc.decode(enc.encode_ordinary(sample)) == sample, f"{path} does not round-trip"
        if trained:                         # cached only once it is known to round-trip
            ranks_file = ranks_text(ranks).encode()     # the text a later run reads back (cached_ranks)
            write_atomic(path, ranks_file)
            if verbose:
                print(f"trained {name} on {len(text):,} chars in {seconds:.1f} s -> {path}")
        return enc
    raise UserError(f"unknown tokenizer {name!r}; use bytes, gpt2 or bpe:N (e.g. bpe:4096)")


# ----------------------------------------------------------------------------- encoded datasets

@dataclass
class Dataset:
    train: np.ndarray  # np.memmap of token ids, uint16 (or uint32 past 65,536 tokens)
    val: np.ndarray
    enc: tiktoken.Encoding
    corpus: dict       # name, fingerprint
    meta: dict         # token/byte/char counts, dtype, corpus and tokenizer identity


def encode_text(enc, text, chunk_chars=1 << 18):
    """enc.encode_ordinary(text) as a numpy array, encoded in parallel chunks.

    Chunks are cut only at a newline that follows a non-space character: no piece of the split
    pattern can span such a point, so the result equals encoding the whole text at once.
    """
    pieces, start = [], 0
    while len(text) - start > chunk_chars:
        cut = text.find("\n", start + chunk_chars)
        while cut != -1 and text[cut - 1].isspace():
            cut = text.find("\n", cut + 1)
        if cut == -1:
            break
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    encoded = enc.encode_ordinary_batch(pieces, num_threads=min(8, os.cpu_count() or 1))
    return np.fromiter((t for piece in encoded for t in piece), dtype=np.int64)


def cached_dataset(folder):
    """The meta.json of a cached encoded dataset, checked against its token files; None if there is
    none yet, or if anything is off (meta.json cut, edited or not JSON, a token file missing or of
    another length than meta.json records: a full disk, an interrupted copy), which is then said in
    one line and the dataset encoded again. meta.json is written last, so a whole one vouches for
    the rest once the lengths agree."""
    path = folder / "meta.json"
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_bytes())
        if meta["dtype"] not in ("uint16", "uint32"):
            raise ValueError(f"dtype {meta['dtype']!r} is none that prepare_dataset writes")
        for split in ("train", "val"):
            counts = (meta[f"n_{split}_tokens"], meta[f"{split}_chars"], meta[f"{split}_bytes"])
            if not all(type(count) is int and count >= 0 for count in counts):
                raise ValueError(f"its {split} counts {counts} are not counts")
            expected = meta[f"n_{split}_tokens"] * np.dtype(meta["dtype"]).itemsize
            size = (folder / f"{split}.bin").stat().st_size if (folder / f"{split}.bin").exists() else None
            if size != expected:
                raise ValueError(f"{split}.bin holds {size} bytes, meta.json says {expected}")
        return meta
    except (ValueError, KeyError, TypeError) as error:                # JSONDecodeError is a ValueError
        print(f"note: the cached dataset in {folder} is damaged ({error}); encoding it again", file=sys.stderr)
        return None


def prepare_dataset(corpus_name, tokenizer, data_dir=None, cache_dir=None, verbose=True):
    """Load a corpus, split it 90/10 by characters, encode both parts once, memory-map them.
    `tokenizer` is a name for get_tokenizer, or a ready encoding (a checkpoint's, for --init-from).

    The cache key is (corpus fingerprint, tokenizer fingerprint): change either and it re-encodes.
    bpe:N is trained on the train part only, so the tokenizer never saw the validation text.
    """
    corpus = load_corpus(corpus_name, data_dir, cache_dir, verbose)
    cut = int(len(corpus.text) * (1 - VAL_FRACTION))
    parts = {"train": corpus.text[:cut], "val": corpus.text[cut:]}
    enc = (get_tokenizer(tokenizer, parts["train"], cache_dir, data_dir, verbose)
           if isinstance(tokenizer, str) else tokenizer)
    identity = tokenizer_identity(enc)
    safe_name = re.sub(r"[^\w.-]", "_", Path(corpus.name).name)
    folder = resolve_cache_dir(cache_dir) / "datasets" / f"{safe_name}-{corpus.fingerprint}-{identity['fingerprint']}"
    names = dict(corpus=dict(name=corpus.name, fingerprint=corpus.fingerprint), tokenizer=identity)
    meta = cached_dataset(folder)             # None: not cached yet, or damaged (and said so)
    cached = meta is not None
    if not cached:
        dtype = "uint16" if enc.n_vocab <= 1 << 16 else "uint32"
        meta = dict(names, dtype=dtype)
        for split, text in parts.items():
            tokens = encode_text(enc, text).astype(dtype)
            write_atomic(folder / f"{split}.bin", tokens.tobytes())
            meta.update({f"n_{split}_tokens": len(tokens), f"{split}_chars": len(text),
                         f"{split}_bytes": len(text.encode("utf-8"))})
        write_atomic(folder / "meta.json", json.dumps(meta, indent=1).encode())
    meta.update(names)            # the same text and vocabulary, maybe named otherwise (bpe:256 is bytes)
    arrays = {split: np.memmap(folder / f"{split}.bin", dtype=meta["dtype"], mode="r")
              if meta[f"n_{split}_tokens"] else np.zeros(0, meta["dtype"]) for split in parts}
    if verbose:
        n_tokens = meta["n_train_tokens"] + meta["n_val_tokens"]
        print(f"{corpus.name}: {len(corpus.text.encode()) / 1e6:.2f} MB, fingerprint "
              f"{corpus.fingerprint} | {enc.name} ({enc.n_vocab} tokens): {meta['n_train_tokens']:,} "
              f"train + {meta['n_val_tokens']:,} val tokens, "
              f"{(meta['train_bytes'] + meta['val_bytes']) / max(n_tokens, 1):.2f} bytes/token"
              f"{' (cached)' if cached else ''}")
    return Dataset(arrays["train"], arrays["val"], enc, meta["corpus"], meta)


# ----------------------------------------------------------------------------- batches and the metric

def get_batch(tokens, batch_size, block_size, device, generator):
    """B random windows: x (B, T) and y (B, T) int64 with y[:, t] = x[:, t + 1] in the text.

    Start positions come from the CPU `generator`, so saving its state saves where the data
    stream is; resuming with it reproduces the same batches.
    """
    starts = torch.randint(len(tokens) - block_size, (batch_size,), generator=generator)  # (B,)
    offsets = starts.numpy()[:, None] + np.arange(block_size + 1)                     # (B, T+1)
    window = torch.from_numpy(np.asarray(tokens[offsets]).astype(np.int64))            # one gather
    x, y = window[:, :-1].contiguous(), window[:, 1:].contiguous()                     # (B, T) each
    return to_device(x, device), to_device(y, device)


def to_device(tensor, device):
    """A CPU tensor on the device; to a GPU from pinned (page-locked) memory without waiting, so
    that the copy overlaps with the computation already queued there."""
    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def bits_per_unit(nats_per_token, n_tokens, n_units):
    """Mean loss per token -> bits per byte (n_units = bytes) or per character (n_units = chars).

        bits/unit = nats_per_token / ln 2 * n_tokens / n_units

    e.g. 1.0 nat/token over 1,000 tokens that spell 4,000 bytes = 1.4427 * 0.25 = 0.361 bits/byte.
    """
    return nats_per_token / math.log(2) * n_tokens / n_units
