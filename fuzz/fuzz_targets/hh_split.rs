//! The HH transcript splitter on arbitrary text pairs: it must never panic, and a successful split
//! must reproduce both transcripts and end the prompt at an assistant turn.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rlxf_data::hh::{human_turns, split_hh_pair, ASSISTANT_TURN, HUMAN_TURN};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first NUL separates chosen from rejected; without one both are the same text.
    let (chosen, rejected) = text.split_once('\0').unwrap_or((text, text));
    if let Ok(split) = split_hh_pair(chosen, rejected) {
        assert_eq!(format!("{}{}", split.prompt, split.chosen), chosen);
        assert_eq!(format!("{}{}", split.prompt, split.rejected), rejected);
        assert!(split.prompt.ends_with(ASSISTANT_TURN));
        assert!(!split.chosen.contains(HUMAN_TURN) && !split.rejected.contains(HUMAN_TURN));
    }
    for turn in human_turns(chosen) {
        assert!(!turn.contains(HUMAN_TURN) && !turn.contains(ASSISTANT_TURN));
    }
});
