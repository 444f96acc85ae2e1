//! Anthropic HH-RLHF transcripts: splitting a chosen/rejected transcript pair into the shared
//! conversation (the prompt) and the two final assistant replies.

/// The marker that opens an assistant turn in an HH transcript.
pub const ASSISTANT_TURN: &str = "\n\nAssistant:";
/// The marker that opens a human turn in an HH transcript.
pub const HUMAN_TURN: &str = "\n\nHuman:";

/// A transcript pair split at its last shared assistant turn. `prompt` ends with
/// [`ASSISTANT_TURN`]; `prompt + chosen` and `prompt + rejected` are the original transcripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitTranscripts<'a> {
    pub prompt: &'a str,
    pub chosen: &'a str,
    pub rejected: &'a str,
}

/// Why a transcript pair has no shared prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TranscriptMismatch {
    /// The transcripts share no `"\n\nAssistant:"` turn at all.
    #[error("the chosen and rejected transcripts share no \"\\n\\nAssistant:\" turn")]
    NoSharedAssistantTurn,
    /// The transcripts differ before their final assistant turn (a reply is followed by more turns).
    #[error("the chosen and rejected transcripts differ before their final assistant turn")]
    DivergeBeforeFinalTurn,
}

/// Splits an HH pair at the last `"\n\nAssistant:"` that both transcripts share.
///
/// The split point is the last assistant marker inside the two transcripts' common prefix, so that
/// replies which happen to begin alike (" I", " I think") are still split at the turn, not inside
/// the reply. A pair is rejected when either remaining reply still contains a human turn: then the
/// two conversations diverged earlier and there is no single prompt they both answer.
pub fn split_hh_pair<'a>(
    chosen: &'a str,
    rejected: &'a str,
) -> Result<SplitTranscripts<'a>, TranscriptMismatch> {
    let mut common = chosen
        .bytes()
        .zip(rejected.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    // Equal bytes up to `common` means a char boundary in one is a boundary in the other.
    while !chosen.is_char_boundary(common) {
        common -= 1;
    }
    let marker_start = chosen[..common]
        .rfind(ASSISTANT_TURN)
        .ok_or(TranscriptMismatch::NoSharedAssistantTurn)?;
    let prompt_end = marker_start + ASSISTANT_TURN.len();
    let split = SplitTranscripts {
        prompt: &chosen[..prompt_end],
        chosen: &chosen[prompt_end..],
        rejected: &rejected[prompt_end..],
    };
    if split.chosen.contains(HUMAN_TURN) || split.rejected.contains(HUMAN_TURN) {
        return Err(TranscriptMismatch::DivergeBeforeFinalTurn);
    }
    Ok(split)
}

/// The human turns of a transcript-form prompt, without their markers or the assistant text after
/// them. A prompt that starts with `"Human:"` (leading blank lines stripped, as some exports do) has
/// that as its first turn; a text with no human marker at all is one human turn, up to its first
/// assistant marker if it has one.
pub fn human_turns(prompt: &str) -> Vec<&str> {
    let mut pieces = prompt.split(HUMAN_TURN);
    let head = pieces.next().unwrap_or_default();
    let first = match head.strip_prefix(HUMAN_TURN.trim_start()) {
        Some(turn) => Some(turn),
        None if !prompt.contains(HUMAN_TURN) => Some(head),
        // Text before the first human turn (a preamble) is not a human turn.
        None => None,
    };
    first
        .into_iter()
        .chain(pieces)
        .map(|turn| turn.split(ASSISTANT_TURN).next().unwrap_or(turn))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_the_final_shared_assistant_turn() {
        let prompt = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me\n\nAssistant:";
        let chosen = format!("{prompt} I think so.");
        let rejected = format!("{prompt} I do not.");
        let split = split_hh_pair(&chosen, &rejected).unwrap();
        assert_eq!(split.prompt, prompt);
        assert_eq!(split.chosen, " I think so.");
        assert_eq!(split.rejected, " I do not.");
        assert_eq!(format!("{}{}", split.prompt, split.chosen), chosen);
    }

    #[test]
    fn identical_transcripts_split_at_their_last_turn() {
        let text = "\n\nHuman: a\n\nAssistant: b";
        let split = split_hh_pair(text, text).unwrap();
        assert_eq!(split.prompt, "\n\nHuman: a\n\nAssistant:");
        assert_eq!((split.chosen, split.rejected), (" b", " b"));
    }

    #[test]
    fn empty_reply_is_kept() {
        let split = split_hh_pair(
            "\n\nHuman: a\n\nAssistant:",
            "\n\nHuman: a\n\nAssistant: no",
        )
        .unwrap();
        assert_eq!((split.chosen, split.rejected), ("", " no"));
    }

    #[test]
    fn common_prefix_ending_inside_a_multibyte_char_is_handled() {
        // 'é' (c3 a9) and 'è' (c3 a8) share their first byte.
        let split =
            split_hh_pair("\n\nHuman: x\n\nAssistant:é", "\n\nHuman: x\n\nAssistant:è").unwrap();
        assert_eq!((split.chosen, split.rejected), ("é", "è"));
    }

    #[test]
    fn reports_pairs_without_a_shared_prompt() {
        assert_eq!(
            split_hh_pair(
                "\n\nHuman: a\n\nAssistant: b",
                "\n\nHuman: c\n\nAssistant: d"
            ),
            Err(TranscriptMismatch::NoSharedAssistantTurn)
        );
        assert_eq!(
            split_hh_pair(
                "\n\nHuman: a\n\nAssistant: b\n\nHuman: more\n\nAssistant: x",
                "\n\nHuman: a\n\nAssistant: c\n\nHuman: other\n\nAssistant: y"
            ),
            Err(TranscriptMismatch::DivergeBeforeFinalTurn)
        );
    }

    #[test]
    fn human_turns_skip_assistant_text() {
        let prompt = "\n\nHuman: one\n\nAssistant: reply\n\nHuman: two\n\nAssistant:";
        assert_eq!(human_turns(prompt), vec![" one", " two"]);
        assert_eq!(human_turns("plain question"), vec!["plain question"]);
        // Found by the hh_split fuzz target: assistant text without any human marker.
        assert_eq!(human_turns("]\n\nAssistant:g\n"), vec!["]"]);
        assert_eq!(
            human_turns("Human: a\n\nAssistant: b\n\nHuman: c"),
            vec![" a", " c"]
        );
        assert_eq!(
            human_turns("Preamble.\n\nHuman: a\n\nAssistant:"),
            vec![" a"]
        );
    }
}
