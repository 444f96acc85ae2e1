//! PPO's clipped surrogate losses, elementwise on tensors (TRL `PPOTrainer` / `RLOOTrainer`), so
//! PPO applies them per token and RLOO per response. Made of ops candle differentiates
//! (`exp`, `clamp`, `maximum`), checked against finite differences in the tests.

use candle_core::Tensor;

use crate::error::Result;

/// An elementwise loss and where its clipped branch was the active one (1.0) or not (0.0).
pub struct Clipped {
    /// Differentiable, the shape of the inputs.
    pub losses: Tensor,
    /// Detached, same shape: the clip fraction's numerator.
    pub clipped: Tensor,
}

/// PPO's clipped policy loss (Schulman et al. 2017), with `ratio = exp(log π − log π_old)`:
/// `max(−A·ratio, −A·clip(ratio, 1 − ε, 1 + ε))`.
pub fn clipped_policy_loss(
    logprob_diff: &Tensor,
    advantages: &Tensor,
    cliprange: f64,
) -> Result<Clipped> {
    let ratio = logprob_diff.exp()?;
    let unclipped = (advantages.neg()? * &ratio)?;
    let clipped = (advantages.neg()? * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)?)?;
    let clip_active = clipped
        .gt(&unclipped)?
        .to_dtype(unclipped.dtype())?
        .detach();
    Ok(Clipped {
        losses: unclipped.maximum(&clipped)?,
        clipped: clip_active,
    })
}

/// PPO's clipped value loss: `½·max((V − R)², (clip(V, V_old ± ε) − R)²)`.
pub fn clipped_value_loss(
    values: &Tensor,
    old_values: &Tensor,
    returns: &Tensor,
    cliprange_value: f64,
) -> Result<Clipped> {
    let low = old_values.affine(1.0, -cliprange_value)?;
    let high = old_values.affine(1.0, cliprange_value)?;
    let clipped_values = values.maximum(&low)?.minimum(&high)?;
    let unclipped = (values - returns)?.sqr()?;
    let clipped = (clipped_values - returns)?.sqr()?;
    let clip_active = clipped
        .gt(&unclipped)?
        .to_dtype(unclipped.dtype())?
        .detach();
    Ok(Clipped {
        losses: (unclipped.maximum(&clipped)? * 0.5)?,
        clipped: clip_active,
    })
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::losses::to_f64s;

    fn tensor(values: &[f64]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap()
    }

    #[test]
    fn clipped_policy_loss_by_hand() {
        // ε = 0.2. ratios e^{0.5} ≈ 1.6487, e^{−0.5} ≈ 0.6065, e^{0.1} ≈ 1.1052, e^{−0.5}.
        let diff = tensor(&[0.5, -0.5, 0.1, -0.5]);
        let advantages = tensor(&[1.0, 1.0, -2.0, -1.0]);
        let loss = clipped_policy_loss(&diff, &advantages, 0.2).unwrap();
        let r = |x: f64| x.exp();
        // A > 0, ratio above 1 + ε: max(−1.6487, −1.2) = −1.2 (clipped branch).
        // A > 0, ratio below 1 − ε: max(−0.6065, −0.8) = −0.6065 (unclipped).
        // A < 0, ratio inside: both 2·1.1052.
        // A < 0, ratio below 1 − ε: max(0.6065, 0.8) = 0.8 (clipped).
        let expected = [-1.2, -r(-0.5), 2.0 * r(0.1), 0.8];
        for (got, want) in to_f64s(&loss.losses).unwrap().iter().zip(expected) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        assert_eq!(to_f64s(&loss.clipped).unwrap(), vec![1.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn clipped_value_loss_by_hand() {
        // ε = 0.2, old value 1. V = 1.5 (clipped to 1.2), R = 2: max(0.25, 0.64) → 0.32, clipped.
        // V = 0.5 (clipped to 0.8), R = 0: max(0.25, 0.64) → 0.32, clipped.
        // V = 1.1 (inside), R = 3: both 3.61 → 1.805.
        let loss = clipped_value_loss(
            &tensor(&[1.5, 0.5, 1.1]),
            &tensor(&[1.0, 1.0, 1.0]),
            &tensor(&[2.0, 0.0, 3.0]),
            0.2,
        )
        .unwrap();
        let expected = [0.32, 0.32, 1.805];
        for (got, want) in to_f64s(&loss.losses).unwrap().iter().zip(expected) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        assert_eq!(to_f64s(&loss.clipped).unwrap(), vec![1.0, 1.0, 0.0]);
    }

    /// Central finite differences of `f(x).sum()` against candle's gradient, at points away
    /// from the clip boundaries (where the losses are not differentiable).
    fn check_gradient(x0: &[f64], f: impl Fn(&Tensor) -> Tensor) {
        let var = Var::new(x0, &Device::Cpu).unwrap();
        let loss = f(var.as_tensor()).sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let analytic = to_f64s(grads.get(var.as_tensor()).unwrap()).unwrap();
        let h = 1e-6;
        for i in 0..x0.len() {
            let eval = |delta: f64| {
                let mut x = x0.to_vec();
                x[i] += delta;
                to_f64s(&f(&tensor(&x)).sum_all().unwrap()).unwrap()[0]
            };
            let numeric = (eval(h) - eval(-h)) / (2.0 * h);
            assert!(
                (numeric - analytic[i]).abs() < 1e-6,
                "d/dx{i}: analytic {} vs numeric {numeric}",
                analytic[i]
            );
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let advantages = tensor(&[1.0, 1.0, -2.0, -1.0, 0.7]);
        check_gradient(&[0.5, -0.5, 0.1, -0.5, 0.05], |diff| {
            clipped_policy_loss(diff, &advantages, 0.2).unwrap().losses
        });
        let old = tensor(&[1.0, 1.0, 1.0, -0.3]);
        let returns = tensor(&[2.0, 0.0, 3.0, 0.4]);
        check_gradient(&[1.5, 0.5, 1.1, -0.35], |values| {
            clipped_value_loss(values, &old, &returns, 0.2)
                .unwrap()
                .losses
        });
    }
}
