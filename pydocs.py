"""The pydocs corpus: English prose that ships inside every Python, so the course needs no network.

A data source, not a lesson: data.py reads its text as it reads any other corpus, and a reader of
the course may skip this file. It is built once per Python version, cached, then read back:

    pydocs = the pydoc topics (the language reference's help pages), then every docstring of the
             standard library of at least MIN_DOCSTRING characters, by path, each text once

About 2 MB of technical English on Python 3.11.

The same walk gives tasks.py its labelled set, pydocs-topic: which of six stdlib areas a docstring
documents. The corpus must never hold the text a fine-tuned body is scored on, so the task's
dev and test docstrings, and every near-duplicate of them (the same summary line), are left out
of the corpus here, where both are built from one list.
"""
import ast
import functools
import hashlib
import os
import sys
import sysconfig
import time
from pathlib import Path

from plumbing import fingerprint, resolve_cache_dir, write_atomic

PYDOCS_VERSION = 1         # bump when the pydocs recipe changes, so old caches are not reused
MIN_DOCSTRING = 40         # shorter docstrings ("Return self.") are boilerplate, not prose
# The pydocs-topic task's classes (tasks.py): a docstring's label is the stdlib package it lives
# in. Six areas with about 200+ docstrings each on Python 3.11 (smallest: xml), so balanced splits
# stay usable. They are here because the corpus must leave the task's dev and test docstrings out.
TOPIC_AREAS = {"asyncio": ("asyncio",), "email": ("email",), "http": ("http", "urllib"),
               "logging": ("logging",), "tkinter": ("tkinter",), "xml": ("xml",)}


def summary_line(text):
    return text.split("\n", 1)[0]


def topic_of(source):
    """The pydocs-topic class of a docstring's stdlib file (tasks.py), or None for the other files."""
    top = source.split("/")[0]
    return next((label for label, tops in TOPIC_AREAS.items() if top in tops), None)


def topic_split(text):
    """Train/dev/test (70/15/15) from a hash of the summary line (PEP 257's first line): stable
    across runs and machines, and near-duplicates (an override that repeats its parent's summary
    and adds a paragraph) fall in the same split instead of leaking across splits."""
    bucket = int(hashlib.sha256(summary_line(text).encode("utf-8")).hexdigest()[:8], 16) % 100
    return "train" if bucket < 70 else "dev" if bucket < 85 else "test"


def documented_nodes(node):
    """Module, classes and functions in source order. Only statement lists are walked: docstrings
    never hide inside expressions, and skipping those makes this ~6x faster than ast.walk."""
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        yield node
    for field in ("body", "orelse", "handlers", "finalbody", "cases"):  # if/try/with/match nest too
        children = getattr(node, field, None)
        if isinstance(children, list):
            for child in children:
                yield from documented_nodes(child)


@functools.lru_cache(maxsize=1)
def documents():
    """[(source, text)]: pydoc topics sorted by key, then stdlib docstrings by path, deduplicated.
    Kept for the process: the corpus and the pydocs-topic task (tasks.py) are built from one walk."""
    from pydoc_data.topics import topics
    docs = [(f"topic:{key}", topics[key].strip()) for key in sorted(topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "site-packages", "__pycache__"}
    paths = []
    for folder, subfolders, files in os.walk(stdlib):
        subfolders[:] = [s for s in subfolders if s not in skip]  # prune: never descend into them
        paths += [Path(folder) / f for f in files if f.endswith(".py")]
    for path in sorted(paths):
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):  # py2-only files, bad encodings: not documentation
            continue
        for node in documented_nodes(tree):
            doc = ast.get_docstring(node, clean=True)  # clean=True: inspect.cleandoc
            if doc and len(doc) >= MIN_DOCSTRING:
                docs.append((path.relative_to(stdlib).as_posix(), doc))
    unique, seen = [], set()
    for source, text in docs:  # the same text twice (inherited or copied docstrings): keep the first
        if text not in seen:
            seen.add(text)
            unique.append((source, text))
    return unique


def cache_path(cache_dir, name, suffix):
    """Where a file built from this Python's documentation is cached: one per Python version."""
    tag = f"py{'.'.join(map(str, sys.version_info[:3]))}-v{PYDOCS_VERSION}"
    return resolve_cache_dir(cache_dir) / "corpora" / f"{name}-{tag}{suffix}"


def corpus_path(cache_dir=None, verbose=False):
    """Build (once per Python version) the pydocs corpus: every docstring and pydoc topic, except
    the pydocs-topic task's dev and test docstrings and any near-duplicate of them (same summary
    line): pretraining never reads evaluation text."""
    path = cache_path(cache_dir, "pydocs", ".txt")
    if path.exists():
        return path
    start = time.time()
    docs = documents()
    held_out = {summary_line(text) for source, text in docs
                if topic_of(source) is not None and topic_split(text) != "train"}
    corpus_text = "\n\n".join(text for _, text in docs if summary_line(text) not in held_out)
    write_atomic(path, corpus_text.encode("utf-8"))
    if verbose:
        print(f"built pydocs: {len(corpus_text.encode()) / 1e6:.2f} MB, fingerprint "
              f"{fingerprint(corpus_text)}, {len(held_out)} topic dev/test summaries held out, "
              f"{time.time() - start:.1f} s -> {path}")
    return path
