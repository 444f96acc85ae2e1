//! Advantage estimates: GAE for PPO, Monte-Carlo returns for A2C, the leave-one-out baseline for
//! RLOO, and whitening. Plain `f64` slices, one response at a time, so each is easy to check by
//! hand.

/// Generalised advantage estimation (Schulman et al. 2016) over one response, as TRL's
/// `PPOTrainer` computes it: `δ_t = r_t + γ·V_{t+1} − V_t` (with `V` past the last token 0),
/// `A_t = δ_t + γλ·A_{t+1}`; returns `(advantages, returns = A + V)`.
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lambda: f64) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(rewards.len(), values.len(), "one value per reward");
    let mut advantages = vec![0.0; rewards.len()];
    let mut next_advantage = 0.0;
    for t in (0..rewards.len()).rev() {
        let next_value = values.get(t + 1).copied().unwrap_or(0.0);
        let delta = rewards[t] + gamma * next_value - values[t];
        next_advantage = delta + gamma * lambda * next_advantage;
        advantages[t] = next_advantage;
    }
    let returns = advantages.iter().zip(values).map(|(a, v)| a + v).collect();
    (advantages, returns)
}

/// Discounted reward-to-go `G_t = Σ_{k≥t} γ^{k−t}·r_k` of one response.
pub fn discounted_returns(rewards: &[f64], gamma: f64) -> Vec<f64> {
    let mut returns = vec![0.0; rewards.len()];
    let mut running = 0.0;
    for t in (0..rewards.len()).rev() {
        running = rewards[t] + gamma * running;
        returns[t] = running;
    }
    returns
}

/// RLOO's baselines (Ahmadian et al. 2024; TRL `RLOOTrainer`): `rewards` holds `k` consecutive
/// responses per prompt; each response's baseline is the mean reward of the other `k − 1`
/// responses to the same prompt.
pub fn leave_one_out_baselines(rewards: &[f64], k: usize) -> Vec<f64> {
    assert!(
        k >= 2 && rewards.len().is_multiple_of(k),
        "k >= 2 responses per prompt"
    );
    rewards
        .chunks(k)
        .flat_map(|group| {
            let total: f64 = group.iter().sum();
            group
                .iter()
                .map(move |reward| (total - reward) / (k - 1) as f64)
        })
        .collect()
}

/// Whitens `values` in place across all of them (TRL `masked_whiten` over a batch's real tokens):
/// `(x − mean)/√(var + 1e−8)` with the unbiased variance; `shift_mean = false` adds the mean back.
pub fn whiten(values: &mut [f64], shift_mean: bool) {
    let n = values.len();
    if n < 2 {
        return;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let variance = values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let scale = 1.0 / (variance + 1e-8).sqrt();
    for value in values.iter_mut() {
        *value = (*value - mean) * scale + if shift_mean { 0.0 } else { mean };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-12, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn gae_by_hand() {
        // rewards [0, 0, 1], values [0.5, 0.4, 0.8], γ = 0.9, λ = 0.8:
        // δ2 = 1 − 0.8 = 0.2;            A2 = 0.2
        // δ1 = 0 + 0.9·0.8 − 0.4 = 0.32; A1 = 0.32 + 0.72·0.2 = 0.464
        // δ0 = 0 + 0.9·0.4 − 0.5 = −0.14; A0 = −0.14 + 0.72·0.464 = 0.19408
        let (advantages, returns) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.4, 0.8], 0.9, 0.8);
        close(&advantages, &[0.19408, 0.464, 0.2]);
        close(&returns, &[0.69408, 0.864, 1.0]);
        // λ = 1, γ = 1: A_t = Σ_{k≥t} r_k − V_t (the Monte-Carlo advantage).
        let (advantages, _) = gae(&[0.1, -0.2, 1.0], &[0.5, 0.4, 0.8], 1.0, 1.0);
        close(&advantages, &[0.4, 0.4, 0.2]);
    }

    #[test]
    fn returns_by_hand() {
        close(&discounted_returns(&[1.0, 0.0, 2.0], 0.5), &[1.5, 1.0, 2.0]);
    }

    #[test]
    fn leave_one_out_by_hand() {
        // Prompt 1: rewards 1, 2, 6 → baselines (2+6)/2, (1+6)/2, (1+2)/2.
        // Prompt 2: rewards 0, 3, 3 → 3, 1.5, 1.5.
        let baselines = leave_one_out_baselines(&[1.0, 2.0, 6.0, 0.0, 3.0, 3.0], 3);
        close(&baselines, &[4.0, 3.5, 1.5, 3.0, 1.5, 1.5]);
        close(&leave_one_out_baselines(&[1.0, 5.0], 2), &[5.0, 1.0]);
    }

    #[test]
    fn whitening_by_hand() {
        // mean 2.5, unbiased variance 5/3.
        let mut values = [1.0, 2.0, 3.0, 4.0];
        whiten(&mut values, true);
        let scale = 1.0 / (5.0f64 / 3.0 + 1e-8).sqrt();
        close(
            &values,
            &[-1.5 * scale, -0.5 * scale, 0.5 * scale, 1.5 * scale],
        );
        let mut unshifted = [1.0, 2.0, 3.0, 4.0];
        whiten(&mut unshifted, false);
        close(
            &unshifted,
            &[
                2.5 - 1.5 * scale,
                2.5 - 0.5 * scale,
                2.5 + 0.5 * scale,
                2.5 + 1.5 * scale,
            ],
        );
    }
}
