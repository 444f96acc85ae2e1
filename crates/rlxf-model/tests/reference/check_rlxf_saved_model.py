"""Load models saved by rlxf in `transformers` and compare logits with the values rlxf computed.

rlxf writes the models (and `rlxf_logits.safetensors` beside each) when its save/load tests run with
RLXF_EXPORT_DIR set:

    RLXF_EXPORT_DIR=/tmp/rlxf-export cargo test -p rlxf-model --test save_load
    python3 crates/rlxf-model/tests/reference/check_rlxf_saved_model.py /tmp/rlxf-export/gpt-neo ...

Each DIR is loaded with AutoModelForCausalLM (and, when its config names a *ForSequenceClassification
class, also AutoModelForSequenceClassification, compared against rlxf's scalar-head scores). A DIR
with `rlxf_tokens.json` (a GGUF import: `cargo test -p rlxf-model --test gguf_import`) also has its
tokenizer loaded with AutoTokenizer, whose ids must equal rlxf's.
Exits non-zero if any max |difference| exceeds 1e-4.
"""

import json
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

TOLERANCE = 1e-4


def check(model_dir):
    expected = load_file(os.path.join(model_dir, "rlxf_logits.safetensors"))
    input_ids = expected["input_ids"].long()
    ok = True
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    diff = (logits - expected["logits"]).abs().max().item()
    print(f"{model_dir}: {type(model).__name__} max |dlogit| = {diff:.3e}")
    ok &= diff <= TOLERANCE

    with open(os.path.join(model_dir, "config.json")) as f:
        architectures = json.load(f).get("architectures", [])
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        classifier = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        with torch.no_grad():
            scores = classifier(input_ids=input_ids).logits[:, 0]
        diff = (scores - expected["scores"]).abs().max().item()
        print(f"{model_dir}: {type(classifier).__name__} max |dscore| = {diff:.3e}")
        ok &= diff <= TOLERANCE

    tokens_path = os.path.join(model_dir, "rlxf_tokens.json")
    if os.path.exists(tokens_path):
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        with open(tokens_path) as f:
            cases = json.load(f)
        mismatches = [
            case["text"] for case in cases if tokenizer(case["text"], add_special_tokens=False)["input_ids"] != case["ids"]
        ]
        print(f"{model_dir}: {type(tokenizer).__name__} ids differ on {len(mismatches)}/{len(cases)} strings {mismatches}")
        ok &= not mismatches
    return ok


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    results = [check(model_dir) for model_dir in sys.argv[1:]]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
