#!/usr/bin/env bash
# SFT steps on the real SmolLM2-135M-Instruct (the quickstart's model, Llama architecture) with
# one or more rlxf binaries, interleaved ROUNDS times so that a busy machine slows them alike.
# `rlxf bench` covers GPT-Neo shapes against PyTorch; this covers the Llama code path between
# builds (e.g. before and after a change).
#
#   bench/sft_smollm2.sh [ROUNDS] BINARY...      # e.g. bench/sft_smollm2.sh 3 /tmp/before target/release/rlxf
#
# Needs the model in the cache (`rlxf model fetch smollm2-135m-instruct`). Prints, per run, the
# tokens/s of steps 3-7 (the first two warm up), their mean and the run's peak RSS; 2 threads,
# batch 4 × up to 192 tokens, the embedded pairs, seed 1.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then
  rounds=$1
  shift
fi
[ "$#" -ge 1 ] || { echo "usage: $0 [ROUNDS] BINARY..." >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for round in $(seq "$rounds"); do
  for binary in "$@"; do
    out="$work/run"
    rm -rf "$out"
    /usr/bin/time -f "%M" -o "$work/rss" "$binary" --threads 2 -q train sft \
      --config configs/sft-tiny.toml --output-dir "$out" \
      --set model=smollm2-135m-instruct --set train.learning_rate=2e-5 \
      --set train.warmup_steps=0 --set train.batch_size=4 --set train.max_steps=7 \
      --set train.eval_every=0 --set train.save_every=0 --set train.seed=1 \
      --set data.max_pairs=64 --set data.eval_fraction=0.0 \
      --set max_length=192 --set max_prompt_length=128 >/dev/null
    python3 - "$out/metrics.jsonl" "$work/rss" "$binary" "$round" <<'EOF'
import json, sys
metrics, rss, binary, round_ = sys.argv[1:]
speeds = [row["tokens_per_s"] for row in map(json.loads, open(metrics)) if "tokens_per_s" in row][2:]
print(f"round {round_} {binary}: tok/s {' '.join(f'{s:.1f}' for s in speeds)}  "
      f"mean {sum(speeds) / len(speeds):.1f}  peak RSS {int(open(rss).read()) // 1024} MB")
EOF
  done
done
