"""Regenerates tests/fixtures/reference.json, the reference values rlxf-train's unit tests compare to.

Run from crates/rlxf-train:  python3 scripts/make_fixtures.py

* adamw: `torch.optim.AdamW` (float64, two parameter groups: one with weight decay, one without)
  over several steps, gradients clipped with `torch.nn.utils.clip_grad_norm_` and a linear-warmup
  schedule (lr given per step).
* dpo: the loss of TRL's `DPOTrainer.dpo_loss` for `loss_type="sigmoid"` with `label_smoothing`,
  re-implemented here line for line (trl is not needed to run this):
      logits = (pi_c - pi_r) - (ref_c - ref_r)
      losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing)
               - F.logsigmoid(-beta * logits) * label_smoothing
      chosen_rewards = beta * (pi_c - ref_c); rejected_rewards = beta * (pi_r - ref_r)
* bradley_terry: the soft-label cross-entropy of Lee et al. 2023,
      -(p * logsigmoid(r_c - r_r) + (1 - p) * logsigmoid(r_r - r_c)).
"""

import json
import pathlib

import torch
import torch.nn.functional as F

torch.manual_seed(1234)
out = {}

# --- AdamW -------------------------------------------------------------------------------------
shapes = {"decayed": (3, 4), "not_decayed": (5,)}
initial = {name: torch.randn(shape, dtype=torch.float64) for name, shape in shapes.items()}
params = {name: torch.nn.Parameter(t.clone()) for name, t in initial.items()}
lrs = [1e-2 * min(1.0, (k + 1) / 3) for k in range(6)]
max_norm = 1.5
opt = torch.optim.AdamW(
    [
        {"params": [params["decayed"]], "weight_decay": 0.1},
        {"params": [params["not_decayed"]], "weight_decay": 0.0},
    ],
    lr=lrs[0],
    betas=(0.9, 0.95),
    eps=1e-6,
)
steps = []
for lr in lrs:
    grads = {name: torch.randn(shape, dtype=torch.float64) * 0.7 for name, shape in shapes.items()}
    for name, p in params.items():
        p.grad = grads[name].clone()
    norm = torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    steps.append(
        {
            "lr": lr,
            "grads": {name: g.flatten().tolist() for name, g in grads.items()},
            "grad_norm": norm.item(),
            "params_after": {name: p.detach().flatten().tolist() for name, p in params.items()},
        }
    )
out["adamw"] = {
    "betas": [0.9, 0.95],
    "eps": 1e-6,
    "weight_decay": 0.1,
    "max_norm": max_norm,
    "shapes": {name: list(shape) for name, shape in shapes.items()},
    "initial": {name: t.flatten().tolist() for name, t in initial.items()},
    "steps": steps,
}

# --- DPO (TRL sigmoid loss) ----------------------------------------------------------------------
n = 7
logps = {k: -torch.rand(n, dtype=torch.float64) * 40 for k in ["pi_c", "pi_r", "ref_c", "ref_r"]}
dpo_cases = []
for beta, smoothing in [(0.1, 0.0), (0.1, 0.2), (0.5, 0.05)]:
    logits = (logps["pi_c"] - logps["pi_r"]) - (logps["ref_c"] - logps["ref_r"])
    losses = -F.logsigmoid(beta * logits) * (1 - smoothing) - F.logsigmoid(-beta * logits) * smoothing
    dpo_cases.append(
        {
            "beta": beta,
            "label_smoothing": smoothing,
            "losses": losses.tolist(),
            "chosen_rewards": (beta * (logps["pi_c"] - logps["ref_c"])).tolist(),
            "rejected_rewards": (beta * (logps["pi_r"] - logps["ref_r"])).tolist(),
        }
    )
out["dpo"] = {"logps": {k: v.tolist() for k, v in logps.items()}, "cases": dpo_cases}

# --- Bradley-Terry with soft labels ----------------------------------------------------------------
r_c = torch.randn(n, dtype=torch.float64) * 3
r_r = torch.randn(n, dtype=torch.float64) * 3
p = torch.tensor([1.0, 0.0, 0.5, 0.9, 0.1, 0.73, 1.0], dtype=torch.float64)
soft = -(p * F.logsigmoid(r_c - r_r) + (1 - p) * F.logsigmoid(r_r - r_c))
out["bradley_terry"] = {
    "chosen": r_c.tolist(),
    "rejected": r_r.tolist(),
    "labels": p.tolist(),
    "soft_losses": soft.tolist(),
    "hard_losses": (-F.logsigmoid(r_c - r_r)).tolist(),
}

path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "reference.json"
path.write_text(json.dumps(out, indent=1) + "\n")
print(f"wrote {path}")
