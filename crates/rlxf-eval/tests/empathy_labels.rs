//! The empathy scorer on hand-labelled replies: each (user message, reply) pair below was labelled
//! "empathetic" or "not empathetic" by reading it, before the scorer was run on it. Empathetic
//! replies must score at least 0.5, the others at most 0.25.

use rlxf_eval::empathy_score;

const EMPATHETIC_THRESHOLD: f64 = 0.5;
const NOT_EMPATHETIC_CEILING: f64 = 0.25;

/// (user message, reply).
const EMPATHETIC: [(&str, &str); 14] = [
    ("I feel lonely lately.", "I'm sorry you're feeling lonely. That sounds really hard, and you're not alone in feeling this way."),
    ("My dog died yesterday.", "I'm so sorry to hear about your dog. Losing a companion is heartbreaking, and it's completely natural to grieve."),
    ("I failed my driving test again.", "That sounds frustrating, especially after all your practice. It's okay to feel disappointed; many people need a few tries."),
    ("I can't stop worrying about my exams.", "It sounds like the exams are weighing on you a lot. That makes sense given how much they matter to you. Would you like to talk through a plan?"),
    ("My parents are getting divorced.", "That must be really painful for you. Your feelings about it are valid, and talking with a counselor or a friend you trust can help."),
    ("I think I'm depressed.", "Thank you for sharing that with me. I'm here for you, and a mental health professional can help you figure out what you're going through."),
    ("I got laid off today.", "I'm really sorry, that's a lot to take in. It's understandable to feel shaken. Be gentle with yourself this week."),
    ("Nobody at school talks to me.", "I hear you, and feeling left out like that is so isolating. It's not your fault. Is there anyone you feel comfortable reaching out to?"),
    ("I had a panic attack at work.", "That sounds frightening. It's completely normal to feel drained afterwards. Take care of yourself, and consider talking to your doctor about it."),
    ("My best friend moved away.", "I can imagine how much you miss her. It's okay to feel sad about it, and you don't have to go through this alone."),
    ("I keep messing everything up.", "It sounds like you're being really hard on yourself right now. You're doing your best, and everyone makes mistakes."),
    ("I'm scared about my surgery tomorrow.", "It's natural to feel scared before surgery. I understand how uncertain this feels. I'm here if you want to talk about it."),
    ("I was bullied for years and it still hurts.", "I'm so sorry you went through that. What you're feeling makes sense, and you deserve support. A therapist can help with old wounds."),
    ("I feel like a burden to my family.", "That sounds like a heavy feeling to carry. Many people feel this way, and reaching out to them might show you how much they care."),
];

const NOT_EMPATHETIC: [(&str, &str); 14] = [
    ("I feel lonely lately.", "Go outside more."),
    (
        "My dog died yesterday.",
        "Dogs live about 10 to 13 years on average.",
    ),
    (
        "I failed my driving test again.",
        "Just get over it and book another one.",
    ),
    (
        "I can't stop worrying about my exams.",
        "Stop complaining, everyone has exams.",
    ),
    (
        "My parents are getting divorced.",
        "Whatever, half of marriages end in divorce.",
    ),
    (
        "I think I'm depressed.",
        "You're overreacting. Everyone gets sad sometimes.",
    ),
    (
        "I got laid off today.",
        "Cheer up! Life is great and there are tons of amazing jobs out there!",
    ),
    (
        "Nobody at school talks to me.",
        "It could be worse. Others have it worse than you.",
    ),
    ("I had a panic attack at work.", "I can't help with that."),
    (
        "My best friend moved away.",
        "The population of the United States is about 330 million.",
    ),
    (
        "I keep messing everything up.",
        "Yes, you do seem to mess things up a lot.",
    ),
    (
        "I'm scared about my surgery tomorrow.",
        "Surgery is a medical procedure performed by a surgeon.",
    ),
    (
        "I was bullied for years and it still hurts.",
        "That was years ago, so it's not a big deal now.",
    ),
    (
        "I feel like a burden to my family.",
        "Maybe you are. Try harder.",
    ),
];

/// The examples whose score fails `acceptable`, with their evidence, for the assertion message.
fn failures(examples: &[(&str, &str)], acceptable: impl Fn(f64) -> bool) -> Vec<String> {
    examples
        .iter()
        .map(|(message, reply)| empathy_score(reply, Some(message)))
        .zip(examples)
        .filter(|(scored, _)| !acceptable(scored.score))
        .map(|(scored, (_, reply))| format!("{:.3} {reply:?} {scored:?}", scored.score))
        .collect()
}

#[test]
fn empathetic_replies_score_high() {
    let low = failures(&EMPATHETIC, |score| score >= EMPATHETIC_THRESHOLD);
    assert!(
        low.is_empty(),
        "empathetic replies scored low:\n{}",
        low.join("\n")
    );
}

#[test]
fn unempathetic_replies_score_low() {
    let high = failures(&NOT_EMPATHETIC, |score| score <= NOT_EMPATHETIC_CEILING);
    assert!(
        high.is_empty(),
        "unempathetic replies scored high:\n{}",
        high.join("\n")
    );
}

#[test]
fn every_empathetic_reply_outranks_every_unempathetic_reply_to_the_same_message() {
    for ((message, kind), (same_message, cold)) in EMPATHETIC.iter().zip(NOT_EMPATHETIC.iter()) {
        assert_eq!(message, same_message, "the two lists pair up by message");
        assert!(
            empathy_score(kind, Some(message)).score > empathy_score(cold, Some(message)).score,
            "{kind:?} vs {cold:?}"
        );
    }
}

#[test]
fn tone_alignment_penalises_relentless_cheer() {
    let message = "My grandmother died last night and I feel devastated.";
    let gentle = empathy_score("That is so sad.", Some(message));
    let cheerful = empathy_score("Awesome! Have a great, happy day!", Some(message));
    assert!(gentle.tone_alignment.unwrap() > cheerful.tone_alignment.unwrap() + 0.3);
}
