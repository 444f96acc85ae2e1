//! The probability of an answer that is more than one token.
//!
//! A tokenizer that splits digits (SmolLM2, Llama) writes the score `10` as `1`, `0`, so a 1–10
//! scale cannot be read from one next-token distribution: `P("1")` there is the probability that
//! the answer *starts* with 1, i.e. `P(1) + P(10)`. Each choice is scored as the whole answer it
//! is instead:
//!
//! `P(choice) = Π_j P(t_j | prompt, t_<j) · (1 − Σ_c P(c | prompt, choice))`
//!
//! where the last factor removes the mass of the tokens `c` that continue this choice into a
//! longer one (after `1`, the `0` of `10`). The choices' probabilities then add up to the mass
//! the model puts on answering with one of them, as single-token choices' do, and `P(1)` no longer
//! counts the tens. A model that goes on from `1` to some token no choice has (a `5`) still
//! counts as answering `1`: the answer is read as the longest choice that the tokens spell.

use std::collections::BTreeSet;

/// The token sequences of a query's choices, in the query's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChoiceTokens {
    choices: Vec<Vec<u32>>,
}

impl ChoiceTokens {
    /// `choices` must be non-empty sequences.
    pub fn new(choices: Vec<Vec<u32>>) -> Self {
        debug_assert!(choices.iter().all(|tokens| !tokens.is_empty()));
        Self { choices }
    }

    pub fn choices(&self) -> &[Vec<u32>] {
        &self.choices
    }

    /// The token sequences to append to the prompt so that their next-token distributions (one
    /// after the prompt and one after each appended token) cover every prefix a choice is scored
    /// from: the longest proper prefixes of the choices. Single-token choices need only the
    /// prompt itself (one empty path).
    pub fn paths(&self) -> Vec<Vec<u32>> {
        let prefixes: BTreeSet<&[u32]> = self
            .choices
            .iter()
            .flat_map(|tokens| (0..tokens.len()).map(move |len| &tokens[..len]))
            .collect();
        prefixes
            .iter()
            .filter(|prefix| {
                !prefixes
                    .iter()
                    .any(|other| other.len() > prefix.len() && other.starts_with(prefix))
            })
            .map(|prefix| prefix.to_vec())
            .collect()
    }

    /// The number of tokens the longest path appends to the prompt.
    pub fn longest_path(&self) -> usize {
        self.choices.iter().map(Vec::len).max().unwrap_or(1) - 1
    }

    /// `log P(choice)` for every choice (see the module docs). `next_token_logprobs(prefix)` is the
    /// log-softmax over the vocabulary after the prompt followed by `prefix`, for every proper
    /// prefix of a choice.
    pub fn logprobs<'a>(&self, next_token_logprobs: impl Fn(&[u32]) -> &'a [f32]) -> Vec<f64> {
        self.choices
            .iter()
            .map(|tokens| {
                let spelled: f64 = (0..tokens.len())
                    .map(|len| f64::from(next_token_logprobs(&tokens[..len])[tokens[len] as usize]))
                    .sum();
                let continuations: BTreeSet<u32> = self
                    .choices
                    .iter()
                    .filter(|other| other.len() > tokens.len() && other.starts_with(tokens))
                    .map(|other| other[tokens.len()])
                    .collect();
                if continuations.is_empty() {
                    return spelled;
                }
                let after = next_token_logprobs(tokens);
                let p_continue: f64 = continuations
                    .iter()
                    .map(|&token| f64::from(after[token as usize]).exp())
                    .sum();
                spelled + (-p_continue.min(1.0)).ln_1p()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn single_token_choices_are_read_from_the_prompt_alone() {
        let tokens = ChoiceTokens::new(vec![vec![5], vec![7]]);
        assert_eq!(tokens.paths(), vec![Vec::<u32>::new()]);
        assert_eq!(tokens.longest_path(), 0);
        let row: Vec<f32> = (0..10).map(|i| -(i as f32)).collect();
        assert_eq!(tokens.logprobs(|_| &row), vec![-5.0, -7.0]);
    }

    #[test]
    fn a_choice_that_starts_a_longer_one_loses_the_longer_ones_mass() {
        // Tokens: 1 → "1", 2 → "2", 0 → "0". Choices "1", "2", "10".
        let tokens = ChoiceTokens::new(vec![vec![1], vec![2], vec![1, 0]]);
        assert_eq!(tokens.paths(), vec![vec![1]]);
        assert_eq!(tokens.longest_path(), 1);
        // After the prompt: P(1) = 0.5, P(2) = 0.3. After "1": P(0) = 0.4, P(5) = 0.1.
        let ln = |p: f32| p.ln();
        let rows: HashMap<Vec<u32>, Vec<f32>> = HashMap::from([
            (vec![], vec![ln(0.1), ln(0.5), ln(0.3), ln(0.1)]),
            (
                vec![1],
                vec![ln(0.4), ln(0.1), ln(0.1), ln(0.1), ln(0.1), ln(0.1)],
            ),
        ]);
        let logprobs = tokens.logprobs(|prefix| rows[prefix].as_slice());
        let probs: Vec<f64> = logprobs.iter().map(|lp| lp.exp()).collect();
        // "1" = 0.5 · (1 − 0.4) = 0.3; "2" = 0.3; "10" = 0.5 · 0.4 = 0.2 (hand-computed).
        for (p, expected) in probs.iter().zip([0.3, 0.3, 0.2]) {
            assert!((p - expected).abs() < 1e-6, "{probs:?}");
        }
        // "1" and "10" together keep what the model put on a leading 1.
        assert!((probs[0] + probs[2] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn branching_choices_need_one_path_per_branch() {
        // "12", "13", "45", "4": the prefixes [1] and [4] are both needed, [] is covered by them.
        let tokens = ChoiceTokens::new(vec![vec![1, 2], vec![1, 3], vec![4, 5], vec![4]]);
        assert_eq!(tokens.paths(), vec![vec![1], vec![4]]);
        // Choices sharing a continuation token count it once.
        let shared = ChoiceTokens::new(vec![vec![1], vec![1, 0], vec![1, 0, 0]]);
        assert_eq!(shared.paths(), vec![vec![1, 0]]);
        let half = [0.5f32.ln(); 3];
        let probs: Vec<f64> = shared
            .logprobs(|_| half.as_slice())
            .iter()
            .map(|lp| lp.exp())
            .collect();
        // "1" = .5·(1−.5), "10" = .5·.5·(1−.5), "100" = .5·.5·.5.
        for (p, expected) in probs.iter().zip([0.25, 0.125, 0.125]) {
            assert!((p - expected).abs() < 1e-6, "{probs:?}");
        }
    }

    #[test]
    fn a_certain_continuation_makes_the_short_choice_impossible() {
        let tokens = ChoiceTokens::new(vec![vec![1], vec![1, 0]]);
        let certain = [0.0f32, 0.0];
        let logprobs = tokens.logprobs(|_| certain.as_slice());
        assert_eq!(logprobs[0], f64::NEG_INFINITY);
        assert_eq!(logprobs[1], 0.0);
    }
}
