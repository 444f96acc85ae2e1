//! Dialogue formats: how turns become the text a model sees, where the end-of-sequence token goes,
//! and which strings end a generated reply. Everything that knows the shape of a dialogue lives
//! here: the Anthropic HH format for base models (GPT-Neo, GPT-2) and ChatML for instruction-tuned
//! models that ship a ChatML chat template (SmolLM2). Preference data is stored in the HH format
//! ([`ChatTemplate::render_hh_prompt`] and [`ChatTemplate::render_hh_reply`] carry it over).

use std::path::Path;

use crate::tokenizer::{read_json_file, Tokenizer};
use crate::{ModelError, Result};

/// Anthropic HH-RLHF markers. A turn's text follows its marker after one space.
const HH_HUMAN: &str = "\n\nHuman:";
const HH_ASSISTANT: &str = "\n\nAssistant:";

/// ChatML markers: a turn is `<|im_start|>{role}\n{text}<|im_end|>\n`.
const IM_START: &str = "<|im_start|>";
const IM_END: &str = "<|im_end|>";
const CHATML_USER: &str = "user";
const CHATML_ASSISTANT: &str = "assistant";

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
    /// `"<|im_start|>user\n…<|im_end|>\n<|im_start|>assistant\n…<|im_end|>\n"`, for models whose
    /// `tokenizer_config.json` chat template is ChatML (SmolLM2). Replies end with `<|im_end|>`.
    ChatMl,
}

impl ChatTemplate {
    /// The template for a Hugging Face `model_type` when nothing else is known about the model
    /// (a freshly initialised one): base models without a chat format get the HH format.
    pub fn for_model_type(_model_type: &str) -> Self {
        ChatTemplate::HumanAssistant
    }

    /// The template for the model in `model_dir`: ChatML when its `tokenizer_config.json` has a
    /// ChatML `chat_template` (SmolLM2-Instruct and other ChatML-tuned models), otherwise the
    /// template of its `config.json` `model_type` (HH when the files are missing or say nothing).
    pub fn for_model_dir(model_dir: &Path) -> Result<Self> {
        let tokenizer_config = read_json_file(&model_dir.join("tokenizer_config.json"))?;
        let chat_template = tokenizer_config
            .as_ref()
            .and_then(|config| config.get("chat_template"))
            .and_then(|value| value.as_str());
        if chat_template.is_some_and(|template| template.contains(IM_START)) {
            return Ok(ChatTemplate::ChatMl);
        }
        let config = read_json_file(&model_dir.join("config.json"))?;
        let model_type = config
            .as_ref()
            .and_then(|config| config.get("model_type"))
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
        let open_reply = match self {
            ChatTemplate::HumanAssistant => HH_ASSISTANT.to_string(),
            ChatTemplate::ChatMl => format!("{IM_START}{CHATML_ASSISTANT}\n"),
        };
        Ok(format!("{}{open_reply}", self.format_transcript(turns)))
    }

    /// The prompt for a reply to a single user message.
    pub fn format_user_message(&self, text: &str) -> String {
        self.format_prompt(&[Turn::user(text)])
            .expect("a single user turn is a valid prompt")
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
            ChatTemplate::ChatMl => turns
                .iter()
                .map(|turn| {
                    let role = match turn.role {
                        Role::User => CHATML_USER,
                        Role::Assistant => CHATML_ASSISTANT,
                    };
                    format!("{IM_START}{role}\n{}{IM_END}\n", turn.text)
                })
                .collect(),
        }
    }

    /// Splits a transcript into turns. Text before the first marker is an error; a turn's text is
    /// everything up to the next marker, without the one space that follows the marker.
    pub fn parse_transcript(&self, transcript: &str) -> Result<Vec<Turn>> {
        match self {
            ChatTemplate::HumanAssistant => parse_hh(transcript),
            ChatTemplate::ChatMl => parse_chatml(transcript),
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
            ChatTemplate::ChatMl => {
                let marker = format!("{IM_START}{CHATML_ASSISTANT}\n");
                let at = transcript.rfind(&marker).ok_or_else(|| {
                    malformed("no \"<|im_start|>assistant\" turn", excerpt(transcript, 0))
                })?;
                Ok(transcript.split_at(at + marker.len()))
            }
        }
    }

    /// Strings that end a generated reply: the model starting the user's next turn.
    pub fn stop_strings(&self) -> Vec<String> {
        match self {
            ChatTemplate::HumanAssistant => vec![HH_HUMAN.to_string()],
            // `<|im_end|>` is usually the tokenizer's EOS as well; a model that skips it and opens
            // a new turn is stopped too.
            ChatTemplate::ChatMl => vec![IM_END.to_string(), IM_START.to_string()],
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
            ChatTemplate::ChatMl => completion
                .split(IM_END)
                .next()
                .unwrap_or(completion)
                .trim_end(),
        }
    }

    /// A prompt stored in the HH format (how rlxf keeps preference data) rendered in this
    /// template: the same turns, ready for the model's reply.
    pub fn render_hh_prompt(&self, hh_prompt: &str) -> Result<String> {
        match self {
            ChatTemplate::HumanAssistant => Ok(hh_prompt.to_string()),
            ChatTemplate::ChatMl => {
                let mut turns = parse_hh(hh_prompt)?;
                // An HH prompt ends with the open "\n\nAssistant:" the reply follows.
                if turns
                    .last()
                    .is_some_and(|turn| turn.role == Role::Assistant && turn.text.trim().is_empty())
                {
                    turns.pop();
                }
                self.format_prompt(&turns)
            }
        }
    }

    /// A reply stored in the HH format (`" text"`, the separator space after the marker kept) as
    /// the completion this template's prompt expects.
    pub fn render_hh_reply<'a>(&self, hh_reply: &'a str) -> &'a str {
        match self {
            ChatTemplate::HumanAssistant => hh_reply,
            ChatTemplate::ChatMl => hh_reply.strip_prefix(' ').unwrap_or(hh_reply),
        }
    }

    /// Token ids of a training target: the completion followed by the end of the turn (the
    /// tokenizer's EOS for HH, `<|im_end|>` for ChatML), so the model learns to end its reply (and
    /// generation can stop there instead of rambling into a fake next turn). This is the one place
    /// the end-of-turn token is appended.
    pub fn completion_ids(&self, tokenizer: &Tokenizer, completion: &str) -> Result<Vec<u32>> {
        let mut ids = tokenizer.encode(completion)?;
        let end = match self {
            ChatTemplate::HumanAssistant => tokenizer.eos_id(),
            ChatTemplate::ChatMl => tokenizer.single_token_id(IM_END)?.ok_or_else(|| {
                ModelError::InvalidInput(format!(
                    "the ChatML template needs `{IM_END}` to be one token of the tokenizer"
                ))
            })?,
        };
        ids.push(end);
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

/// Splits a ChatML transcript into turns. Every turn starts with `<|im_start|>{role}\n`; a turn's
/// text ends at `<|im_end|>` (the last turn may be open: a reply being written).
fn parse_chatml(transcript: &str) -> Result<Vec<Turn>> {
    let Some(rest) = transcript.strip_prefix(IM_START) else {
        return Err(malformed(
            "a ChatML transcript starts with \"<|im_start|>\"",
            excerpt(transcript, 0),
        ));
    };
    rest.split(IM_START)
        .map(|segment| {
            let (role, body) = segment.split_once('\n').ok_or_else(|| {
                malformed(
                    "a ChatML turn needs a newline after its role",
                    excerpt(segment, 0),
                )
            })?;
            let role = match role {
                CHATML_USER => Role::User,
                CHATML_ASSISTANT => Role::Assistant,
                _ => {
                    return Err(malformed(
                        "ChatML roles other than user and assistant are not supported",
                        excerpt(segment, 0),
                    ))
                }
            };
            let text = match body.split_once(IM_END) {
                Some((text, after)) if after.trim().is_empty() => text,
                Some(_) => {
                    return Err(malformed(
                        "text after \"<|im_end|>\" outside a turn",
                        excerpt(segment, 0),
                    ))
                }
                None => body,
            };
            Ok(Turn {
                role,
                text: text.to_string(),
            })
        })
        .collect()
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

    const CHATML: ChatTemplate = ChatTemplate::ChatMl;

    #[test]
    fn chatml_formats_like_smollm2_chat_template() {
        // What SmolLM2's chat template renders (after its system turn) for one user message with
        // add_generation_prompt.
        assert_eq!(
            CHATML.format_user_message("I feel lonely lately."),
            "<|im_start|>user\nI feel lonely lately.<|im_end|>\n<|im_start|>assistant\n"
        );
        let turns = vec![
            Turn::user("Hi"),
            Turn::assistant("Hello! How can I help?"),
            Turn::user("A joke"),
        ];
        let transcript = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n<|im_start|>user\nA joke<|im_end|>\n";
        assert_eq!(CHATML.format_transcript(&turns), transcript);
        assert_eq!(CHATML.parse_transcript(transcript).unwrap(), turns);
        let prompt = CHATML.format_prompt(&turns).unwrap();
        assert_eq!(prompt, format!("{transcript}<|im_start|>assistant\n"));
        let with_reply = format!("{prompt}Why did the chicken…<|im_end|>\n");
        let (head, reply) = CHATML.split_last_reply(&with_reply).unwrap();
        assert_eq!(head, prompt);
        assert_eq!(CHATML.reply_text(reply), "Why did the chicken…");
    }

    #[test]
    fn chatml_rejects_malformed_transcripts() {
        for bad in [
            "user\nHi<|im_end|>\n",
            "<|im_start|>system\nBe brief<|im_end|>\n",
            "<|im_start|>user Hi<|im_end|>",
            "<|im_start|>user\nHi<|im_end|>junk",
        ] {
            assert!(
                CHATML.parse_transcript(bad).unwrap_err().is_bad_input(),
                "{bad:?}"
            );
        }
        assert!(CHATML.split_last_reply("<|im_start|>user\nHi").is_err());
    }

    #[test]
    fn hh_data_renders_in_chatml() {
        let hh = "\n\nHuman: Hi\n\nAssistant: Hey\n\nHuman: Joke?\n\nAssistant:";
        assert_eq!(HH.render_hh_prompt(hh).unwrap(), hh);
        assert_eq!(
            CHATML.render_hh_prompt(hh).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHey<|im_end|>\n\
             <|im_start|>user\nJoke?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(HH.render_hh_reply(" No."), " No.");
        assert_eq!(CHATML.render_hh_reply(" No."), "No.");
    }

    #[test]
    fn chatml_is_chosen_from_the_tokenizer_config() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            ChatTemplate::for_model_dir(dir.path()).unwrap(),
            ChatTemplate::HumanAssistant
        );
        std::fs::write(dir.path().join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
        assert_eq!(
            ChatTemplate::for_model_dir(dir.path()).unwrap(),
            ChatTemplate::HumanAssistant
        );
        let config = serde_json::json!({"chat_template": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"});
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        assert_eq!(
            ChatTemplate::for_model_dir(dir.path()).unwrap(),
            ChatTemplate::ChatMl
        );
        std::fs::write(dir.path().join("tokenizer_config.json"), "{broken").unwrap();
        let err = ChatTemplate::for_model_dir(dir.path()).unwrap_err();
        assert!(err.is_bad_input() && err.to_string().contains("tokenizer_config.json"));
    }

    #[test]
    fn chatml_completions_end_with_im_end_and_need_the_token() {
        let gpt2 = Tokenizer::gpt2();
        assert!(CHATML.completion_ids(&gpt2, "Hello").is_err());
    }
}
