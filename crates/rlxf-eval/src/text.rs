//! Surface statistics of responses: word tokens, length and distinct-n (Li et al. 2016, "A
//! Diversity-Promoting Objective Function for Neural Conversation Models").
//!
//! Words are maximal runs of letters, digits and inner apostrophes ("don't" is one word),
//! lowercased; every other non-space character is a token of its own for n-gram purposes, so
//! "hi!" and "hi." differ as 2-grams but both have one word. The tokenisation is model-independent
//! on purpose: policies with different tokenizers are compared on the same units.

use std::collections::HashSet;
use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

fn token_pattern() -> &'static Regex {
    static PATTERN: OnceLock<Regex> = OnceLock::new();
    PATTERN.get_or_init(|| {
        Regex::new(r"[\p{L}\p{N}]+(?:['’][\p{L}\p{N}]+)*|[^\s\p{L}\p{N}]")
            .expect("the token pattern is valid")
    })
}

/// Lowercased word and punctuation tokens of `text`.
pub fn tokens(text: &str) -> Vec<String> {
    token_pattern()
        .find_iter(text)
        .map(|token| token.as_str().to_lowercase())
        .collect()
}

fn is_word(token: &str) -> bool {
    token.chars().any(char::is_alphanumeric)
}

/// Number of words (punctuation excluded).
pub fn word_count(text: &str) -> usize {
    token_pattern()
        .find_iter(text)
        .filter(|token| is_word(token.as_str()))
        .count()
}

/// Distinct n-grams over a set of texts: `unique / total`, n-grams never crossing text boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DistinctN {
    pub n: usize,
    pub unique: usize,
    pub total: usize,
}

impl DistinctN {
    /// `unique / total`; `None` when no text has `n` tokens.
    pub fn ratio(&self) -> Option<f64> {
        (self.total > 0).then(|| self.unique as f64 / self.total as f64)
    }
}

/// Counts the distinct `n`-grams of the already-tokenised `texts`.
pub fn distinct_n<'a, T>(texts: impl IntoIterator<Item = &'a [T]>, n: usize) -> DistinctN
where
    T: std::hash::Hash + Eq + 'a,
{
    assert!(n > 0, "distinct-n needs n >= 1");
    let mut seen: HashSet<&[T]> = HashSet::new();
    let mut total = 0;
    for tokens in texts {
        for window in tokens.windows(n) {
            total += 1;
            seen.insert(window);
        }
    }
    DistinctN {
        n,
        unique: seen.len(),
        total,
    }
}

/// Distinct `n`-grams of raw texts, tokenised with [`tokens`].
pub fn distinct_n_of_texts<S: AsRef<str>>(texts: &[S], n: usize) -> DistinctN {
    let tokenised: Vec<Vec<String>> = texts.iter().map(|text| tokens(text.as_ref())).collect();
    distinct_n(tokenised.iter().map(Vec::as_slice), n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_contractions_and_split_punctuation() {
        assert_eq!(
            tokens("I don't KNOW, really!! Café’s 2nd try."),
            [
                "i",
                "don't",
                "know",
                ",",
                "really",
                "!",
                "!",
                "café’s",
                "2nd",
                "try",
                "."
            ]
        );
        assert_eq!(word_count("I don't KNOW, really!!"), 4);
        assert_eq!(word_count("  ...  "), 0);
    }

    #[test]
    fn distinct_n_counts_by_hand() {
        // "the cat sat" + "the cat ran": unigrams the, cat, sat, the, cat, ran -> 4 unique of 6;
        // bigrams (the cat) (cat sat) (the cat) (cat ran) -> 3 unique of 4.
        let texts = ["the cat sat", "The cat ran"];
        let one = distinct_n_of_texts(&texts, 1);
        assert_eq!((one.unique, one.total), (4, 6));
        let two = distinct_n_of_texts(&texts, 2);
        assert_eq!((two.unique, two.total), (3, 4));
        assert_eq!(two.ratio(), Some(0.75));
        // Bigrams do not cross texts: "a" + "b" has none.
        assert_eq!(distinct_n_of_texts(&["a", "b"], 2).ratio(), None);
    }
}
