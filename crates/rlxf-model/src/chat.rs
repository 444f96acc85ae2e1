//! Dialogue formats: how turns become the text a model sees, where the end-of-sequence token goes,
//! and which strings end a generated reply. Everything that knows the shape of a dialogue lives
//! here, so a new template (ChatML for SmolLM2, say) is one more [`ChatTemplate`] variant.

use std::path::Path;

use crate::tokenizer::Tokenizer;
use crate::{ModelError, Result};

/// Anthropic HH-RLHF markers. A turn's text follows its marker after one space.
const HH_HUMAN: &str = "\n\nHuman:";
const HH_ASSISTANT: &str = "\n\nAssistant:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub role: Role,
    pub text: String,
}

impl Turn {
    pub fn user(text: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            text: text.into(),
        }
    }

    pub fn assistant(text: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            text: text.into(),
        }
    }
}

/// A dialogue format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `"\n\nHuman: …\n\nAssistant: …"`, the Anthropic HH-RLHF format, used for base models that
    /// have no chat format of their own (GPT-Neo, GPT-2). Replies end with the tokenizer's EOS.
    HumanAssistant,
}

impl ChatTemplate {
    /// The template for a Hugging Face `model_type`. Every architecture rlxf supports today is a
    /// base model without a chat format, so all of them get the HH format.
    pub fn for_model_type(_model_type: &str) -> Self {
        ChatTemplate::HumanAssistant
    }

    /// The template for the model in `model_dir`, from its `config.json` `model_type` (HH when the
    /// config is missing or says nothing).
    pub fn for_model_dir(model_dir: &Path) -> Result<Self> {
        let path = model_dir.join("config.json");
        if !path.is_file() {
            return Ok(ChatTemplate::HumanAssistant);
        }
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|err| ModelError::InvalidConfig {
                path: path.clone(),
                field: "(file)".to_string(),
                reason: err.to_string(),
            })?;
        let model_type = config
            .get("model_type")
            .and_then(|value| value.as_str())
            .unwrap_or("");
        Ok(Self::for_model_type(model_type))
    }

    /// The prompt for the model's next reply: every turn rendered, then an open assistant turn.
    /// The last turn must be the user's.
    pub fn format_prompt(&self, turns: &[Turn]) -> Result<String> {
        match turns.last() {
            Some(turn) if turn.role == Role::User => {}
            Some(_) => {
                return Err(malformed(
                    "the last turn of a prompt must be the user's",
                    "",
                ));
            }
            None => return Err(malformed("a prompt needs at least one turn", "")),
        }
        match self {
            ChatTemplate::HumanAssistant => {
                Ok(format!("{}{HH_ASSISTANT}", self.format_transcript(turns)))
            }
        }
    }

    /// The prompt for a reply to a single user message.
    pub fn format_user_message(&self, text: &str) -> String {
        match self {
            ChatTemplate::HumanAssistant => format!("{HH_HUMAN} {text}{HH_ASSISTANT}"),
        }
    }

    /// All turns rendered as a complete transcript (the inverse of [`Self::parse_transcript`]).
    pub fn format_transcript(&self, turns: &[Turn]) -> String {
        match self {
            ChatTemplate::HumanAssistant => turns
                .iter()
                .map(|turn| {
                    let marker = match turn.role {
                        Role::User => HH_HUMAN,
                        Role::Assistant => HH_ASSISTANT,
                    };
                    // Always one space after the marker, even for an empty turn: HH writes an empty
                    // reply as "\n\nAssistant: ".
                    format!("{marker} {}", turn.text)
                })
                .collect(),
        }
    }

    /// Splits a transcript into turns. Text before the first marker is an error; a turn's text is
    /// everything up to the next marker, without the one space that follows the marker.
    pub fn parse_transcript(&self, transcript: &str) -> Result<Vec<Turn>> {
        match self {
            ChatTemplate::HumanAssistant => parse_hh(transcript),
        }
    }

    /// Splits a transcript at its last assistant marker into the prompt (up to and including the
    /// marker) and the completion the model is trained to produce (`" reply"`, leading space kept,
    /// since that is how the reply is tokenized after the marker).
    pub fn split_last_reply<'a>(&self, transcript: &'a str) -> Result<(&'a str, &'a str)> {
        match self {
            ChatTemplate::HumanAssistant => {
                let at = transcript.rfind(HH_ASSISTANT).ok_or_else(|| {
                    malformed("no \"\\n\\nAssistant:\" marker", excerpt(transcript, 0))
                })?;
                Ok(transcript.split_at(at + HH_ASSISTANT.len()))
            }
        }
    }

    /// Strings that end a generated reply: the model starting the user's next turn.
    pub fn stop_strings(&self) -> Vec<String> {
        match self {
            ChatTemplate::HumanAssistant => vec![HH_HUMAN.to_string()],
        }
    }

    /// The reply as a person reads it: a generated completion without the separator space after
    /// the marker and without trailing whitespace.
    pub fn reply_text<'a>(&self, completion: &'a str) -> &'a str {
        match self {
            ChatTemplate::HumanAssistant => completion
                .strip_prefix(' ')
                .unwrap_or(completion)
                .trim_end(),
        }
    }

    /// Token ids of a training target: the completion followed by the tokenizer's EOS, so the
    /// model learns to end its reply (and generation can stop at EOS instead of rambling into a
    /// fake next turn). This is the one place EOS is appended.
    pub fn completion_ids(&self, tokenizer: &Tokenizer, completion: &str) -> Result<Vec<u32>> {
        let mut ids = tokenizer.encode(completion)?;
        ids.push(tokenizer.eos_id());
        Ok(ids)
    }
}

fn parse_hh(transcript: &str) -> Result<Vec<Turn>> {
    // Marker positions in order of appearance.
    let mut markers: Vec<(usize, Role, usize)> = transcript
        .match_indices(HH_HUMAN)
        .map(|(at, m)| (at, Role::User, m.len()))
        .chain(
            transcript
                .match_indices(HH_ASSISTANT)
                .map(|(at, m)| (at, Role::Assistant, m.len())),
        )
        .collect();
    markers.sort_by_key(|&(at, _, _)| at);
    let Some(&(first_at, _, _)) = markers.first() else {
        return Err(malformed(
            "no \"\\n\\nHuman:\" or \"\\n\\nAssistant:\" marker",
            excerpt(transcript, 0),
        ));
    };
    if first_at != 0 {
        return Err(malformed(
            "text before the first \"\\n\\nHuman:\"/\"\\n\\nAssistant:\" marker",
            excerpt(transcript, 0),
        ));
    }
    let turns = markers
        .iter()
        .enumerate()
        .map(|(index, &(at, role, marker_len))| {
            let end = markers
                .get(index + 1)
                .map_or(transcript.len(), |&(next, _, _)| next);
            let body = &transcript[at + marker_len..end];
            Turn {
                role,
                text: body.strip_prefix(' ').unwrap_or(body).to_string(),
            }
        })
        .collect();
    Ok(turns)
}

fn malformed(reason: &str, excerpt: &str) -> ModelError {
    ModelError::MalformedTranscript {
        reason: reason.to_string(),
        excerpt: excerpt.to_string(),
    }
}

/// Up to 60 characters of `text` from byte `at`, for error messages.
fn excerpt(text: &str, at: usize) -> &str {
    let rest = &text[at..];
    let end = rest.char_indices().nth(60).map_or(rest.len(), |(i, _)| i);
    &rest[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const HH: ChatTemplate = ChatTemplate::HumanAssistant;

    #[test]
    fn formats_a_single_message_prompt() {
        assert_eq!(
            HH.format_user_message("Hi there"),
            "\n\nHuman: Hi there\n\nAssistant:"
        );
        assert_eq!(
            HH.format_prompt(&[Turn::user("Hi there")]).unwrap(),
            HH.format_user_message("Hi there")
        );
    }

    #[test]
    fn formats_and_parses_multi_turn_dialogue() {
        let turns = vec![
            Turn::user("Hi"),
            Turn::assistant("Hello! How can I help?"),
            Turn::user("A joke"),
        ];
        let transcript = "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: A joke";
        assert_eq!(HH.format_transcript(&turns), transcript);
        assert_eq!(HH.parse_transcript(transcript).unwrap(), turns);
        assert_eq!(
            HH.format_prompt(&turns).unwrap(),
            format!("{transcript}\n\nAssistant:")
        );
    }

    #[test]
    fn parses_an_empty_final_assistant_turn() {
        for transcript in [
            "\n\nHuman: Hi\n\nAssistant: ",
            "\n\nHuman: Hi\n\nAssistant:",
        ] {
            let turns = HH.parse_transcript(transcript).unwrap();
            assert_eq!(turns, vec![Turn::user("Hi"), Turn::assistant("")]);
            assert_eq!(HH.format_transcript(&turns), "\n\nHuman: Hi\n\nAssistant: ");
        }
    }

    #[test]
    fn rejects_text_before_the_first_marker_and_prompts_ending_with_the_assistant() {
        assert!(HH
            .parse_transcript("hello\n\nHuman: Hi")
            .unwrap_err()
            .is_bad_input());
        assert!(HH.parse_transcript("no markers").is_err());
        assert!(HH
            .format_prompt(&[Turn::user("a"), Turn::assistant("b")])
            .is_err());
        assert!(HH.format_prompt(&[]).is_err());
    }

    #[test]
    fn splits_the_last_reply_off_a_transcript() {
        let transcript = "\n\nHuman: Hi\n\nAssistant: Hey\n\nHuman: Joke?\n\nAssistant: No.";
        let (prompt, completion) = HH.split_last_reply(transcript).unwrap();
        assert_eq!(
            prompt,
            "\n\nHuman: Hi\n\nAssistant: Hey\n\nHuman: Joke?\n\nAssistant:"
        );
        assert_eq!(completion, " No.");
        assert_eq!(HH.reply_text(completion), "No.");
        assert!(HH.split_last_reply("\n\nHuman: only").is_err());
    }

    #[test]
    fn completion_ids_end_with_eos() {
        let tokenizer = Tokenizer::gpt2();
        let ids = HH.completion_ids(&tokenizer, " Hello").unwrap();
        assert_eq!(ids, vec![18435, crate::tokenizer::GPT2_EOS_ID]);
    }
}
