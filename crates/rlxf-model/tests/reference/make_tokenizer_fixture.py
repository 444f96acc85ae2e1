#!/usr/bin/env python3
"""Regenerates the tokenizer fixtures used by tests/tokenizer_*.rs, without network access.

1. tests/fixtures/tokenizer_gpt2_encodings.json: GPT-2 token ids of hand-written strings, computed by
   OpenAI's original GPT-2 BPE algorithm (gpt-2/src/encoder.py: the published regex, byte-to-unicode
   table and merge loop), re-implemented here in pure Python. Its vocabulary and merges are rebuilt
   from the GPT-2 rank table that tiktoken-rs embeds (rank = GPT-2 token id; the merge that made token
   r is the split that BPE with ranks < r reaches). The Rust side encodes with tiktoken's Rust BPE, a
   different implementation, so agreement checks the algorithm, not just the table. The encodings
   are cross-checked here against the Hugging Face `tokenizers` library on the same vocab/merges.

2. tests/fixtures/tiny_tokenizer/tokenizer.json plus tokenizer_tiny_encodings.json: a small byte-level
   BPE trained by the Hugging Face `tokenizers` library on a hand-written corpus, and its encodings
   of a few strings, for the tokenizer.json backend.

Usage: python3 tests/reference/make_tokenizer_fixture.py [path/to/r50k_base.tiktoken]
(default: the copy in ~/.cargo/registry for tiktoken-rs 0.12.x). Needs `regex` and `tokenizers`.
"""

import base64
import glob
import json
import os
import sys

import regex
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures")

# Strings covering what the BPE has to get right: contractions, digits, punctuation runs, whitespace
# runs (the `\s+(?!\S)` rule), non-ASCII letters, emoji split across byte tokens, the HH markers.
SAMPLES = [
    "Hello world",
    " Hello",
    "\n\nHuman:",
    "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water, salt and yeast.",
    "I'm sure they'll say we've done it, isn't it? She'd LOVE it.",
    "The year 2023 had 365 days; 3.14159 is pi, 1,000,000 is a million.",
    "   leading spaces and trailing spaces   ",
    "tabs\tand\r\nwindows line endings\n\n\n\nmany newlines",
    "Ünïcödé: naïve café, Straße, Ελληνικά, русский, 中文字符, 日本語のテキスト",
    "emoji 😀👍🏽 and symbols ™ © € ∑ ≈",
    "<|endoftext|> is just text here",
    "def f(x):\n    return x ** 2  # comment\n",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "!!!???...---___***",
    "What's the capital of France? Paris.",
    "",
]

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def bytes_to_unicode():
    """GPT-2's reversible map from bytes to printable unicode characters (encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def load_ranks(path):
    ranks = {}
    with open(path) as f:
        for line in f:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def merge_of(token, ranks):
    """The pair BPE merges last when encoding `token` with only the ranks below its own."""
    rank = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < rank and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            raise ValueError(f"token {token!r} cannot be built from lower ranks")
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts[0], parts[1]


def gpt2_vocab_and_merges(ranks):
    byte_encoder = bytes_to_unicode()
    to_str = lambda bs: "".join(byte_encoder[b] for b in bs)
    vocab = {to_str(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) >= 2:
            left, right = merge_of(token, ranks)
            merges.append((to_str(left), to_str(right)))
    return vocab, merges


class OpenAiGpt2Encoder:
    """The merge loop of OpenAI's gpt-2/src/encoder.py."""

    def __init__(self, vocab, merges):
        self.encoder = vocab
        self.bpe_ranks = {pair: i for i, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.pat = regex.compile(GPT2_PATTERN)

    def bpe(self, token):
        word = tuple(token)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
        return word

    def encode(self, text):
        ids = []
        for piece in regex.findall(self.pat, text):
            piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[part] for part in self.bpe(piece))
        return ids


def hf_gpt2(vocab, merges):
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return tokenizer


def write_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False, indent=1)
        f.write("\n")


def gpt2_fixture(rank_file):
    ranks = load_ranks(rank_file)
    assert len(ranks) == 50256, len(ranks)
    vocab, merges = gpt2_vocab_and_merges(ranks)
    reference = OpenAiGpt2Encoder(vocab, merges)
    hf = hf_gpt2(vocab, merges)
    cases = []
    for text in SAMPLES:
        ids = reference.encode(text)
        assert hf.encode(text).ids == ids, (text, hf.encode(text).ids, ids)
        cases.append({"text": text, "ids": ids})
    write_json(
        os.path.join(FIXTURES, "tokenizer_gpt2_encodings.json"),
        {"source": "OpenAI gpt-2 encoder.py BPE over merges rebuilt from r50k_base", "first_merges": merges[:8], "cases": cases},
    )


TINY_CORPUS = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat and a dog are friends",
    "Human: hello there\nAssistant: hello, how can I help?",
] * 20

TINY_SAMPLES = ["the cat sat", "a dog on a log", "hello, Assistant", "zebra!"]


def tiny_fixture():
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TINY_CORPUS, trainer=trainer)
    directory = os.path.join(FIXTURES, "tiny_tokenizer")
    os.makedirs(directory, exist_ok=True)
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    cases = [{"text": text, "ids": tokenizer.encode(text).ids} for text in TINY_SAMPLES]
    write_json(
        os.path.join(FIXTURES, "tokenizer_tiny_encodings.json"),
        {
            "vocab_size": tokenizer.get_vocab_size(),
            "eos_id": tokenizer.token_to_id("<|endoftext|>"),
            "cases": cases,
        },
    )


def main():
    if len(sys.argv) > 1:
        rank_file = sys.argv[1]
    else:
        found = sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/tiktoken-rs-0.12.*/assets/r50k_base.tiktoken")))
        if not found:
            sys.exit("r50k_base.tiktoken not found; pass its path (it ships with the tiktoken-rs crate)")
        rank_file = found[-1]
    gpt2_fixture(rank_file)
    tiny_fixture()


if __name__ == "__main__":
    main()
