//! The embedded datasets load, and the context rules agree with their hand labels.

use rlxf_data::{embedded_default_pairs, embedded_eval_prompts, ContextRules, STANDARD_CONTEXTS};

#[test]
fn embedded_pairs_are_canonical_and_tagged() {
    let pairs = embedded_default_pairs();
    assert!(!pairs.is_empty());
    let mut ids = std::collections::HashSet::new();
    for pair in &pairs {
        assert!(ids.insert(pair.id.as_str()), "duplicate id {}", pair.id);
        assert!(
            pair.prompt.starts_with("\n\nHuman:") && pair.prompt.ends_with("\n\nAssistant:"),
            "{}",
            pair.id
        );
        assert!(
            pair.chosen.starts_with(' ') && pair.rejected.starts_with(' '),
            "{}",
            pair.id
        );
        let context = pair
            .context
            .as_deref()
            .expect("embedded pairs carry a context");
        assert!(
            STANDARD_CONTEXTS.contains(&context),
            "{}: {context}",
            pair.id
        );
    }
}

/// How often the default rules give the hand label of a labelled prompt set, and the mistakes.
fn agreement<'a>(
    labelled: impl Iterator<Item = (&'a str, &'a str, &'a str)>,
) -> (usize, usize, Vec<String>) {
    let rules = ContextRules::embedded();
    let (mut agree, mut total, mut misses) = (0, 0, Vec::new());
    for (id, text, label) in labelled {
        total += 1;
        let tag = rules.tag(text);
        if tag == label {
            agree += 1;
        } else {
            misses.push(format!("{id}: labelled {label}, tagged {tag}"));
        }
    }
    (agree, total, misses)
}

// How the thresholds were set. The keyword rules in contexts.toml were written from general
// vocabulary of each context and then extended while looking at the misses on the embedded
// *default pairs* (the development set, 246 pairs when measured: 0.886 agreement); the *eval
// prompts* were kept out of that loop (175 prompts: 0.56 agreement, up from 0.42 for the first
// draft). With seven tags, guessing gives ~0.14 and always answering the largest class ~0.15, so
// the held-out floor of 0.50 says the rules carry real signal while leaving room for the prompt
// sets to grow; the development floor of 0.85 guards against a rule edit breaking a context.
// Keyword rules confuse neighbouring contexts (grief vs. mental health, a medical word in a
// sensitive question), which is why the held-out agreement stays well below the development one.
const MIN_DEVELOPMENT_AGREEMENT: f64 = 0.85;
const MIN_HELD_OUT_AGREEMENT: f64 = 0.50;

#[test]
fn context_rules_agree_with_hand_labels_of_the_eval_prompts() {
    let prompts = embedded_eval_prompts();
    let (agree, total, misses) = agreement(prompts.iter().map(|p| {
        (
            p.id.as_str(),
            p.text.as_str(),
            p.context.as_deref().unwrap_or("general"),
        )
    }));
    let rate = agree as f64 / total as f64;
    println!("eval prompts: rules agree with hand labels on {agree}/{total} ({rate:.3})");
    for miss in &misses {
        println!("  {miss}");
    }
    assert!(
        rate >= MIN_HELD_OUT_AGREEMENT,
        "agreement {rate:.3} < {MIN_HELD_OUT_AGREEMENT}"
    );
}

#[test]
fn context_rules_agree_with_hand_labels_of_the_default_pairs() {
    let pairs = embedded_default_pairs();
    let (agree, total, misses) = agreement(pairs.iter().map(|p| {
        (
            p.id.as_str(),
            p.prompt.as_str(),
            p.context.as_deref().unwrap_or("general"),
        )
    }));
    let rate = agree as f64 / total as f64;
    println!("default pairs: rules agree with hand labels on {agree}/{total} ({rate:.3})");
    for miss in &misses {
        println!("  {miss}");
    }
    assert!(
        rate >= MIN_DEVELOPMENT_AGREEMENT,
        "agreement {rate:.3} < {MIN_DEVELOPMENT_AGREEMENT}"
    );
}
