#!/usr/bin/env python3
"""PyTorch + transformers reference for `rlxf bench`: the same workloads on the same machine.

Each workload runs in its own subprocess so its peak RSS is its own. Prints one JSON object per
workload on stdout (the format `rlxf bench --reference` reads):

  {"workload": "train", "batch": 4, "seq": 128, "precision": "f32", "tokens_per_s": ..., "seconds_per_step": ..., "peak_rss_mb": ...}
  {"workload": "generate", "batch": 1, "prompt_len": 32, "new_tokens": 64, "tokens_per_s": ..., "peak_rss_mb": ...}

Model: GPT-Neo-125M shapes (EleutherAI/gpt-neo-125M config), random init, no download.
Workloads: `train` (next-token loss on every position, f32 and bf16 autocast), `sft` (reply tokens
only) and `dpo` (sigmoid loss against cached reference log-probs), each at 4x128 and 4x256 tokens;
greedy `generate` at batch 1 and 8; an RL `rollout` (4 prompts, sampling at temperature 0.9, then
policy and reference log-probs and values) and a whole `ppo` step (rollout, reward, GAE, 4 epochs of
clipped policy + value updates), the math of `rlxf train ppo` and TRL's PPOTrainer.

Usage: python3 bench/reference_pytorch.py [--threads 2] [--steps 3] [--size 125m|tiny] [--only train|sft|dpo|generate|rollout|ppo]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def gpt_neo_config(size):
    from transformers import GPTNeoConfig

    if size == "125m":
        return GPTNeoConfig(
            vocab_size=50257, max_position_embeddings=2048, hidden_size=768, num_layers=12,
            attention_types=[[["global", "local"], 6]], num_heads=12, window_size=256,
            intermediate_size=None, activation_function="gelu_new", bos_token_id=50256,
            eos_token_id=50256,
        )
    # tiny: for checking the script itself quickly
    return GPTNeoConfig(
        vocab_size=50257, max_position_embeddings=512, hidden_size=64, num_layers=2,
        attention_types=[[["global", "local"], 1]], num_heads=4, window_size=32,
        bos_token_id=50256, eos_token_id=50256,
    )


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_train(args):
    import torch
    from transformers import GPTNeoForCausalLM

    torch.manual_seed(0)
    model = GPTNeoForCausalLM(gpt_neo_config(args.size))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50257, (args.batch, args.seq), generator=generator)

    def step():
        optimizer.zero_grad(set_to_none=True)
        if args.precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
        else:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocates optimiser state
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - start) / args.steps
    return {
        "workload": "train", "batch": args.batch, "seq": args.seq, "precision": args.precision,
        "seconds_per_step": seconds, "tokens_per_s": args.batch * args.seq / seconds,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_objective(args):
    """One step of SFT (loss on reply tokens only, prompt labels -100) or DPO (sigmoid loss, beta
    0.1, reference log-probs computed once beforehand as TRL's precompute_ref_log_probs does) on the
    same shapes as `rlxf bench`: rows of seq/2 prompt + seq/2 reply tokens, batch/2 pairs for DPO."""
    import torch
    import torch.nn.functional as F
    from transformers import GPTNeoForCausalLM

    torch.manual_seed(0)
    model = GPTNeoForCausalLM(gpt_neo_config(args.size))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    half = args.seq // 2
    rows = args.batch
    ids = torch.randint(0, 50257, (rows, args.seq), generator=generator)
    labels = ids.clone()
    labels[:, :half] = -100
    if args.workload == "dpo":
        pairs = rows // 2
        # rows [0, pairs) hold the chosen replies, [pairs, 2 pairs) the rejected, same prompts
        ids[pairs:, :half] = ids[:pairs, :half]

    def reply_logprob_sums(logits):
        logprobs = F.log_softmax(logits[:, :-1].float(), dim=-1)
        targets = ids[:, 1:]
        picked = torch.gather(logprobs, 2, targets.unsqueeze(-1)).squeeze(-1)
        return picked[:, half - 1:].sum(-1)

    if args.workload == "dpo":
        with torch.no_grad():
            reference = reply_logprob_sums(model(input_ids=ids).logits)

    def step():
        optimizer.zero_grad(set_to_none=True)
        if args.workload == "sft":
            loss = model(input_ids=ids, labels=labels).loss
        else:
            sums = reply_logprob_sums(model(input_ids=ids).logits)
            margin = (sums[:pairs] - sums[pairs:]) - (reference[:pairs] - reference[pairs:])
            loss = -F.logsigmoid(0.1 * margin).mean()
        loss.backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - start) / args.steps
    return {
        "workload": args.workload, "batch": args.batch, "seq": args.seq, "precision": "f32",
        "seconds_per_step": seconds, "tokens_per_s": args.batch * args.seq / seconds,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_generate(args):
    import torch
    from transformers import GPTNeoForCausalLM

    torch.manual_seed(0)
    model = GPTNeoForCausalLM(gpt_neo_config(args.size))
    model.eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50257, (args.batch, args.prompt_len), generator=generator)
    mask = torch.ones_like(ids)

    def generate():
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=mask, do_sample=False,
                max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                pad_token_id=50256,
            )
        assert out.shape[1] == args.prompt_len + args.new_tokens

    generate()  # warm-up
    start = time.perf_counter()
    for _ in range(args.steps):
        generate()
    seconds = (time.perf_counter() - start) / args.steps
    return {
        "workload": "generate", "batch": args.batch, "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens, "tokens_per_s": args.batch * args.new_tokens / seconds,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_rl(args):
    """`rollout`: sample new_tokens tokens per prompt (temperature 0.9, no top-k, exactly
    new_tokens), then one forward pass each of the policy (log-probs, entropy, value head) and of
    the frozen reference. `ppo`: a rollout, the synthetic reward (fraction of token 262), per-token
    rewards (1 - beta) * score - beta * KL with beta 0.05, GAE (gamma 1, lambda 0.95), whitened
    advantages, then 4 epochs of one minibatch: clipped policy loss (0.2) + 0.1 * clipped value loss
    (0.2), gradient clipping to norm 1, AdamW."""
    import torch
    import torch.nn.functional as F
    from transformers import GPTNeoForCausalLM
    torch.manual_seed(0)
    config = gpt_neo_config(args.size)
    policy = GPTNeoForCausalLM(config)
    reference = GPTNeoForCausalLM(config)
    reference.load_state_dict(policy.state_dict())
    reference.eval()
    value_head = torch.nn.Linear(config.hidden_size, 1, bias=False)
    torch.nn.init.normal_(value_head.weight, std=0.02)
    params = list(policy.parameters()) + list(value_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, 50257, (args.batch, args.prompt_len), generator=generator)
    temperature, beta, n, p = 0.9, 0.05, args.new_tokens, args.prompt_len

    def score(model, ids, with_values):
        out = model(input_ids=ids, output_hidden_states=with_values)
        logprobs = F.log_softmax(out.logits[:, p - 1:-1].float() / temperature, dim=-1)
        picked = torch.gather(logprobs, 2, ids[:, p:].unsqueeze(-1)).squeeze(-1)
        entropy = -(logprobs.exp() * logprobs).sum(-1)
        values = value_head(out.hidden_states[-1][:, p - 1:-1]).squeeze(-1) if with_values else None
        return picked, entropy, values

    def rollout():
        with torch.no_grad():
            ids = policy.generate(
                input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                temperature=temperature, top_k=0, max_new_tokens=n, min_new_tokens=n,
                pad_token_id=50256,
            )
            logprobs, _, values = score(policy, ids, True)
            ref_logprobs, _, _ = score(reference, ids, False)
        assert ids.shape[1] == p + n
        return ids, logprobs, ref_logprobs, values

    def ppo_step():
        ids, old_logprobs, ref_logprobs, old_values = rollout()
        scores = (ids[:, p:] == 262).float().mean(1)
        rewards = -beta * (old_logprobs - ref_logprobs)
        rewards[:, -1] += (1 - beta) * scores
        advantages = torch.zeros_like(rewards)
        last = torch.zeros(args.batch)
        for t in reversed(range(n)):
            next_value = old_values[:, t + 1] if t + 1 < n else 0.0
            delta = rewards[:, t] + next_value - old_values[:, t]
            last = delta + 0.95 * last
            advantages[:, t] = last
        returns = advantages + old_values
        advantages = (advantages - advantages.mean()) * torch.rsqrt(advantages.var() + 1e-8)
        for _ in range(4):
            optimizer.zero_grad(set_to_none=True)
            logprobs, _, values = score(policy, ids, True)
            ratio = torch.exp(logprobs - old_logprobs)
            pg_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(0.8, 1.2)).mean()
            clipped = torch.clamp(values, old_values - 0.2, old_values + 0.2)
            vf_loss = 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2).mean()
            (pg_loss + 0.1 * vf_loss).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()

    work = rollout if args.workload == "rollout" else ppo_step
    work()  # warm-up
    start = time.perf_counter()
    for _ in range(args.steps):
        work()
    seconds = (time.perf_counter() - start) / args.steps
    return {
        "workload": args.workload, "batch": args.batch, "seq": p, "new_tokens": n,
        "seconds_per_step": seconds, "tokens_per_s": args.batch * n / seconds,
        "peak_rss_mb": peak_rss_mb(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed repetitions after one warm-up")
    parser.add_argument("--size", choices=["125m", "tiny"], default="125m")
    parser.add_argument("--only", choices=["train", "sft", "dpo", "generate", "rollout", "ppo"])
    parser.add_argument("--precisions", default="f32,bf16", help="training precisions to run")
    # set when this script calls itself for one workload
    parser.add_argument("--workload", choices=["train", "sft", "dpo", "generate", "rollout", "ppo"])
    parser.add_argument("--batch", type=int)
    parser.add_argument("--seq", type=int)
    parser.add_argument("--precision", choices=["f32", "bf16"])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.workload == "train":
        print(json.dumps(run_train(args)), flush=True)
        return
    if args.workload == "generate":
        print(json.dumps(run_generate(args)), flush=True)
        return
    if args.workload in ("sft", "dpo"):
        print(json.dumps(run_objective(args)), flush=True)
        return
    if args.workload in ("rollout", "ppo"):
        print(json.dumps(run_rl(args)), flush=True)
        return

    runs = []
    if args.only in (None, "train"):
        for precision in args.precisions.split(","):
            for seq in (128, 256):
                runs.append(["--workload", "train", "--batch", "4", "--seq", str(seq), "--precision", precision])
    for workload in ("sft", "dpo"):
        if args.only in (None, workload):
            for seq in (128, 256):
                runs.append(["--workload", workload, "--batch", "4", "--seq", str(seq)])
    if args.only in (None, "generate"):
        for batch in (1, 8):
            runs.append(["--workload", "generate", "--batch", str(batch),
                         "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens)])
    for workload in ("rollout", "ppo"):
        if args.only in (None, workload):
            runs.append(["--workload", workload, "--batch", "4",
                         "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens)])
    common = ["--threads", str(args.threads), "--steps", str(args.steps), "--size", args.size]
    for run in runs:
        result = subprocess.run([sys.executable, os.path.abspath(__file__), *common, *run],
                                check=True, stdout=subprocess.PIPE, text=True)
        sys.stdout.write(result.stdout)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
