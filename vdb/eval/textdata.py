"""The built-in text dataset "synthetic-text": documents, queries, their embeddings and labels, made on the spot.

It is built to have what real retrieval corpora have and what separates dense from lexical search:
  * topics (the label) made of concepts, each written as one of several synonyms drawn from one shared
    vocabulary (so a word also means other concepts in other topics): the embedding sees the concept (a
    "semantic" model), BM25 sees the ambiguous surface word;
  * rare identifiers (one per document, e.g. "kx3q9f"), which the embedding cannot represent (out of its
    vocabulary) and BM25 matches exactly: a query that names its target document's identifier;
  * filler words shared by every topic.
Embeddings: vdb.text.embed.HashingEmbedder over the concept ids (not the filler words nor the identifiers), plus
Gaussian noise. Tasks: the topic by a k-NN vote (dense should win), and `target_hit` for queries naming a
document's identifier (BM25 should win); hybrid search should keep most of both. Real data (kjv_books) decides
what holds for real models; this set shows the mechanisms in tests, on any machine.

Spec: "synthetic-text" or "synthetic-text:n=5000,nq=500,topics=20,seed=0,named=0.5".
"""
from __future__ import annotations

import numpy as np

from vdb.eval.datasets import EvalDataset
from vdb.eval.errors import EvalDatasetError
from vdb.text.embed import HashingEmbedder

DEFAULTS = {"n": 5000, "nq": 500, "topics": 20, "seed": 0, "named": 0.5}
CONCEPTS, SYNONYMS, FILLER, DIM = 30, 10, 300, 128
VOCABULARY = 600
DOC_CONCEPTS, DOC_FILLER, QUERY_CONCEPTS, QUERY_FILLER = 5, 4, 3, 2
NOISE = 0.3
_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def _words(rng, count: int, length: int) -> list[str]:
    out, seen = [], set()
    while len(out) < count:
        w = "".join(rng.choice(_LETTERS, length))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def synthetic_text_dataset(n: int = 5000, nq: int = 500, topics: int = 20, seed: int = 0,
                           named: float = 0.5) -> EvalDataset:
    """The dataset of the module docstring: `named` is the fraction of queries that name their target's id."""
    if min(n, nq, topics) < 1 or not 0 <= named <= 1:
        raise EvalDatasetError("synthetic-text: n, nq and topics must be >= 1 and named in [0, 1]")
    rng = np.random.default_rng(seed)
    vocabulary = np.array(_words(rng, VOCABULARY, 7))  # each word names ~10 concepts of different topics
    surface = vocabulary[rng.integers(0, VOCABULARY, (topics, CONCEPTS, SYNONYMS))]
    filler = _words(rng, FILLER, 5)
    idents = [w + str(i % 10) for i, w in enumerate(_words(rng, n, 6))]
    emb = HashingEmbedder(DIM, bigrams=False)

    def draw(topic: int, n_concepts: int, n_filler: int):
        cs = rng.choice(CONCEPTS, n_concepts, replace=False)
        syn = rng.integers(0, SYNONYMS, n_concepts)
        fill = rng.choice(FILLER, n_filler, replace=False)
        words = [surface[topic, c, s] for c, s in zip(cs, syn)] + [filler[f] for f in fill]
        meaning = [f"t{topic}c{c}" for c in cs]  # what the model keeps: the concepts (not fillers, not ids)
        return words, meaning

    base_labels = rng.integers(0, topics, n).astype(np.int32)
    base_texts, base_meaning = [], []
    for i, t in enumerate(base_labels):
        words, meaning = draw(int(t), DOC_CONCEPTS, DOC_FILLER)
        words.insert(int(rng.integers(0, len(words) + 1)), idents[i])
        base_texts.append(" ".join(words))
        base_meaning.append(" ".join(meaning))
    target = rng.integers(0, n, nq)
    names = rng.random(nq) < named
    query_texts, query_meaning = [], []
    for j in range(nq):
        words, meaning = draw(int(base_labels[target[j]]), QUERY_CONCEPTS, QUERY_FILLER)
        if names[j]:
            words.append(idents[target[j]])
        query_texts.append(" ".join(words))
        query_meaning.append(" ".join(meaning))

    def vectors(meaning):
        x = emb(meaning) + rng.normal(0, NOISE / np.sqrt(DIM), (len(meaning), DIM)).astype(np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return EvalDataset(
        name="synthetic-text" if (n, nq, topics, seed, named) == tuple(DEFAULTS.values())
        else f"synthetic-text-{n}x{nq}-t{topics}-seed{seed}-named{named:g}",
        base=vectors(base_meaning), queries=vectors(query_meaning), base_labels=base_labels,
        query_labels=base_labels[target].astype(np.int32), query_target=np.where(names, target, -1).astype(np.int64),
        metric="cosine", base_texts=tuple(base_texts), query_texts=tuple(query_texts),
        description=f"vdb.eval.textdata: {n} documents / {nq} queries over {topics} topics ({CONCEPTS} concepts x "
                    f"{SYNONYMS} synonyms each), one rare identifier per document, {named:.0%} of the queries "
                    f"name their target's identifier; hashing embeddings of the concepts (dim {DIM})")


def load_synthetic_text(spec: str) -> EvalDataset:
    """Parse "synthetic-text[:key=value,...]" (keys as DEFAULTS)."""
    args = dict(DEFAULTS)
    for item in filter(None, spec.partition(":")[2].split(",")):
        key, _, value = item.partition("=")
        if key.strip() not in args or not value:
            raise EvalDatasetError(f"synthetic-text: bad option {item!r}; known: {', '.join(args)}")
        try:
            num = float(value)
        except ValueError:
            raise EvalDatasetError(f"synthetic-text: {key} must be a number, got {value!r}") from None
        args[key.strip()] = num if key.strip() == "named" else int(num)
    return synthetic_text_dataset(**args)
