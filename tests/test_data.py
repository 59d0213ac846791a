"""Tests for data.py: tokenizers round-trip, BPE is the algorithm it claims, caches are reused,
batches are shifted windows, and bad input fails with a message that says what to do.

Hermetic: every test gets its own cache dir, no data dir from the environment, and no network
(tests/conftest.py blocks every lookup of a host), so nothing here reads ../shared or the internet.
"""
import hashlib
import io
import math
import random
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import tasks  # noqa: E402
import plumbing  # noqa: E402

UNICODE = "naïve café, 日本語のテキスト, emoji 🙂🚀, tabs\tand\nnew\r\nlines,   runs  of   spaces \n\n\t x² _under_score"


@pytest.fixture(autouse=True)
def hermetic(tmp_path, monkeypatch):
    monkeypatch.setenv("PTFT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PTFT_DATA_DIR", raising=False)


def sample_text(n_words=4000, seed=0):
    """Pseudo-English with code-ish lines: enough repeated structure for BPE to find merges."""
    rng = random.Random(seed)
    vocab = ["the", "model", "token", "learns", "a", "of", "def", "return", "self", "value",
             "text", "naïve", "日本", "🙂", "x = 1", "print(x)", "and", "is", "it's", "we'll"]
    lines = []
    while sum(len(line.split()) for line in lines) < n_words:
        lines.append(" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 12))))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- tokenizers

def test_bytes_and_bpe_round_trip_any_unicode(tmp_path):
    text = sample_text()
    for enc in (data.get_tokenizer("bytes"), data.get_tokenizer("bpe:330", text=text)):
        for s in (UNICODE, text[:500], "", " ", "\n\n\n", "a" * 100, "🙂" * 7, "x²"):
            assert enc.decode(enc.encode_ordinary(s)) == s, (enc.name, s)
    assert data.get_tokenizer("bytes").encode_ordinary("é") == list("é".encode())


def test_bpe_is_deterministic_matches_definition_and_compresses():
    text = sample_text(1500)
    ranks = data.train_bpe(text, 330)
    assert ranks == data.train_bpe(text, 330)        # deterministic
    assert ranks == data.train_bpe_simple(text, 330)  # same merges, same order as the definition
    assert sorted(ranks.values()) == list(range(330))
    bpe, raw = data.make_encoding("t", ranks), data.get_tokenizer("bytes")
    assert len(bpe.encode_ordinary(text)) < 0.6 * len(raw.encode_ordinary(text))


def test_bpe_definition_by_hand():
    """'ab ab ab cd' cuts into 'ab', ' ab' x2, ' cd'. Pair counts: (a,b) 3, (' ',a) 2, (' ',c) 1,
    (c,d) 1. First 'ab'; then ' ' + 'ab' (2); then a tie at 1, broken by the smaller bytes: ' c'."""
    ranks = data.train_bpe_simple("ab ab ab cd", 259)
    assert {t: r for t, r in ranks.items() if r >= 256} == {b"ab": 256, b" ab": 257, b" c": 258}
    assert data.train_bpe("ab ab ab cd", 259) == ranks


def test_fast_bpe_learns_the_definitions_merges_on_real_text(pydocs_cache):
    text = data.load_corpus("pydocs", cache_dir=pydocs_cache).text[:30_000]
    assert data.train_bpe(text, 360) == data.train_bpe_simple(text, 360)


def test_bpe_on_text_without_spaces_is_not_rescanned_every_merge(monkeypatch):
    """A DNA-like string is one pre-token; uncut, every merge would walk all of it, so the work
    would grow as merges x text. Count the tokens merge_pair walks (deterministic, unlike a timer):
    cut into MAX_PIECE_CHARS chunks, 2.5x the merges cost well under 2x the work (uncut: 3.6x)."""
    work = []
    original = data.merge_pair
    monkeypatch.setattr(data, "merge_pair", lambda word, *args: work.append(len(word)) or original(word, *args))
    rng = random.Random(0)
    dna = "".join(rng.choice("ACGT") for _ in range(20_000))
    totals = []
    for vocab_size in (400, 1000):
        work.clear()
        enc = data.make_encoding("dna", data.train_bpe(dna, vocab_size))
        assert enc.decode(enc.encode_ordinary(dna)) == dna
        assert max(work) <= data.MAX_PIECE_CHARS
        totals.append(sum(work))
    assert totals[1] < 2 * totals[0]


def test_bpe_cached_loaded_in_tiktoken_and_special_ids(tmp_path):
    text = sample_text()
    enc = data.get_tokenizer("bpe:300", text=text, cache_dir=tmp_path)
    files = list((tmp_path / "tokenizers").glob("*.tiktoken"))
    assert len(files) == 1 and enc.name == f"bpe300-{data.fingerprint(text)}"
    mtime = files[0].stat().st_mtime_ns
    again = data.get_tokenizer("bpe:300", text=text, cache_dir=tmp_path)
    assert files[0].stat().st_mtime_ns == mtime
    assert data.tokenizer_identity(again) == data.tokenizer_identity(enc)
    assert data.tokenizer_identity(enc) != data.tokenizer_identity(data.get_tokenizer("bpe:301", text=text))
    for tok in (enc, data.get_tokenizer("bytes")):
        n = data.n_ordinary(tok)
        assert data.special_ids(tok) == dict(eot=n, mask=n + 1, cls=n + 2, pad=n + 3)
        assert tok.n_vocab == n + 4
        assert tok.decode([n + 1]) == "<|mask|>"
    assert data.n_ordinary(enc) == 300 and data.n_ordinary(data.get_tokenizer("bytes")) == 256


def test_a_trained_tokenizer_is_cached_only_once_it_round_trips(tmp_path, monkeypatch):
    """A tokenizer that fails its round-trip check is never written to the cache, where every later
    run would load it, fail the same check, and never train a new one."""
    make_encoding = data.make_encoding

    def broken(name, ranks):
        enc = make_encoding(name, ranks)
        monkeypatch.setattr(enc, "decode", lambda ids: "something else")
        return enc
    monkeypatch.setattr(data, "make_encoding", broken)
    with pytest.raises(AssertionError, match="does not round-trip"):
        data.get_tokenizer("bpe:300", text=sample_text(), cache_dir=tmp_path)
    assert not list(tmp_path.rglob("*.tiktoken"))
    monkeypatch.setattr(data, "make_encoding", make_encoding)
    data.get_tokenizer("bpe:300", text=sample_text(), cache_dir=tmp_path)
    assert len(list(tmp_path.rglob("*.tiktoken"))) == 1


def test_tokenizer_state_survives_a_weights_only_checkpoint(tmp_path):
    enc = data.get_tokenizer("bpe:300", text=sample_text())
    torch.save(dict(tokenizer_state=data.tokenizer_state(enc)), tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", map_location="cpu", weights_only=True)["tokenizer_state"]
    rebuilt = data.tokenizer_from_state(state, data.tokenizer_identity(enc))
    assert data.tokenizer_identity(rebuilt) == data.tokenizer_identity(enc)
    assert rebuilt.encode_ordinary(UNICODE) == enc.encode_ordinary(UNICODE)
    # A state that does not rebuild into the vocabulary recorded beside it (edited: two tokens'
    # ranks swapped, still a valid table) is refused rather than used.
    lines = state["ranks"].splitlines()
    lines[298], lines[299] = lines[298].split()[0] + " 299", lines[299].split()[0] + " 298"
    with pytest.raises(data.UserError, match="does not rebuild into the one it records"):
        data.tokenizer_from_state(dict(state, ranks="\n".join(lines)), data.tokenizer_identity(enc))
    for bad_state, bad_identity in ((state, "garbage"), ([1, 2], data.tokenizer_identity(enc)),
                                    (dict(state, ranks=5), data.tokenizer_identity(enc))):
        with pytest.raises(data.UserError, match="tokenizer record is damaged or edited"):
            data.tokenizer_from_state(bad_state, bad_identity)


def write_ranks_file(path, merges):
    ranks = {bytes([i]): i for i in range(256)}
    for merged in merges:
        ranks[merged] = len(ranks)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data.ranks_text(ranks))


@pytest.mark.parametrize("relative", ["gpt2/gpt2.tiktoken", "gpt2.tiktoken"])
def test_gpt2_loads_offline_from_a_ranks_file_in_the_data_dir(tmp_path, relative):
    write_ranks_file(tmp_path / "data" / relative, [b"th", b"the", b" the"])
    enc = data.get_tokenizer("gpt2", data_dir=tmp_path / "data")
    assert enc.name == "gpt2"
    assert enc.encode_ordinary("the the") == [257, 258]
    assert data.special_ids(enc) == dict(eot=259, mask=260, cls=261, pad=262)
    assert enc.decode(enc.encode_ordinary(UNICODE)) == UNICODE


def test_gpt2_missing_offline_or_malformed_says_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(data.UserError, match=r"gpt2\.tiktoken not found.*--data-dir"):
        data.get_tokenizer("gpt2", data_dir=tmp_path)
    (tmp_path / "gpt2.tiktoken").write_text("not a ranks file\n")
    with pytest.raises(data.UserError, match="line 1"):
        data.get_tokenizer("gpt2", data_dir=tmp_path)


def test_split_pattern_approximates_gpt2_regex():
    regex = pytest.importorskip("regex")  # tiktoken's own dependency; only used here, to check
    gpt2 = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    text = UNICODE.replace("x²", "x2") + sample_text(300) + "  def f(a_b, c=3.14):\n\treturn a_b  \n"
    assert data.SPLIT_RE.findall(text) == gpt2.findall(text)


def test_bad_tokenizer_names():
    for name, message in [("bpe:100", ">= 256"), ("bpe:lots", "integer"), ("bpe:²⁵⁶", "integer"), ("wordpiece", "unknown tokenizer")]:
        with pytest.raises(data.UserError, match=message):
            data.get_tokenizer(name, text="some text")
    with pytest.raises(data.UserError, match="smaller N"):
        data.get_tokenizer("bpe:400", text="tiny text")


# ----------------------------------------------------------------------------- corpora and datasets

def test_encode_text_in_chunks_equals_whole_text():
    # Trailing spaces before blank lines: whitespace runs that a careless cut would split.
    text = sample_text(3000, seed=1).replace("\n", " \n\n").replace("model", "model  \n") + UNICODE
    enc = data.get_tokenizer("bpe:320", text=text)
    whole = enc.encode_ordinary(text)
    assert data.encode_text(enc, text, chunk_chars=97).tolist() == whole


def test_prepare_dataset_splits_90_10_and_reuses_the_cache(tmp_path, monkeypatch):
    text = sample_text(3000)
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    ds = data.prepare_dataset(str(tmp_path / "corpus.txt"), "bpe:300", cache_dir=tmp_path, verbose=False)
    cut = int(len(text) * 0.9)
    assert (ds.meta["train_chars"], ds.meta["val_chars"]) == (cut, len(text) - cut)
    assert ds.enc.decode(ds.train.tolist()) == text[:cut] and ds.enc.decode(ds.val.tolist()) == text[cut:]
    assert ds.meta["val_bytes"] == len(text[cut:].encode()) and ds.meta["n_val_tokens"] == len(ds.val)
    assert ds.enc.name == f"bpe300-{data.fingerprint(text[:cut])}"  # trained on the train part only
    assert isinstance(ds.train, np.memmap) and ds.train.dtype == np.uint16
    assert ds.corpus == dict(name=str(tmp_path / "corpus.txt"), fingerprint=data.fingerprint(text))

    def must_not_encode(*args, **kwargs):
        raise AssertionError("re-encoded although the cache was valid")
    monkeypatch.setattr(data, "encode_text", must_not_encode)
    again = data.prepare_dataset(str(tmp_path / "corpus.txt"), "bpe:300", cache_dir=tmp_path, verbose=False)
    assert np.array_equal(again.train, ds.train) and again.meta == ds.meta


def test_corpus_from_folder_and_errors(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "b.txt").write_text("second")
    (folder / "a.txt").write_text("first")
    assert data.load_corpus(str(folder)).text == "first\n\nsecond"
    (tmp_path / "latin1.txt").write_bytes("ok so far, caf\xe9".encode("latin-1"))
    (tmp_path / "blank.txt").write_text(" \n\n ")
    cases = [(tmp_path / "missing.txt", "does not exist"), (tmp_path / "blank.txt", "is empty"),
             (tmp_path / "latin1.txt", r"latin1\.txt is not UTF-8 \(bad byte at offset 14\)"),
             ("wikipedia", "unknown corpus 'wikipedia'; use pydocs, shakespeare"),
             (tmp_path / "empty_dir", "no .txt files")]
    (tmp_path / "empty_dir").mkdir()
    for name, message in cases:
        with pytest.raises(data.UserError, match=message):
            data.load_corpus(str(name))


def test_check_fits_rejects_a_corpus_shorter_than_one_block(tmp_path):
    (tmp_path / "short.txt").write_text("x" * 300)
    ds = data.prepare_dataset(str(tmp_path / "short.txt"), "bytes", verbose=False)
    plumbing.check_fits(ds, block_size=29)  # 30 validation tokens: exactly one window of 29 + 1
    with pytest.raises(data.UserError, match="corpus too short: 30 validation tokens.*--block-size"):
        plumbing.check_fits(ds, block_size=30)


def test_shakespeare_from_data_dir_or_env_and_offline_error(tmp_path, monkeypatch):
    # The real download code runs here, with the network blocked for the whole suite (conftest.py).
    with pytest.raises(data.UserError, match=r"tinyshakespeare\.txt not found.*download failed \(URLError: "
                                             r"<urlopen error tests run offline.*PTFT_DATA_DIR"):
        data.load_corpus("shakespeare", data_dir=tmp_path)
    (tmp_path / "tinyshakespeare.txt").write_text("First Citizen:\nBefore we proceed any further")
    assert data.load_corpus("shakespeare", data_dir=tmp_path).text.startswith("First Citizen")
    monkeypatch.setenv("PTFT_DATA_DIR", str(tmp_path))
    assert data.load_corpus("shakespeare").fingerprint == data.fingerprint(
        "First Citizen:\nBefore we proceed any further")


def test_download_checks_sha256_extracts_zips_and_writes_atomically(tmp_path, monkeypatch):
    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w") as z:
        z.writestr("inner.txt", "the file we want")
    monkeypatch.setattr(plumbing.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload.getvalue()))
    good = hashlib.sha256(b"the file we want").hexdigest()
    plumbing.download("https://example.org/x.zip", good, tmp_path / "out" / "inner.txt", member="inner.txt")
    assert (tmp_path / "out" / "inner.txt").read_text() == "the file we want"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["inner.txt"]  # no temp file left
    with pytest.raises(data.UserError, match="sha256 .* is not the expected"):
        plumbing.download("https://example.org/x.zip", "0" * 64, tmp_path / "bad.txt", member="inner.txt")
    assert not (tmp_path / "bad.txt").exists()


# ----------------------------------------------------------------------------- batches and the metric

def test_get_batch_windows_are_shifted_and_reproducible():
    tokens = np.arange(1000, dtype=np.uint16)  # token value = its position: windows are easy to check
    x, y = data.get_batch(tokens, 8, 16, "cpu", torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)                                      # y is x shifted by one
    assert torch.equal(x[:, 1:], x[:, :-1] + 1)                       # each row is a contiguous window
    assert int(y.max()) <= 999
    x2, _ = data.get_batch(tokens, 8, 16, "cpu", torch.Generator().manual_seed(0))
    x3, _ = data.get_batch(tokens, 8, 16, "cpu", torch.Generator().manual_seed(1))
    assert torch.equal(x, x2) and not torch.equal(x, x3)
    x, y = data.get_batch(np.arange(17, dtype=np.uint16), 4, 16, "cpu", torch.Generator())
    assert torch.equal(x[0], torch.arange(16)) and torch.equal(y[0], torch.arange(1, 17))  # only window


def test_bits_per_unit_by_hand():
    # 2 nats/token over 100 tokens = 200 nats = 288.539 bits, spread over 400 bytes: 0.7213 bits/byte
    assert data.bits_per_unit(2.0, 100, 400) == pytest.approx(200 / math.log(2) / 400)
    assert data.bits_per_unit(2.0, 100, 400) == pytest.approx(0.72135, abs=1e-5)
    assert data.bits_per_unit(math.log(2), 7, 7) == pytest.approx(1.0)  # bytes tokenizer: 1 token = 1 byte


# ----------------------------------------------------------------------------- labelled sets

def test_tsv_labelled_set_split_and_label_mapping(tmp_path):
    rows = [f"text number {i}\t{'spam' if i % 3 == 0 else 'ham'}" for i in range(60)]
    (tmp_path / "set.tsv").write_text("\n".join(rows) + "\n\n")
    ls = tasks.load_labelled(str(tmp_path / "set.tsv"))
    assert ls.label_names == ["ham", "spam"]
    assert (len(ls.train), len(ls.dev), len(ls.test)) == (48, 6, 6)
    everything = ls.train + ls.dev + ls.test
    assert sorted(t for t, _ in everything) == sorted(r.split("\t")[0] for r in rows)
    assert all(ls.label_names[k] == ("spam" if int(t.split()[-1]) % 3 == 0 else "ham") for t, k in everything)
    assert Counter(k for _, k in ls.dev) == {0: 4, 1: 2}  # stratified: the 2:1 mix in every split
    assert tasks.load_labelled(str(tmp_path / "set.tsv")) == ls  # seeded


def test_malformed_tsv_names_file_and_lines(tmp_path):
    (tmp_path / "bad.tsv").write_text("good row\t1\nno tab here\n\t0\ntext only\t\nfine\t0\n")
    with pytest.raises(data.UserError, match=r"bad\.tsv: malformed line\(s\) 2, 3, 4;"):
        tasks.load_labelled(str(tmp_path / "bad.tsv"))
    with pytest.raises(data.UserError, match="unknown labelled set 'imdb'.*sst2"):
        tasks.load_labelled("imdb")


def test_sst2_and_sms_spam_from_the_data_dir(tmp_path):
    for split in ("train", "dev", "test"):
        (tmp_path / "sst2").mkdir(exist_ok=True)
        (tmp_path / "sst2" / f"{split}.tsv").write_text(f"a fine {split} film\t1\na dull one\t0\n")
    sst2 = tasks.load_labelled("sst2", data_dir=tmp_path)
    assert sst2.label_names == ["negative", "positive"] and sst2.dev == [("a fine dev film", 1), ("a dull one", 0)]
    (tmp_path / "sms_spam").mkdir()
    messages = [f"ham\thi there {i}" for i in range(30)] + [f"spam\tWIN a prize {i}" for i in range(10)]
    (tmp_path / "sms_spam" / "SMSSpamCollection").write_text("\n".join(messages))
    sms = tasks.load_labelled("sms-spam", data_dir=tmp_path)
    assert sms.label_names == ["ham", "spam"] and Counter(k for _, k in sms.test) == {0: 3, 1: 1}
    with pytest.raises(data.UserError, match=r"sst2/train\.tsv not found"):
        tasks.load_labelled("sst2", data_dir=tmp_path / "sms_spam")
    with pytest.raises(data.UserError, match="is not a directory"):
        tasks.load_labelled("sst2", data_dir=tmp_path / "no_such_dir")


def test_subsample_balanced():
    examples = [(f"a{i}", 0) for i in range(50)] + [(f"b{i}", 1) for i in range(5)] + [(f"c{i}", 2) for i in range(50)]
    picked = tasks.subsample_balanced(examples, 30, seed=3)
    assert Counter(k for _, k in picked) == {0: 13, 1: 5, 2: 12} or Counter(k for _, k in picked) == {0: 12, 1: 5, 2: 13}
    assert len(set(picked)) == 30 and set(picked) <= set(examples)
    assert picked == tasks.subsample_balanced(examples, 30, seed=3)
    assert Counter(k for _, k in tasks.subsample_balanced(examples, 9, seed=0)) == {0: 3, 1: 3, 2: 3}
    with pytest.raises(data.UserError, match="--n-train"):
        tasks.subsample_balanced(examples, 1000)


@pytest.fixture(scope="module")
def pydocs_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("pydocs-cache")  # built once for the tests below (a few seconds)


def test_pydocs_topic_is_balanced_disjoint_and_held_out_of_pretraining(pydocs_cache):
    corpus = data.load_corpus("pydocs", cache_dir=pydocs_cache)
    assert len(corpus.text) > 1_000_000 and "asyncio" in corpus.text
    topics = tasks.load_labelled("pydocs-topic", cache_dir=pydocs_cache)
    assert len(topics.label_names) == 6
    splits = {s: getattr(topics, s) for s in ("train", "dev", "test")}
    for split, examples in splits.items():
        counts = Counter(k for _, k in examples)
        assert len(counts) == 6 and len(set(counts.values())) == 1 and min(counts.values()) >= 20, split
    texts = {s: {t for t, _ in ex} for s, ex in splits.items()}
    assert not (texts["train"] & texts["dev"] or texts["train"] & texts["test"] or texts["dev"] & texts["test"])
    assert not any(t in corpus.text for t in texts["dev"] | texts["test"])  # pretraining never sees them
    assert all(t in corpus.text for t in texts["train"])
