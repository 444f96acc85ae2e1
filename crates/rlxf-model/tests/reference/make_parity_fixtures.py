"""Regenerate the Hugging Face parity fixtures used by `crates/rlxf-model/tests/hf_parity.rs`.

Builds a tiny random GPT-Neo (one global and one local layer, local window smaller than the test
sequence so the sliding window is exercised) and a tiny GPT-2 with `transformers`, saves each with
`save_pretrained` (safetensors) and records their logits for fixed inputs: one unpadded sequence and a
left-padded batch whose position ids are computed the way `generate` does.

Usage (from the repository root):
    python3 crates/rlxf-model/tests/reference/make_parity_fixtures.py
"""

import os

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoConfig, GPTNeoForCausalLM

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
VOCAB = 1000
SEQ = 12


# Parameter name endings of layer-norm/RMSNorm scales and of embedding (or untied head) matrices,
# for GPT-Neo/GPT-2 and for Llama (make_llama_fixtures.py).
NORM_SCALES = ("ln_1.weight", "ln_2.weight", "ln_f.weight", "norm.weight")
EMBEDDINGS = ("wte.weight", "wpe.weight", "embed_tokens.weight", "lm_head.weight")


def perturb(model, seed):
    """HF's N(0, 0.02) init gives near-constant logits; larger random weights make the parity test sensitive."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith(NORM_SCALES):
                param.copy_(1.0 + 0.2 * noise)
            elif name.endswith(EMBEDDINGS):
                param.copy_(0.5 * noise)
            else:
                param.copy_(0.15 * noise)


def inputs():
    generator = torch.Generator().manual_seed(7)
    single = torch.randint(0, VOCAB, (1, SEQ), generator=generator)
    lengths = [SEQ, 7, 3]
    batch = torch.zeros((len(lengths), SEQ), dtype=torch.long)
    mask = torch.zeros((len(lengths), SEQ), dtype=torch.long)
    for row, length in enumerate(lengths):
        batch[row, SEQ - length :] = torch.randint(0, VOCAB, (length,), generator=generator)
        mask[row, SEQ - length :] = 1
    # Exactly what GenerationMixin does for left-padded inputs.
    positions = mask.cumsum(-1) - 1
    positions.masked_fill_(mask == 0, 1)
    return single, batch, mask, positions


def record(model, name):
    model.eval()
    out_dir = os.path.join(FIXTURES, name)
    model.save_pretrained(out_dir, safe_serialization=True)
    single, batch, mask, positions = inputs()
    with torch.no_grad():
        single_logits = model(input_ids=single).logits
        batch_logits = model(input_ids=batch, attention_mask=mask, position_ids=positions).logits
    save_file(
        {
            "single_ids": single.contiguous(),
            "single_logits": single_logits.float().contiguous(),
            "batch_ids": batch.contiguous(),
            "batch_mask": mask.contiguous(),
            "batch_logits": batch_logits.float().contiguous(),
        },
        os.path.join(out_dir, "expected_logits.safetensors"),
    )
    print(f"{name}: wrote {out_dir}")


def main():
    torch.manual_seed(0)
    neo = GPTNeoForCausalLM(
        GPTNeoConfig(
            vocab_size=VOCAB,
            max_position_embeddings=64,
            hidden_size=32,
            num_layers=2,
            attention_types=[[["global", "local"], 1]],
            num_heads=4,
            window_size=4,
            layer_norm_epsilon=1e-5,
        )
    )
    perturb(neo, 1)
    record(neo, "tiny-gpt-neo")
    # The same weights as a PyTorch pickle, for the `pytorch_model.bin` loading path.
    bin_dir = os.path.join(FIXTURES, "tiny-gpt-neo-bin")
    os.makedirs(bin_dir, exist_ok=True)
    neo.config.save_pretrained(bin_dir)
    torch.save(neo.state_dict(), os.path.join(bin_dir, "pytorch_model.bin"))

    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, layer_norm_epsilon=1e-5)
    )
    perturb(gpt2, 2)
    record(gpt2, "tiny-gpt2")


if __name__ == "__main__":
    main()
