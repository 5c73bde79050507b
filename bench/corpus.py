"""A deterministic benchmark corpus: realistic sentences of mixed lengths plus a long-text slice.

No dataset can be downloaded here, so sentences are composed from a bank of real-looking clauses
(search queries, product titles, news-like statements, support questions) with a length
distribution close to typical retrieval traffic: mostly 5-40 words, about 10% long passages.
"""
from __future__ import annotations

import random

SUBJECTS = [
    "The new search index", "Our support team", "A customer in Berlin", "The quarterly report",
    "This laptop", "The embedding service", "Every request", "The city council", "My order",
    "The research group", "A small startup", "The mobile app", "Their latest release", "The train to Lyon",
]
VERBS = [
    "improves", "reduces", "explains", "compares", "summarises", "ranks", "delays", "replaces",
    "announces", "returns", "requires", "supports", "describes", "predicts",
]
OBJECTS = [
    "latency for long documents", "the cost of cloud storage", "results in twelve languages",
    "battery life by almost 20%", "the refund policy for damaged items", "a faster checkout flow",
    "how vector search handles typos", "new rules for electric scooters", "the price of coffee beans",
    "a bug in the password reset page", "recommendations for similar products", "the weather next week",
]
TAILS = [
    "", "according to the press release", "after the update on Monday", "in most European markets",
    "without any extra configuration", "for users on older phones", "despite the holiday rush",
    "as reported by several reviewers", "which surprised the analysts", "— see the FAQ for details",
]
QUESTIONS = [
    "how do I reset my password", "best noise cancelling headphones under 200 euros",
    "what is the capital of Australia", "can I return shoes after 30 days",
    "python convert list of strings to integers", "symptoms of vitamin D deficiency",
    "cheap flights from Paris to Tokyo in March", "why is my sourdough bread so dense",
]


def sentence(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return rng.choice(QUESTIONS) + rng.choice(["?", "", " please", " 2024?"])
    parts = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(TAILS)]
    return " ".join(p for p in parts if p) + "."


def passage(rng: random.Random, n_sentences: int) -> str:
    return " ".join(sentence(rng) for _ in range(n_sentences))


def make_corpus(n: int = 2048, long_share: float = 0.1, seed: int = 0) -> list[str]:
    """``n`` texts: ~90% short (1-3 sentences), ~10% long passages (15-40 sentences)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < long_share:
            out.append(passage(rng, rng.randint(15, 40)))
        else:
            out.append(passage(rng, rng.choice([1, 1, 1, 2, 2, 3])))
    return out


def make_long_corpus(n: int = 400, seed: int = 2) -> list[str]:
    """``n`` uniformly long texts: passages of 30-45 sentences (about 400-600 tokens), so every one is
    truncated to ``max_seq_length`` (256 for the default model) and every batch is fully dense."""
    rng = random.Random(seed)
    return [passage(rng, rng.randint(30, 45)) for _ in range(n)]


WORDS = ("the a of to and in is that for it as was with be by on not he this are or his from at which but have "
         "an they you were her she there been if more when will would who so no out up into do than only can "
         "search engine embedding vector model serving latency throughput token graph tensor batch query "
         "document relevance ranking retrieval I'm we'll don't it's 2024 3.5 100% (see) e.g. U.S. café naïve").split()


def make_mixed(n: int, seed: int = 0) -> list[str]:
    """The shipped parity corpus (every fourth text: its traps, scripts and emoji) mixed with word salad
    with contractions, digits and punctuation: what the BPE tokenizer benchmarks run on."""
    from packager.verify import load_corpus

    rng = random.Random(seed)
    base = [s for s in load_corpus(None) if 0 < len(s) < 300]
    out = []
    for i in range(n):
        if i % 4 == 0:
            out.append(rng.choice(base))
        else:
            k = rng.randint(6, 40)
            s = " ".join(rng.choice(WORDS) for _ in range(k))
            out.append(s[0].upper() + s[1:] + rng.choice([".", "?", "!", "", "..."]))
    return out
