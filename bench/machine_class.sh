#!/usr/bin/env bash
# The CPU-speed workloads of BENCHMARKS.md, rlxf against PyTorch + transformers side by side, on
# the machine this runs on (e.g. a lent machine of the issue's class, a Xeon with AVX-512 and AMX):
# its CPU and library versions first, then `rlxf bench` at GPT-Neo-125M shapes with 2 threads,
# the most telling workloads first, so a run cut short still answers the main question. With a
# second binary (another build of rlxf, say the commit before a change),
# that one runs SFT too, without the reference, for a comparison of builds on the same machine.
#
#   bench/machine_class.sh OUT_DIR BINARY [SECOND_BINARY]
#
# Writes OUT_DIR/log.txt (everything printed, with each workload's duration) and one JSON-lines
# file per workload. STEPS (default 2) sets the timed repetitions, SIZE (default 125m) the shapes;
# SIZE=tiny checks the script itself in seconds.
set -uo pipefail
[ "$#" -ge 2 ] || { echo "usage: $0 OUT_DIR BINARY [SECOND_BINARY]" >&2; exit 2; }
cd "$(dirname "$0")/.."
out=$1 binary=$2 second=${3:-}
size=${SIZE:-125m} steps=${STEPS:-2}
mkdir -p "$out"
log=$out/log.txt
# The CPU features that decide which kernels run, space-separated with a trailing space.
flags="$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' |
  grep -x -E 'avx2|fma|avx512f|avx512_bf16|avx512_fp16|amx_bf16|amx_tile' | tr '\n' ' ')"
{
  date -u
  lscpu | grep -E 'Model name|^CPU\(s\)|Thread|Core|Socket'
  echo "flags: $flags"
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
} 2>&1 | tee -a "$log"
bench() {
  local name=$1 program=$2 start=$SECONDS
  shift 2
  echo "== $name: $program $*" | tee -a "$log"
  "$program" --threads 2 -q bench --size "$size" --steps "$steps" --out "$out/$name.jsonl" "$@" 2>&1 |
    tee -a "$log"
  echo "   ($name took $((SECONDS - start)) s)" | tee -a "$log"
}
bench sft "$binary" --only sft
[ -n "$second" ] && bench sft-second "$second" --only sft --no-reference
bench dpo "$binary" --only dpo
bench generate "$binary" --only generate
# bf16 only where the CPU multiplies bf16 itself: elsewhere PyTorch's autocast is emulated and one
# step takes longer than the whole run (it did not finish in 15 minutes on an AVX2-only EPYC).
precisions=f32
if [[ " $flags" == *" avx512_bf16 "* || " $flags" == *" amx_bf16 "* ]]; then
  precisions=f32,bf16
else
  echo "no avx512_bf16 or amx_bf16: train runs in f32 only" | tee -a "$log"
fi
bench train "$binary" --only train --precisions "$precisions"
date -u | tee -a "$log"
