//! A transparent empathy score for a reply to a user's message, in [0, 1].
//!
//! It is a checklist, not a model, so every point of it can be traced to a phrase:
//!
//! * **acknowledgement** (weight 0.30): the reply names or reflects the user's experience
//!   ("that sounds really hard", "I'm so sorry to hear", "I hear you", "thank you for sharing");
//! * **validation** (0.30): the reply says the feeling is legitimate ("it's understandable",
//!   "your feelings are valid", "you're not alone", "it's okay to feel", "not your fault");
//! * **support** (0.25): the reply offers presence or a path to help ("I'm here for you", "talk
//!   to someone you trust", "a counselor", "would you like to talk about it");
//! * **tone alignment** (0.15): how close the reply's VADER compound is to the user message's,
//!   `1 - |c_reply - c_user| / 2`, which rewards meeting a distressed message in a gentle register
//!   and penalises relentless cheer ("Cheer up, life is great!") in answer to grief. Without a user
//!   message this component is dropped and the other weights are rescaled to sum to 1.
//! * **dismissal** (penalty 0.50): minimising or blaming phrases ("just get over it", "stop
//!   complaining", "you're overreacting", "it could be worse") subtract from the total.
//!
//! Each marker category counts once however many of its phrases match (saying "I'm sorry" three
//! times is not three times as empathetic). The total is clamped to [0, 1]. The matched phrases are
//! returned with the score so reports can show why a reply scored as it did. The marker lists are
//! English only and were written for this project; they are tested on hand-labelled replies in
//! `tests/empathy_labels.rs`.

use std::sync::OnceLock;

use regex::{Regex, RegexSet};
use serde::{Deserialize, Serialize};

use crate::vader::Vader;

const ACKNOWLEDGEMENT_WEIGHT: f64 = 0.30;
const VALIDATION_WEIGHT: f64 = 0.30;
const SUPPORT_WEIGHT: f64 = 0.25;
const ALIGNMENT_WEIGHT: f64 = 0.15;
const DISMISSAL_PENALTY: f64 = 0.50;

const FEELING_WORDS: &str = r"(?:hard|difficult|painful|tough|overwhelming|exhausting|frustrating|scary|frightening|lonely|isolating|upsetting|stressful|heartbreaking|awful|terrible|rough|devastating|draining|confusing|a lot)";
const INTENSIFIER: &str = r"(?:(?:really|so|very|incredibly|truly|genuinely|especially|pretty|quite|deeply|extremely)\s+)?";
const IT_IS: &str = r"(?:it's|it’s|it is|that's|that’s|that is|this is)";
const YOU_ARE: &str = r"(?:you're|you’re|you are)";

fn acknowledgement_markers() -> Vec<String> {
    vec![
        format!(r"\b(?:sounds|sounded|must be|must have been|must feel|seems)\s+(?:like\s+(?:it's|it’s|it is|it was)\s+)?{INTENSIFIER}{FEELING_WORDS}\b"),
        format!(r"\b{IT_IS}\s+{INTENSIFIER}{FEELING_WORDS}\b"),
        r"\bI\s*(?:'m|’m|am)\s+(?:so\s+|really\s+|truly\s+|very\s+|deeply\s+)?sorry\s+(?:to hear|you|that|for your|about)\b".to_string(),
        r"\bI hear you\b|\bI hear (?:how|that|what)\b".to_string(),
        r"\bit sounds like\b|\bsounds like you\b".to_string(),
        r"\bI can (?:only )?imagine\b|\bI can(?:'t|’t|not| not) imagine how\b".to_string(),
        r"\bthank(?:s| you) for (?:sharing|telling|opening up|trusting)\b".to_string(),
        r"\bI understand (?:how|that|why|what|your)\b|\bI can see (?:how|why|that)\b".to_string(),
        r"\bthat must\b|\bwhat you(?:'re|’re| are) (?:going|been) through\b".to_string(),
    ]
}

fn validation_markers() -> Vec<String> {
    vec![
        format!(r"\b{IT_IS}\s+(?:completely\s+|totally\s+|perfectly\s+|so\s+|very\s+|entirely\s+)?(?:understandable|normal|natural|valid|human)\b"),
        format!(r"\b{IT_IS}\s+(?:completely\s+|totally\s+|perfectly\s+)?(?:okay|ok|alright|fine) to (?:feel|be|cry|not|ask|take|grieve|need|want|have)\b"),
        r"\b(?:your|those|these|such) (?:feelings|emotions|reactions) (?:are|is) (?:valid|understandable|normal|real|natural)\b".to_string(),
        r"\bmakes? (?:complete |total |perfect )?sense (?:that|to feel|you)\b|\bno wonder\b".to_string(),
        format!(r"\b{YOU_ARE} not alone\b|\bmany people (?:feel|go through|struggle)\b|\banyone (?:would|in your)\b"),
        r"\bnot your fault\b|\byou (?:did|have done) nothing wrong\b|\bnothing wrong with (?:you|feeling)\b".to_string(),
        r"\byou have every right\b|\byou deserve (?:to|support|help|kindness|care)\b".to_string(),
        format!(r"\b{YOU_ARE} doing (?:your best|the best you can|great|well)\b"),
    ]
}

fn support_markers() -> Vec<String> {
    vec![
        r"\bI\s*(?:'m|’m|am) (?:here|always here) (?:for you|to (?:help|listen|support)|with you|if you)\b".to_string(),
        r"\breach(?:ing)? out\b".to_string(),
        r"\b(?:talk|talking|speak|speaking) (?:to|with) (?:someone|somebody|a friend|friends|family|a (?:counselor|counsellor|therapist|professional|doctor)|your doctor|people you trust|a trusted)\b".to_string(),
        r"\b(?:counselor|counsellor|therapist|therapy|support group|helpline|hotline|crisis line|crisis text line|mental health professional)\b".to_string(),
        r"\bwould you like to (?:talk|share|tell)\b|\b(?:do you want|want) to talk about\b|\btell me more\b".to_string(),
        r"\b(?:how|what) can I (?:do to )?(?:help|support)\b|\bis there (?:anything|someone|anyone)\b".to_string(),
        r"\btake care of yourself\b|\bbe (?:gentle|kind|patient) with yourself\b|\bone (?:step|day) at a time\b".to_string(),
        r"\byou (?:don't|don’t|do not) have to (?:go through|face|do|carry) (?:this|it) alone\b".to_string(),
    ]
}

fn dismissal_markers() -> Vec<String> {
    vec![
        r"\b(?:just|simply) (?:get over|move on|cheer up|stop|relax|calm down|ignore|snap out)\b".to_string(),
        r"\bget over it\b|\bsnap out of it\b|\bman up\b|\btoughen up\b|\bdeal with it\b".to_string(),
        r"\bstop (?:whining|complaining|crying|being (?:so )?(?:dramatic|sensitive|negative))\b".to_string(),
        format!(r"\b{IT_IS} not (?:a big deal|that bad|a real problem)\b|\bno big deal\b"),
        format!(r"\b{YOU_ARE} (?:overreacting|being (?:dramatic|ridiculous|silly)|too sensitive)\b"),
        r"\b(?:could|can) (?:always )?be worse\b|\bothers have it worse\b|\bnot my problem\b|\bwhatever\b".to_string(),
    ]
}

/// One compiled marker category: the set finds which phrases occur in one pass, the individual
/// patterns then locate them.
struct Markers {
    patterns: Vec<Regex>,
    set: RegexSet,
}

impl Markers {
    fn new(sources: Vec<String>) -> Self {
        let sources: Vec<String> = sources
            .iter()
            .map(|source| format!("(?i){source}"))
            .collect();
        Self {
            patterns: sources
                .iter()
                .map(|source| Regex::new(source).expect("the empathy markers are valid"))
                .collect(),
            set: RegexSet::new(&sources).expect("the empathy markers are valid"),
        }
    }

    /// The matching phrases in the order of the reply; overlapping matches of different patterns
    /// ("just get over" and "get over it") are merged into one phrase.
    fn found(&self, text: &str) -> Vec<String> {
        let mut spans: Vec<(usize, usize)> = self
            .set
            .matches(text)
            .into_iter()
            .flat_map(|index| self.patterns[index].find_iter(text))
            .map(|m| (m.start(), m.end()))
            .collect();
        spans.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
        for (start, end) in spans {
            match merged.last_mut() {
                Some(last) if start < last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged
            .into_iter()
            .map(|(start, end)| text[start..end].to_string())
            .collect()
    }
}

struct EmpathyLexicon {
    acknowledgement: Markers,
    validation: Markers,
    support: Markers,
    dismissal: Markers,
}

fn lexicon() -> &'static EmpathyLexicon {
    static LEXICON: OnceLock<EmpathyLexicon> = OnceLock::new();
    LEXICON.get_or_init(|| EmpathyLexicon {
        acknowledgement: Markers::new(acknowledgement_markers()),
        validation: Markers::new(validation_markers()),
        support: Markers::new(support_markers()),
        dismissal: Markers::new(dismissal_markers()),
    })
}

/// An empathy score with the evidence behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmpathyScore {
    /// The total in [0, 1].
    pub score: f64,
    pub acknowledgement: Vec<String>,
    pub validation: Vec<String>,
    pub support: Vec<String>,
    pub dismissal: Vec<String>,
    /// `1 - |c_reply - c_user| / 2` on VADER compounds; `None` without a user message.
    pub tone_alignment: Option<f64>,
}

/// Scores `reply` as an answer to `user_message` (the user's last turn; `None` when unknown).
pub fn empathy_score(reply: &str, user_message: Option<&str>) -> EmpathyScore {
    let lexicon = lexicon();
    let acknowledgement = lexicon.acknowledgement.found(reply);
    let validation = lexicon.validation.found(reply);
    let support = lexicon.support.found(reply);
    let dismissal = lexicon.dismissal.found(reply);
    let present = |phrases: &[String]| f64::from(u8::from(!phrases.is_empty()));

    let markers = ACKNOWLEDGEMENT_WEIGHT * present(&acknowledgement)
        + VALIDATION_WEIGHT * present(&validation)
        + SUPPORT_WEIGHT * present(&support);
    let vader = Vader::embedded();
    let tone_alignment = user_message
        .map(|message| 1.0 - (vader.compound(reply) - vader.compound(message)).abs() / 2.0);
    let positive = match tone_alignment {
        Some(alignment) => markers + ALIGNMENT_WEIGHT * alignment,
        None => markers / (1.0 - ALIGNMENT_WEIGHT),
    };
    let score = (positive - DISMISSAL_PENALTY * present(&dismissal)).clamp(0.0, 1.0);
    EmpathyScore {
        score,
        acknowledgement,
        validation,
        support,
        dismissal,
        tone_alignment,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_add_up_as_documented() {
        // All three marker categories (0.85) plus 0.15 x the alignment of the two VADER compounds.
        let reply = "That sounds really hard. It's completely understandable. I'm here for you.";
        let message = "My exam went badly.";
        let scored = empathy_score(reply, Some(message));
        let alignment = scored.tone_alignment.unwrap();
        let vader = Vader::embedded();
        let expected_alignment =
            1.0 - (vader.compound(reply) - vader.compound(message)).abs() / 2.0;
        assert_eq!(alignment, expected_alignment);
        assert!((scored.score - (0.85 + 0.15 * alignment).min(1.0)).abs() < 1e-12);
        assert_eq!(scored.acknowledgement, ["sounds really hard"]);
        assert_eq!(scored.validation, ["It's completely understandable"]);
        assert_eq!(scored.support, ["I'm here for you"]);
    }

    #[test]
    fn without_a_user_message_weights_are_rescaled() {
        let scored = empathy_score("I hear you.", None);
        assert_eq!(scored.tone_alignment, None);
        assert!((scored.score - 0.30 / 0.85).abs() < 1e-12);
    }

    #[test]
    fn dismissal_subtracts_and_clamps_at_zero() {
        let scored = empathy_score("Whatever. Just get over it.", Some("I feel awful."));
        assert_eq!(scored.dismissal, ["Whatever", "Just get over it"]);
        assert_eq!(scored.score, 0.0);
    }
}
