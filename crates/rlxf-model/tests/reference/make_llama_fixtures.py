"""Regenerate the Llama fixtures used by `crates/rlxf-model/tests/llama.rs` and `tests/gguf_import.rs`.

1. Parity: two tiny random `LlamaForCausalLM`s saved with `save_pretrained`, with their logits for the
   inputs of `make_parity_fixtures.py` (one plain sequence, one left-padded batch):
   - `tiny-llama`: grouped-query attention (4 query heads, 2 key/value heads), tied head,
     non-default rope_theta;
   - `tiny-llama-untied`: one key/value head per query head, untied `lm_head`, biases on the
     attention and MLP projections, a head_dim larger than hidden_size / heads.
2. GGUF import: `tiny-llama-gguf/model.gguf`, written the way llama.cpp's `convert_hf_to_gguf.py`
   writes a Llama (q/k rows permuted for its interleaved RoPE, llama.cpp tensor names, the BPE
   tokenizer in `tokenizer.ggml.*` metadata with `tokenizer.ggml.pre = "smollm"`, a ChatML chat
   template), from a tiny Llama and a tiny byte-level BPE tokenizer trained here with SmolLM2's
   pre-tokenizer (individual digits, then GPT-2's byte-level split). Tensors use the SmolLM2 GGUF's
   types: Q8_0 embedding, Q4_1 matrices in layer 0, F16 in layer 1, F32 norms. `expected.safetensors`
   holds the logits `transformers` computes with the *dequantized* weights, so the import must be
   exact up to float rounding; `expected_tokens.json` holds the HF tokenizer's ids for test strings.

Usage (from the repository root):
    python3 crates/rlxf-model/tests/reference/make_llama_fixtures.py
"""

import json
import os
import sys

import gguf
import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_parity_fixtures import FIXTURES, VOCAB, perturb, record  # noqa: E402

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOKENIZER_STRINGS = [
    "Hello world",
    "I feel lonely lately.",
    "  two spaces, then a tab\tand\nnewlines\n\n",
    "Numbers: 12345 and 3.14159, 2024-06-01",
    "unicode: café naïve — 東京 🤖 ½",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "don't won't I'll you're",
    "",
]
CORPUS = [
    "Hello world! How are you today? I feel lonely lately, and I do not know what to do.",
    "The quick brown fox jumps over the lazy dog. 0123456789 numbers 42 and 1999.",
    "12345 12345 2024 2024-06-01 3.14159 123 12 12 12 1234 2024 2025 2026",
    "I'm sorry to hear that. It's okay to feel that way; talking to a friend can help.",
    "café naïve résumé — unicode text 東京 and emoji 🤖 should still be byte-level encoded.",
    "User: what is 2 + 2?\nAssistant: 2 + 2 = 4.\n\nUser: thanks!\n",
] * 20


def parity_fixtures():
    torch.manual_seed(0)
    gqa = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            rms_norm_eps=1e-5,
            rope_theta=500.0,
            tie_word_embeddings=True,
        )
    )
    perturb(gqa, 3)
    record(gqa, "tiny-llama")

    untied = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=24,
            max_position_embeddings=64,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            attention_bias=True,
            mlp_bias=True,
        )
    )
    perturb(untied, 4)
    record(untied, "tiny-llama-untied")


def train_tokenizer():
    """A byte-level BPE with SmolLM2's pipeline (the HF tokenizer.json of SmolLM2-135M).

    It is trained *without* digit splitting, so its vocabulary has multi-digit tokens ("12", "202")
    that only a tokenizer which splits digits first, as SmolLM2's does, never produces: the
    expected ids tell a rebuilt tokenizer that forgets the digit rule from one that keeps it.
    """
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), byte_level]
    )
    assert tokenizer.token_to_id("12") is not None, "the corpus should teach multi-digit merges"
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )


def permute(weights, n_head):
    """llama.cpp's `LlamaModel.permute`: HF's rotate_half layout to GGML's interleaved RoPE."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def gguf_name(hf_name):
    """HF tensor name to llama.cpp's (`gguf.TensorNameMap` for LLM_ARCH_LLAMA)."""
    parts = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf_name in parts:
        return parts[hf_name]
    layer = hf_name.split(".")[2]
    suffix = ".".join(hf_name.split(".")[3:])
    per_layer = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    return f"blk.{layer}.{per_layer[suffix]}"


def quant_type(gguf_tensor_name):
    q = gguf.GGMLQuantizationType
    if gguf_tensor_name == "token_embd.weight":
        return q.Q8_0
    if gguf_tensor_name.endswith("norm.weight"):
        return q.F32
    return q.Q4_1 if gguf_tensor_name.startswith("blk.0.") else q.F16


def gguf_fixture():
    out_dir = os.path.join(FIXTURES, "tiny-llama-gguf")
    os.makedirs(out_dir, exist_ok=True)
    hf_tokenizer = train_tokenizer()
    vocab = hf_tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True)
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    merges = json.loads(hf_tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in merges]

    config = LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    perturb(model, 5)
    model.eval()

    writer = gguf.GGUFWriter(os.path.join(out_dir, "model.gguf"), "llama")
    writer.add_name("tiny-llama-gguf")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if token in SPECIAL_TOKENS else gguf.TokenType.NORMAL for token in tokens]
    )
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab["<|im_start|>"])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_unk_token_id(vocab["<|endoftext|>"])
    writer.add_pad_token_id(vocab["<|im_end|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    with torch.no_grad():
        for name, param in model.named_parameters():
            target = gguf_name(name)
            data = param.detach().float().numpy()
            if name.endswith("q_proj.weight"):
                data = permute(data, heads)
            elif name.endswith("k_proj.weight"):
                data = permute(data, kv_heads)
            kind = quant_type(target)
            if kind == gguf.GGMLQuantizationType.F32:
                stored, restored = data, data
            elif kind == gguf.GGMLQuantizationType.F16:
                stored = data.astype(np.float16)
                restored = stored.astype(np.float32)
            else:
                stored = gguf.quants.quantize(data, kind)
                restored = gguf.quants.dequantize(stored, kind).reshape(data.shape)
            writer.add_tensor(target, stored, raw_dtype=kind)
            # The reference computes with exactly what the file holds (un-permuted back).
            if name.endswith("q_proj.weight"):
                restored = permute_back(restored, heads)
            elif name.endswith("k_proj.weight"):
                restored = permute_back(restored, kv_heads)
            param.copy_(torch.from_numpy(np.ascontiguousarray(restored)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    ids = torch.tensor([hf_tokenizer("I feel lonely lately. 42 cafés")["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    save_file(
        {"input_ids": ids.contiguous(), "logits": logits.float().contiguous()},
        os.path.join(out_dir, "expected.safetensors"),
    )
    encodings = [
        {"text": text, "ids": hf_tokenizer(text, add_special_tokens=False)["input_ids"]}
        for text in TOKENIZER_STRINGS
    ]
    with open(os.path.join(out_dir, "expected_tokens.json"), "w") as f:
        json.dump(encodings, f, ensure_ascii=False, indent=1)
    print(f"tiny-llama-gguf: wrote {out_dir} ({len(tokens)} tokens, {len(merges)} merges)")


def permute_back(weights, n_head):
    """The inverse of `permute`, what the importer must do."""
    return (
        weights.reshape(n_head, weights.shape[0] // n_head // 2, 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def main():
    parity_fixtures()
    gguf_fixture()


if __name__ == "__main__":
    main()
