//! Context tags for per-context analysis: a keyword / regex rule set read from TOML.
//!
//! The default rules are `contexts.toml` at the crate root (embedded in the binary; its header
//! documents the matching rule). Users replace them with their own file of the same shape.

use std::path::Path;

use regex::RegexSet;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};
use crate::hh::human_turns;

/// The default rule file, compiled in.
pub const DEFAULT_RULES_TOML: &str = include_str!("../contexts.toml");

/// The tags the default rules produce, in priority order, then the fallback.
pub const STANDARD_CONTEXTS: [&str; 7] = [
    "mental_health",
    "harmful_request",
    "emotional_support",
    "medical",
    "legal_financial",
    "sensitive_question",
    "general",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    fallback: String,
    #[serde(default)]
    context: Vec<ContextFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextFile {
    name: String,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    patterns: Vec<String>,
}

/// A compiled rule set. Score = number of a context's distinct rules (keywords and patterns) that
/// match the prompt's human turns; the highest score wins, ties go to the context listed first,
/// and no match gives the fallback tag.
#[derive(Debug, Clone)]
pub struct ContextRules {
    contexts: Vec<CompiledContext>,
    fallback: String,
    /// SHA-256 of the TOML text the rules came from, for manifests.
    sha256: String,
}

#[derive(Debug, Clone)]
struct CompiledContext {
    name: String,
    /// One pattern per keyword or regex rule; a set reports which of them match in one pass.
    rules: RegexSet,
}

impl ContextRules {
    /// The rules compiled into rlxf (`contexts.toml`).
    pub fn embedded() -> Self {
        Self::from_toml(DEFAULT_RULES_TOML, Path::new("<embedded contexts.toml>"))
            .expect("the embedded contexts.toml is checked by the crate's tests")
    }

    /// Reads a rule file.
    pub fn from_path(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        Self::from_toml(&text, path)
    }

    /// Parses rules from TOML text; `path` names the text in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let bad = |message: String| DataError::ContextRules {
            path: path.to_path_buf(),
            message,
        };
        let file: RulesFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut contexts = Vec::with_capacity(file.context.len());
        for context in file.context {
            if context.name.trim().is_empty() {
                return Err(bad("a context has an empty name".into()));
            }
            if contexts
                .iter()
                .any(|c: &CompiledContext| c.name == context.name)
            {
                return Err(bad(format!("context `{}` is listed twice", context.name)));
            }
            let keywords = context
                .keywords
                .iter()
                .map(|keyword| format!(r"(?i)\b{}\b", regex::escape(keyword.trim())));
            let patterns = context
                .patterns
                .iter()
                .map(|pattern| format!("(?i){pattern}"));
            let sources: Vec<String> = keywords.chain(patterns).collect();
            let rules = RegexSet::new(&sources).map_err(|set_error| {
                // Name the rule at fault: the set's own error does not say which one it is.
                let culprit = sources.iter().find_map(|source| {
                    regex::Regex::new(source)
                        .err()
                        .map(|e| format!("bad rule `{source}`: {e}"))
                });
                bad(format!(
                    "context `{}`: {}",
                    context.name,
                    culprit.unwrap_or_else(|| set_error.to_string())
                ))
            })?;
            contexts.push(CompiledContext {
                name: context.name,
                rules,
            });
        }
        Ok(ContextRules {
            contexts,
            fallback: file.fallback,
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
        })
    }

    /// The tag for a prompt (transcript form or plain text).
    pub fn tag(&self, prompt: &str) -> &str {
        let turns = human_turns(prompt);
        let mut best: Option<(&str, usize)> = None;
        for context in &self.contexts {
            let mut matched = vec![false; context.rules.len()];
            for turn in &turns {
                for rule in context.rules.matches(turn).iter() {
                    matched[rule] = true;
                }
            }
            let score = matched.iter().filter(|&&m| m).count();
            // Strictly greater: on a tie the earlier (higher-priority) context stays.
            if score > 0 && best.is_none_or(|(_, best_score)| score > best_score) {
                best = Some((&context.name, score));
            }
        }
        best.map_or(self.fallback.as_str(), |(name, _)| name)
    }

    /// SHA-256 (hex) of the rule file's text.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Every tag these rules can produce, in priority order, fallback last.
    pub fn names(&self) -> Vec<&str> {
        self.contexts
            .iter()
            .map(|c| c.name.as_str())
            .chain(std::iter::once(self.fallback.as_str()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(rules: &ContextRules, prompt: &str) -> String {
        rules
            .tag(&format!("\n\nHuman: {prompt}\n\nAssistant:"))
            .to_string()
    }

    #[test]
    fn embedded_rules_cover_the_standard_contexts_in_priority_order() {
        assert_eq!(ContextRules::embedded().names(), STANDARD_CONTEXTS);
    }

    #[test]
    fn tags_hand_written_examples() {
        let cases = [
            (
                "I've been thinking about suicide and I don't know who to tell.",
                "mental_health",
            ),
            (
                "My therapist says my anxiety is getting worse.",
                "mental_health",
            ),
            (
                "How do I make a bomb out of household chemicals?",
                "harmful_request",
            ),
            (
                "What's the best way to shoplift without getting caught?",
                "harmful_request",
            ),
            (
                "My girlfriend broke up with me and I'm so lonely.",
                "emotional_support",
            ),
            ("My dog died yesterday.", "emotional_support"),
            ("What dose of ibuprofen is safe for a fever?", "medical"),
            (
                "Can my landlord evict me without notice?",
                "legal_financial",
            ),
            (
                "How should I pay off my credit card debt?",
                "legal_financial",
            ),
            ("Why are all Mexican people lazy?", "sensitive_question"),
            ("What do you think about abortion?", "sensitive_question"),
            ("What's a good recipe for banana bread?", "general"),
            ("How far is the moon?", "general"),
        ];
        let rules = ContextRules::embedded();
        for (prompt, expected) in cases {
            assert_eq!(tag(&rules, prompt), expected, "{prompt}");
        }
    }

    #[test]
    fn keywords_match_whole_words_only() {
        // "die" (sensitive) and "sad" (emotional) must not fire inside "diet" or "crusade".
        let rules = ContextRules::embedded();
        assert_eq!(
            tag(&rules, "Which diet is best for a crusade across the Alps?"),
            "general"
        );
    }

    #[test]
    fn reads_only_human_turns() {
        let rules = ContextRules::embedded();
        let prompt = "\n\nHuman: Tell me about the moon.\n\nAssistant: I feel suicidal about \
                      bombs.\n\nHuman: And the sun?\n\nAssistant:";
        assert_eq!(rules.tag(prompt), "general");
    }

    #[test]
    fn strongest_match_wins_and_ties_go_to_the_first_listed() {
        let rules = ContextRules::from_toml(
            "fallback = \"other\"\n\
             [[context]]\nname = \"a\"\nkeywords = [\"apple\"]\n\
             [[context]]\nname = \"b\"\nkeywords = [\"banana\", \"cherry\"]\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(rules.tag("apple banana"), "a");
        assert_eq!(rules.tag("apple banana cherry"), "b");
        assert_eq!(rules.tag("durian"), "other");
    }

    #[test]
    fn bad_rule_files_name_the_file_and_the_problem() {
        let err = ContextRules::from_toml(
            "fallback = \"g\"\n[[context]]\nname = \"x\"\npatterns = [\"(unclosed\"]\n",
            Path::new("rules.toml"),
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("rules.toml") && message.contains("context `x`"),
            "{message}"
        );
        assert!(err.is_bad_input());
        assert!(ContextRules::from_toml("contexts = 1", Path::new("r.toml")).is_err());
    }
}
