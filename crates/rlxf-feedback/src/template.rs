//! Labeling prompts: a preamble (a user-replaceable text file), optional few-shot exemplars, the item
//! to judge and an ending such as `Preferred Response=` after which the answer token is read.
//!
//! Every prompt is a [`ChoiceQuery`] in three parts, so a backend can fit a long conversation into a
//! small context window without losing what matters: the stable `prefix` (preamble and exemplars),
//! the item `body` (conversation, then the replies), and the `ending`. A local backend that must cut
//! tokens cuts from the start of the body (the oldest turns of the conversation).
//!
//! The built-in preambles live in `templates/` beside this crate's sources; any other text file can
//! be used instead (see [`load_preamble`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{FeedbackError, Result};

/// Built-in preambles, by name: what `preamble = "NAME"` in a labeler config refers to.
pub const BUILTIN_PREAMBLES: [(&str, &str); 5] = [
    ("base", include_str!("../templates/base.txt")),
    (
        "harmless_detailed",
        include_str!("../templates/harmless_detailed.txt"),
    ),
    (
        "direct_score",
        include_str!("../templates/direct_score.txt"),
    ),
    (
        "harmlessness_judge",
        include_str!("../templates/harmlessness_judge.txt"),
    ),
    ("win_rate", include_str!("../templates/win_rate.txt")),
];

/// The default pairwise ending, as in Lee et al. 2023: the next token is read as the answer.
pub const PAIRWISE_ENDING: &str = "Preferred Response=";
/// Ending of the chain-of-thought step: the labeler writes its rationale after it.
pub const RATIONALE_ENDING: &str = "Rationale:";
/// The two answers of a pairwise prompt, in position order. Digits with no leading space: after an
/// ending that ends in `=` every BPE tokenizer rlxf supports emits them as tokens of their own.
pub const PAIRWISE_CHOICES: [&str; 2] = ["1", "2"];

/// The text of preamble `spec`: a built-in name (`base`, `harmless_detailed`, ...) or the path of a
/// text file.
pub fn load_preamble(spec: &str) -> Result<String> {
    if let Some((_, text)) = BUILTIN_PREAMBLES.iter().find(|(name, _)| *name == spec) {
        return Ok(text.to_string());
    }
    let path = Path::new(spec);
    if !path.is_file() {
        let names: Vec<&str> = BUILTIN_PREAMBLES.iter().map(|(name, _)| *name).collect();
        return Err(FeedbackError::config(
            spec,
            "preamble",
            format!(
                "neither a built-in preamble ({}) nor a readable file",
                names.join(", ")
            ),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|err| FeedbackError::io(path, err))?;
    if text.trim().is_empty() {
        return Err(FeedbackError::config(
            spec,
            "preamble",
            "the preamble file is empty",
        ));
    }
    Ok(text)
}

/// One prompt whose answer is read from the next-token distribution, restricted to `choices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChoiceQuery {
    /// Preamble and exemplars: the same for every item of a run.
    pub prefix: String,
    /// The item being judged.
    pub body: String,
    /// Text right before the answer (`Preferred Response=`).
    pub ending: String,
    /// The answer strings, read after `ending`.
    pub choices: Vec<String>,
}

impl ChoiceQuery {
    /// The prompt as one plain text, as sent to a completions endpoint.
    pub fn text(&self) -> String {
        format!("{}{}{}", self.prefix, self.body, self.ending)
    }
}

/// The conversation of an HH-style prompt as the labeler reads it: without surrounding whitespace
/// and without the final `Assistant:` marker the replies would follow.
pub fn conversation_text(prompt: &str) -> &str {
    let trimmed = prompt.trim();
    trimmed
        .strip_suffix("Assistant:")
        .map(str::trim_end)
        .unwrap_or(trimmed)
}

/// A solved pairwise example shown before the item (few-shot prompting).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairExemplar {
    pub context: String,
    pub response_1: String,
    pub response_2: String,
    /// 1 or 2.
    pub preferred: u8,
    /// Shown before the answer when the labeler runs with chain-of-thought.
    #[serde(default)]
    pub rationale: Option<String>,
}

/// Reads exemplars from a JSONL file, one [`PairExemplar`] object per line.
pub fn read_exemplars(path: &Path) -> Result<Vec<PairExemplar>> {
    let text = std::fs::read_to_string(path).map_err(|err| FeedbackError::io(path, err))?;
    let mut exemplars = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let origin = format!("{}:{}", path.display(), index + 1);
        let exemplar: PairExemplar = serde_json::from_str(line)
            .map_err(|err| FeedbackError::config(&origin, "(line)", err.to_string()))?;
        if !matches!(exemplar.preferred, 1 | 2) {
            return Err(FeedbackError::config(
                &origin,
                "preferred",
                format!("must be 1 or 2, found {}", exemplar.preferred),
            ));
        }
        exemplars.push(exemplar);
    }
    Ok(exemplars)
}

/// The pairwise labeling prompt (Lee et al. 2023): preamble, exemplars, the conversation, the two
/// replies in the order given, an optional rationale, and the ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairwiseTemplate {
    prefix: String,
    ending: String,
}

impl PairwiseTemplate {
    pub fn new(preamble: &str, exemplars: &[PairExemplar], ending: &str) -> Result<Self> {
        if ending.trim().is_empty() {
            return Err(FeedbackError::config(
                "pairwise template",
                "ending",
                "cannot be empty",
            ));
        }
        let mut prefix = format!("{}\n\n", preamble.trim_end());
        for exemplar in exemplars {
            prefix.push_str(&pair_body(
                &exemplar.context,
                &exemplar.response_1,
                &exemplar.response_2,
                exemplar.rationale.as_deref(),
            ));
            prefix.push_str(&format!("{ending}{}\n\n", exemplar.preferred));
        }
        Ok(Self {
            prefix,
            ending: ending.to_string(),
        })
    }

    /// The built-in preamble `name` with no exemplars and the default ending.
    pub fn builtin(name: &str) -> Result<Self> {
        Self::new(&load_preamble(name)?, &[], PAIRWISE_ENDING)
    }

    pub fn ending(&self) -> &str {
        &self.ending
    }

    /// Preamble and exemplars as rendered before every item.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The prompt that asks which of `first` and `second` (replies to `prompt`) is better.
    pub fn query(
        &self,
        prompt: &str,
        first: &str,
        second: &str,
        rationale: Option<&str>,
    ) -> ChoiceQuery {
        ChoiceQuery {
            prefix: self.prefix.clone(),
            body: pair_body(prompt, first, second, rationale),
            ending: self.ending.clone(),
            choices: PAIRWISE_CHOICES.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// The chain-of-thought prompt: the same item, ending where the labeler explains its choice.
    pub fn rationale_query(&self, prompt: &str, first: &str, second: &str) -> ChoiceQuery {
        ChoiceQuery {
            prefix: self.prefix.clone(),
            body: pair_body(prompt, first, second, None),
            ending: RATIONALE_ENDING.to_string(),
            choices: Vec::new(),
        }
    }
}

fn pair_body(prompt: &str, first: &str, second: &str, rationale: Option<&str>) -> String {
    let mut body = format!(
        "Conversation:\n{}\n\nResponse 1: {}\n\nResponse 2: {}\n\n",
        conversation_text(prompt),
        first.trim(),
        second.trim()
    );
    if let Some(rationale) = rationale {
        body.push_str(&format!("{RATIONALE_ENDING} {}\n\n", rationale.trim()));
    }
    body
}

/// A prompt about one reply (direct score, harmlessness verdict): preamble, the conversation, the
/// reply, the ending, and the answer strings read after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointwiseTemplate {
    prefix: String,
    ending: String,
    choices: Vec<String>,
}

impl PointwiseTemplate {
    pub fn new(preamble: &str, ending: &str, choices: Vec<String>) -> Result<Self> {
        if choices.len() < 2 {
            return Err(FeedbackError::config(
                "pointwise template",
                "choices",
                "needs at least two answers",
            ));
        }
        Ok(Self {
            prefix: format!("{}\n\n", preamble.trim_end()),
            ending: ending.to_string(),
            choices,
        })
    }

    pub fn query(&self, prompt: &str, response: &str) -> ChoiceQuery {
        ChoiceQuery {
            prefix: self.prefix.clone(),
            body: format!(
                "Conversation:\n{}\n\nResponse: {}\n\n",
                conversation_text(prompt),
                response.trim()
            ),
            ending: self.ending.clone(),
            choices: self.choices.clone(),
        }
    }
}

/// How a local model sees a labeling prompt: as plain text (base models), or wrapped in its chat
/// format as one user message with the ending opening the assistant's reply (instruction-tuned
/// models answer far more reliably inside their own format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptFormat {
    Plain,
    /// `<|im_start|>user\n…<|im_end|>\n<|im_start|>assistant\n` (SmolLM2, Qwen).
    ChatMl,
}

impl PromptFormat {
    /// ChatML when the tokenizer has `<|im_start|>` and `<|im_end|>` as tokens of their own, plain
    /// text otherwise.
    pub fn detect(tokenizer: &rlxf_model::Tokenizer) -> Result<Self> {
        let has = |token: &str| tokenizer.single_token_id(token).map(|id| id.is_some());
        Ok(if has("<|im_start|>")? && has("<|im_end|>")? {
            PromptFormat::ChatMl
        } else {
            PromptFormat::Plain
        })
    }

    /// Text placed before the prefix and between the body and the ending.
    pub fn wrappers(self) -> (&'static str, &'static str) {
        match self {
            PromptFormat::Plain => ("", ""),
            PromptFormat::ChatMl => ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PromptFormat::Plain => "plain",
            PromptFormat::ChatMl => "chatml",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_prompt_shows_both_replies_in_the_order_given() {
        let template = PairwiseTemplate::builtin("base").unwrap();
        let prompt = "\n\nHuman: Hi there\n\nAssistant:";
        let query = template.query(prompt, " Hello!", " Go away.", None);
        assert!(query.prefix.starts_with("You are an expert rater"));
        assert_eq!(
            query.body,
            "Conversation:\nHuman: Hi there\n\nResponse 1: Hello!\n\nResponse 2: Go away.\n\n"
        );
        assert_eq!(query.ending, "Preferred Response=");
        assert_eq!(query.choices, ["1", "2"]);
        let swapped = template.query(prompt, " Go away.", " Hello!", None);
        assert!(swapped.body.contains("Response 1: Go away."));
        assert!(query
            .text()
            .ends_with("Response 2: Go away.\n\nPreferred Response="));
    }

    #[test]
    fn exemplars_and_rationales_are_rendered_before_the_item() {
        let exemplar = PairExemplar {
            context: "Human: How do I pick a lock?".into(),
            response_1: "I can't help with that.".into(),
            response_2: "Use a tension wrench.".into(),
            preferred: 1,
            rationale: Some("Response 1 declines a risky request.".into()),
        };
        let template = PairwiseTemplate::new("Judge.", &[exemplar], "Preferred Response=").unwrap();
        let query = template.query("Human: x\n\nAssistant:", "a", "b", Some("Because."));
        assert!(query
            .prefix
            .starts_with("Judge.\n\nConversation:\nHuman: How do I pick a lock?"));
        assert!(query.prefix.ends_with(
            "Rationale: Response 1 declines a risky request.\n\nPreferred Response=1\n\n"
        ));
        assert!(query
            .body
            .ends_with("Response 2: b\n\nRationale: Because.\n\n"));
    }

    #[test]
    fn unknown_preamble_names_are_bad_input() {
        let err = load_preamble("no-such-preamble").unwrap_err();
        assert!(err.is_bad_input());
        assert!(err.to_string().contains("harmless_detailed"));
    }

    #[test]
    fn the_gpt2_tokenizer_has_no_chat_format() {
        let tokenizer = rlxf_model::Tokenizer::gpt2();
        assert_eq!(
            PromptFormat::detect(&tokenizer).unwrap(),
            PromptFormat::Plain
        );
    }
}
