"""Shared fixtures: every test makes its own small data; nothing touches the network or ../shared."""
import os
import random
import shutil
import socket
import sys

# The tests train models of a few thousand parameters, where a second thread costs more in
# synchronisation than it saves, and collapses when the cores are shared (measured: 2 threads ran
# the suite 2-5x slower than 1 on a loaded 2-core machine). Set before torch is first imported;
# subprocesses that tests start inherit it. An explicit OMP_NUM_THREADS wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def generated_text(n_sentences=600, seed=0):
    """Simple English-like sentences from a tiny grammar: learnable in a few steps."""
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "the old man", "my friend", "the teacher", "a bird"]
    verbs = ["sees", "likes", "finds", "reads", "paints", "follows"]
    objects = ["the book", "a red ball", "the garden", "a letter", "the river", "some bread"]
    return "\n".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}."
                     for _ in range(n_sentences)) + "\n"


def write_gpt2_tokenizer(data_dir):
    """data_dir/gpt2/gpt2.tiktoken, where `gpt2` looks for GPT-2's tokenizer: a BPE of 299 ordinary
    tokens learned on generated_text (the 300th is <|endoftext|>, as in GPT-2), to go with the
    tests' 300-token GPT-2."""
    import data
    (data_dir / "gpt2").mkdir(parents=True, exist_ok=True)
    ranks = data.train_bpe(generated_text(), 299)
    (data_dir / "gpt2" / "gpt2.tiktoken").write_text(data.ranks_text(ranks))


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(generated_text(), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def measured_speeds(tmp_path_factory):
    """This machine's peak FLOP/s (for MFU), measured once for the whole session: every process a
    test starts would otherwise measure it again into its own fresh cache (about a second each)."""
    import plumbing
    import torch
    folder = tmp_path_factory.mktemp("measured")
    plumbing.measured_peak_flops(torch.device("cpu"), "fp32", cache_dir=folder)
    return folder / "measured.json"


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch, measured_speeds):
    """Caches and data directories live in the test's own tmp folder; the cache starts with the
    session's measured speeds."""
    monkeypatch.setenv("PTFT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PTFT_DATA_DIR", raising=False)
    (tmp_path / "cache").mkdir(exist_ok=True)
    shutil.copy(measured_speeds, tmp_path / "cache" / "measured.json")


LOOPBACK = ("localhost", "::1")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """The whole suite runs offline: looking up any host but this machine's own fails at once, so
    a download attempt anywhere in the code (wherever it moves) fails as it would offline, and
    never reaches the internet. Tests that exercise the download code replace urlopen itself."""
    lookup = socket.getaddrinfo

    def offline(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name in LOOPBACK or name.startswith("127."):
            return lookup(host, *args, **kwargs)
        raise socket.gaierror(f"tests run offline: no network lookup of {name!r}")
    monkeypatch.setattr(socket, "getaddrinfo", offline)
