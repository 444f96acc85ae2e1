#!/usr/bin/env python3
"""Validate rlxf's embedded default datasets and print a summary.

Checks `default_pairs.jsonl` and `eval_prompts.jsonl` in this folder (or the paths given
with --pairs / --eval): every line parses as a JSON object with exactly the expected
fields, prompts are Anthropic HH transcripts ending in "\\n\\nAssistant:", replies start
with a single space, ids are unique and well-formed, every context has enough rows, no
prompt repeats (within or across the files), and a healthy share of pairs has a rejected
reply longer than the chosen one, so that length alone does not predict preference.

Exits 0 when everything passes, 1 with a list of problems otherwise. Standard library only.
"""

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

CONTEXTS = (
    "emotional_support",
    "mental_health",
    "sensitive_question",
    "harmful_request",
    "medical",
    "legal_financial",
    "general",
)
MIN_PAIRS_TOTAL = 240
MIN_PAIRS_PER_CONTEXT = 30
MIN_EVAL_PER_CONTEXT = 25
# The brief asks for "roughly 40%" of pairs with the longer reply rejected; allow some slack
# either way, but well away from 0% or 100%, where length would be a perfect cue.
LONGER_REJECTED_RANGE = (0.30, 0.50)
MULTI_TURN_RANGE = (0.12, 0.35)
MAX_REPLY_SENTENCES = 5

PAIR_FIELDS = {"id", "context", "prompt", "chosen", "rejected"}
EVAL_FIELDS = {"id", "context", "text"}
PAIR_ID = re.compile(r"^default-\d{4}$")
EVAL_ID = re.compile(r"^eval-(?P<context>[a-z_]+)-(?P<number>\d{2,})$")
# A transcript is one or more Human/Assistant exchanges, the last Assistant turn left open.
TRANSCRIPT = re.compile(r"^(\n\nHuman: [^\n]+\n\nAssistant: [^\n]+)*\n\nHuman: [^\n]+\n\nAssistant:$")
# Sentence ends: ., ! or ? followed by whitespace or the end, not inside decimals like 2.5.
SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def read_jsonl(path, problems):
    """Yield (line_number, object) for each non-empty line, recording parse failures."""
    with open(path, encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                problems.append(f"{path.name}:{line_number}: empty line")
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                problems.append(f"{path.name}:{line_number}: invalid JSON ({error})")
                continue
            if not isinstance(value, dict):
                problems.append(f"{path.name}:{line_number}: expected a JSON object")
                continue
            yield line_number, value


def check_fields(where, row, expected, problems):
    """Report missing, extra or non-string fields; return True when the row is usable."""
    missing = expected - row.keys()
    extra = row.keys() - expected
    if missing:
        problems.append(f"{where}: missing field(s) {sorted(missing)}")
    if extra:
        problems.append(f"{where}: unexpected field(s) {sorted(extra)}")
    for field in expected & row.keys():
        if not isinstance(row[field], str) or not row[field].strip():
            problems.append(f"{where}: field '{field}' must be a non-empty string")
            return False
    return not missing


def check_context(where, row, problems):
    if row["context"] not in CONTEXTS:
        problems.append(f"{where}: field 'context' has unknown value {row['context']!r}")


def check_transcript(where, field, text, problems):
    if not TRANSCRIPT.match(text):
        problems.append(
            f"{where}: field '{field}' is not a Human/Assistant transcript ending in '\\n\\nAssistant:'"
        )


def check_reply(where, field, text, problems):
    if not text.startswith(" ") or text.startswith("  "):
        problems.append(f"{where}: field '{field}' must start with exactly one space")
    if text != text.rstrip():
        problems.append(f"{where}: field '{field}' has trailing whitespace")
    if "\n" in text or "Human:" in text or "Assistant:" in text:
        problems.append(f"{where}: field '{field}' must be a single reply without turn markers")
    sentences = len(SENTENCE_END.findall(text))
    if not 1 <= sentences <= MAX_REPLY_SENTENCES:
        problems.append(f"{where}: field '{field}' has {sentences} sentences (want 1-{MAX_REPLY_SENTENCES})")


def normalised(prompt):
    """Prompt text reduced to lowercase words, so trivially different copies still collide."""
    return " ".join(re.findall(r"[a-z0-9']+", prompt.lower()))


def check_pairs(path, problems, seen_prompts):
    per_context = Counter()
    ids = Counter()
    longer_rejected = multi_turn = total = 0
    chosen_words = rejected_words = 0
    for line_number, row in read_jsonl(path, problems):
        where = f"{path.name}:{line_number}"
        if not check_fields(where, row, PAIR_FIELDS, problems):
            continue
        total += 1
        ids[row["id"]] += 1
        if not PAIR_ID.match(row["id"]):
            problems.append(f"{where}: field 'id' {row['id']!r} is not of the form default-NNNN")
        check_context(where, row, problems)
        per_context[row["context"]] += 1
        check_transcript(where, "prompt", row["prompt"], problems)
        check_reply(where, "chosen", row["chosen"], problems)
        check_reply(where, "rejected", row["rejected"], problems)
        if row["chosen"].strip() == row["rejected"].strip():
            problems.append(f"{where}: chosen and rejected are identical")
        if row["prompt"].count("\n\nHuman:") > 1:
            multi_turn += 1
        if len(row["rejected"]) > len(row["chosen"]):
            longer_rejected += 1
        chosen_words += len(row["chosen"].split())
        rejected_words += len(row["rejected"].split())
        key = normalised(row["prompt"])
        if key in seen_prompts:
            problems.append(f"{where}: prompt duplicates {seen_prompts[key]}")
        else:
            seen_prompts[key] = where

    for duplicate, count in ids.items():
        if count > 1:
            problems.append(f"{path.name}: id {duplicate!r} appears {count} times")
    if total < MIN_PAIRS_TOTAL:
        problems.append(f"{path.name}: {total} pairs, want at least {MIN_PAIRS_TOTAL}")
    for context in CONTEXTS:
        if per_context[context] < MIN_PAIRS_PER_CONTEXT:
            problems.append(
                f"{path.name}: context {context!r} has {per_context[context]} pairs, "
                f"want at least {MIN_PAIRS_PER_CONTEXT}"
            )
    if total:
        share = longer_rejected / total
        low, high = LONGER_REJECTED_RANGE
        if not low <= share <= high:
            problems.append(f"{path.name}: {share:.0%} of pairs have the longer reply rejected, want {low:.0%}-{high:.0%}")
        share = multi_turn / total
        low, high = MULTI_TURN_RANGE
        if not low <= share <= high:
            problems.append(f"{path.name}: {share:.0%} of prompts are multi-turn, want {low:.0%}-{high:.0%}")

    print(f"{path.name}: {total} pairs")
    for context in CONTEXTS:
        print(f"  {context:<20} {per_context[context]:>4}")
    if total:
        print(f"  multi-turn prompts        {multi_turn:>4} ({multi_turn / total:.0%})")
        print(f"  rejected longer than chosen {longer_rejected:>2} ({longer_rejected / total:.0%})")
        print(f"  mean words: chosen {chosen_words / total:.1f}, rejected {rejected_words / total:.1f}")


def check_eval(path, problems, seen_prompts):
    per_context = Counter()
    ids = Counter()
    total = multi_turn = 0
    for line_number, row in read_jsonl(path, problems):
        where = f"{path.name}:{line_number}"
        if not check_fields(where, row, EVAL_FIELDS, problems):
            continue
        total += 1
        ids[row["id"]] += 1
        check_context(where, row, problems)
        per_context[row["context"]] += 1
        match = EVAL_ID.match(row["id"])
        if not match or match["context"] != row["context"]:
            problems.append(f"{where}: field 'id' {row['id']!r} is not of the form eval-<context>-NN")
        check_transcript(where, "text", row["text"], problems)
        if row["text"].count("\n\nHuman:") > 1:
            multi_turn += 1
        key = normalised(row["text"])
        if key in seen_prompts:
            problems.append(f"{where}: prompt duplicates {seen_prompts[key]}")
        else:
            seen_prompts[key] = where

    for duplicate, count in ids.items():
        if count > 1:
            problems.append(f"{path.name}: id {duplicate!r} appears {count} times")
    for context in CONTEXTS:
        if per_context[context] < MIN_EVAL_PER_CONTEXT:
            problems.append(
                f"{path.name}: context {context!r} has {per_context[context]} prompts, "
                f"want at least {MIN_EVAL_PER_CONTEXT}"
            )

    print(f"{path.name}: {total} prompts ({multi_turn} multi-turn)")
    for context in CONTEXTS:
        print(f"  {context:<20} {per_context[context]:>4}")


def main():
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=here / "default_pairs.jsonl", help="preference pairs JSONL")
    parser.add_argument("--eval", type=Path, default=here / "eval_prompts.jsonl", help="evaluation prompts JSONL")
    args = parser.parse_args()

    problems = []
    # Shared across both files so an evaluation prompt that leaks from the training pairs is caught.
    seen_prompts = {}
    check_pairs(args.pairs, problems, seen_prompts)
    check_eval(args.eval, problems, seen_prompts)

    if problems:
        print(f"\n{len(problems)} problem(s):")
        for problem in problems:
            print(f"  {problem}")
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
