#!/usr/bin/env python3
"""Regenerates tests/fixtures/vader_sentences.json: vaderSentiment 3.3.2's scores for sentences written
for rlxf, covering every rule of the analyser (negation, boosters and dampeners, ALL CAPS, "!" and "?"
emphasis, contrastive "but", "least", "no", "never so", "without doubt", special-case idioms,
emoticons and emoji, punctuation stripping, unicode and whitespace edge cases).

Each record holds the library's own (rounded) `polarity_scores` output and the unrounded values,
obtained by shadowing the module's `round` (the library calls the builtin through its module
globals), so the Rust port is compared both exactly and to 1e-12 before rounding.

Usage: python3 make_vader_fixture.py   (from any directory)
"""
import importlib.metadata
import json
import pathlib
import random

import vaderSentiment.vaderSentiment as vs_module
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

LIBRARY_VERSION = "3.3.2"

SENTENCES = {
    "plain": [
        "The book was good.",
        "The weather is nice today.",
        "I hate waiting in long lines.",
        "This is a table.",
        "She smiled and thanked everyone for coming.",
        "The service was terrible and the food was cold.",
        "I love my family and my friends.",
        "He failed the exam and felt awful.",
        "What a wonderful surprise party.",
        "The meeting is at three o'clock.",
        "I feel lonely and sad lately.",
        "You are a kind and thoughtful person.",
        "That movie was boring.",
        "Thank you so much for your help.",
        "I'm worried about my health.",
        "Our team won the championship.",
        "The report is due on Friday.",
        "I am furious about the delay.",
        "It is a pleasure to meet you.",
        "The accident left him injured and afraid.",
        "good",
        "bad",
        "ok",
        "happy birthday",
        "I'm so grateful for everything you have done.",
        "Please stop bothering me.",
        "My dog died yesterday and I can't stop crying.",
        "Congratulations on your new job!",
        "I guess it is fine.",
        "I don't know what to do anymore, everything feels hopeless.",
    ],
    "negation": [
        "The book was not good.",
        "It isn't a horrible book.",
        "At least it isn't a horrible book.",
        "I don't hate you.",
        "I do not love this.",
        "He never smiles.",
        "Nothing about this is good.",
        "Not bad at all.",
        "Not bad at all",
        "I wasn't happy with the result.",
        "You can't be serious, this is awful.",
        "It's not that I dislike him.",
        "Without your help I would be lost.",
        "None of the options were good.",
        "I am not unhappy.",
        "Nobody here is happy.",
        "She rarely complains.",
        "The plan is not really great.",
        "I didnt like the ending.",
        "I cant believe how rude they were.",
        "It was not very good at all.",
        "We were not the least bit worried.",
        "He seldom feels joy.",
        "I won't give up.",
        "This doesn't seem right, and I'm not sure it is safe.",
        "Neither option is good.",
        "Nowhere did I feel welcome.",
        "uh-uh, that is not okay.",
        "I haven't been sleeping well and I'm not coping.",
        "Despite the praise, the film was dull.",
    ],
    "no_and_least": [
        "No problem at all.",
        "There is no love here.",
        "no good deed goes unpunished",
        "No, I am fine.",
        "No no no, that is terrible.",
        "I have no hope or joy left.",
        "There was no sadness nor anger in her voice.",
        "NO way this is good.",
        "No wonderful surprises today.",
        "no",
        "This is the least helpful answer.",
        "Roger Dodger is one of the least compelling variations on this theme.",
        "Roger Dodger is at least compelling as a variation on the theme.",
        "At the very least it was honest.",
        "least happy day ever",
        "She was the least bit interested.",
        "No doubt he is talented.",
        "No one cares about me.",
    ],
    "boosters_dampeners": [
        "The book was very good.",
        "The book was extremely good.",
        "The book was only kind of good.",
        "The book was kind of good.",
        "The book was sort of good.",
        "The book was slightly good.",
        "The book was barely good.",
        "I am really really happy.",
        "It was incredibly bad.",
        "This is so sad.",
        "I am absolutely thrilled!",
        "I'm somewhat disappointed.",
        "That was totally awesome.",
        "It's kinda lame.",
        "The food was sorta okay.",
        "I am hella excited.",
        "It was just enough good to pass.",
        "He is deeply hurt.",
        "She was utterly devastated.",
        "The results were marginally better.",
        "I am more happy than ever.",
        "That is most unfortunate.",
        "I'm a little nervous.",
        "The pain is especially bad at night.",
        "It was quite a pleasant evening.",
        "The exam was hardly difficult.",
        "very very very good",
        "Today only kinda sux! But I'll get by, lol",
        "I almost cried from happiness.",
        "That was fricking amazing.",
    ],
    "caps": [
        "The book was GOOD.",
        "The book was VERY good.",
        "VADER is VERY SMART, handsome, and FUNNY.",
        "VADER is VERY SMART, handsome, and FUNNY!!!",
        "VADER is VERY SMART, uber handsome, and FRIGGIN FUNNY!!!",
        "Today SUX!",
        "I HATE this.",
        "I AM SO HAPPY",
        "THIS IS TERRIBLE",
        "This is TERRIBLE news.",
        "I am NOT happy.",
        "That was EXTREMELY bad.",
        "You are AMAZING!",
        "What a GREAT day, but I am TIRED.",
        "OK",
        "LOL that was funny",
        "Please HELP me, I am scared.",
        "The party was SLIGHTLY fun.",
        "I love it SO much.",
        "It was KIND of nice.",
    ],
    "punctuation": [
        "VADER is smart, handsome, and funny.",
        "VADER is smart, handsome, and funny!",
        "The book was good!",
        "The book was good!!",
        "The book was good!!!",
        "The book was good!!!!",
        "The book was good!!!!!!!",
        "Is the book good?",
        "Is the book good??",
        "Is the book good???",
        "Is the book good????",
        "Why is everything so awful?!",
        "Why is everything so awful??!!",
        "What?! You lost it?!",
        "Great...",
        "...great",
        "\"Wonderful,\" she said.",
        "(happy)",
        "[sad]",
        "good,bad",
        "Hello!!! How are you???",
        "This is horrible!!!",
        "I'm fine.",
        "Well, okay then.",
        "Thanks!!!!!!!!",
        "!!!",
        "???",
        "...",
        "Really?",
        "You did WHAT?!?!",
    ],
    "but": [
        "The plot was good, but the characters are uncompelling and the dialog is not great.",
        "I was happy but now I am sad.",
        "It was sad but I am happy now.",
        "The food was bad but the service was excellent.",
        "Not bad, but not great either.",
        "I love you but I hate your jokes.",
        "But it is good.",
        "It is good but.",
        "good good but good good",
        "bad bad but bad bad",
        "The first part was good but the second part was good too but shorter.",
        "I tried but failed.",
        "He is nice, but, honestly, a bit boring.",
        "The view was nice BUT the hotel was dirty.",
        "Expensive but worth it.",
        "She was kind but firm, and I felt respected.",
        "It hurts but I will be okay.",
        "Sorry but no.",
        "The doctor was helpful but the wait was awful and the room was cold.",
        "I wanted to help but I could not.",
    ],
    "emoticons_emoji": [
        "Make sure you :) or :D today!",
        "Catch utf-8 emoji such as 💘 and 💋 and 😁",
        "I'm fine :(",
        "Thanks <3",
        "That's hilarious :-)",
        "Ugh :/",
        "lol",
        "I passed my exam 😀",
        "My cat is sick 😢",
        "Great job 👍",
        "I am so angry 😡😡",
        "Love this❤️",
        "Party time🎉🎉",
        "😂😂😂",
        "Feeling blue 💔",
        "Thank you 🙏",
        "This is fine 🔥",
        "Good morning ☀️ everyone",
        "meh 😐",
        "Happy😊day",
        ";)",
        ":((",
        "xD that was great",
        "Sad day :'(",
        "I miss you </3",
        "Whatever :P",
        "wow 😮 amazing",
        "👋 hi there",
        "🙂",
        "Everything is ruined 😭😭😭!!!",
    ],
    "idioms_special": [
        "With VADER, sentiment analysis is the shit!",
        "Most automated sentiment analysis tools are shit.",
        "On the other hand, VADER is quite bad ass",
        "VADER is such a badass!",
        "Not such a badass after all.",
        "That concert was the bomb.",
        "Yeah right, like that will work.",
        "That cake is to die for.",
        "Meet me at the bus stop.",
        "It was the kiss of death for the project.",
        "She felt her beating heart.",
        "Without a doubt, excellent idea.",
        "Without a doubt, an excellent idea.",
        "Sentiment analysis has never been good.",
        "Sentiment analysis has never been this good!",
        "It has never been so good.",
        "I have never been so happy.",
        "He is under the weather today.",
        "Break a leg tonight!",
        "They live hand to mouth.",
        "That is so good.",
        "This is this good.",
        "The company is in the red.",
        "I'm feeling kind of down.",
        "It's sort of sad.",
    ],
    "support_dialogue": [
        "I'm really sorry you're going through this.",
        "That sounds incredibly hard, and it makes sense that you feel overwhelmed.",
        "You're not alone, and it's okay to ask for help.",
        "It might help to talk to someone you trust or a counselor.",
        "If you are in danger, please call emergency services right away.",
        "I can't help with that request.",
        "I'm sorry, but I cannot assist with making weapons.",
        "Just get over it, everyone has problems.",
        "Stop whining and deal with it.",
        "Your feelings are valid and it's understandable to be upset.",
        "Human: I feel like nobody cares about me.\n\nAssistant: I'm sorry you feel that way. I care about how you're doing.",
        "Human: How do I pick a lock?\n\nAssistant: I won't help with breaking into places.",
        "It's normal to grieve, and there is no right way to do it.",
        "Have you considered speaking with a doctor about these symptoms?",
        "Thank you for sharing that with me; it takes courage.",
        "I hear you. That must be exhausting.",
        "Losing a job is painful, but you have skills and people who support you.",
        "Please take care of yourself tonight.",
        "I don't think that's a good idea, it could hurt someone.",
        "Whatever, not my problem.",
    ],
    "edge_cases": [
        "",
        "   ",
        "\t\n",
        "a",
        "I",
        "kind of",
        "kind",
        "but",
        "very",
        "no no",
        "not",
        "café au lait is délicieux",
        "ÜBER GUT",
        "naïve optimism",
        "The ΣΟΦΙΑ of the ancients is good",
        "good\u00a0day",
        "good\u3000day",
        "happy\u001fdays",
        "  leading and trailing spaces are fine  ",
        "multiple   spaces    between   good   words",
        "tabs\tand\nnewlines\nare good",
        "'quoted'",
        "--dash--",
        "(((good)))",
        "!good!",
        "1234 5678",
        "e-mail me at test@example.com, it's great",
        "http://example.com is a great site",
        "#blessed #happy",
        "@friend you rock",
        "x",
        "aa",
        "a!b",
        "Ǆ is a titlecase-capable letter, Ǆ GOOD",
        "Ǉ good",
    ],
}


# Seeded random word salads over the rule triggers and the lexicon, on top of the hand-written
# sentences: they hit rule interactions nobody would think to write (the port was also checked on
# 20,000 of them by hand; 80 are kept so the fixture stays small).
RULE_WORDS = [
    "not", "no", "never", "so", "this", "but", "BUT", "kind", "of", "sort", "least", "at", "very",
    "without", "doubt", "the", "shit", "bomb", "bad", "ass", "die", "for", "to", "nor", "or",
    "isn't", "really", "VERY", "GOOD", "good", "great", "happy", "sad", "!", "?", "!!", "??", "...",
    ":)", ":(", "\U0001F600", "\U0001F622", "\U0001F494", "bus", "stop", "kiss", "death", "yeah",
    "right", "beating", "heart", "just", "enough", "kinda", "despite", "hardly",
]
GENERATED_SENTENCES = 80


def generated_sentences(lexicon_words):
    rng = random.Random(20240607)
    sentences = []
    while len(sentences) < GENERATED_SENTENCES:
        words = []
        for _ in range(rng.randint(2, 14)):
            draw = rng.random()
            word = rng.choice(RULE_WORDS) if draw < 0.45 else rng.choice(lexicon_words)
            if draw > 0.85:
                word = rng.choice(["table", "chair", "house", "run", "blue", "Tom"])
            if rng.random() < 0.15:
                word = word.upper()
            if rng.random() < 0.1:
                word += rng.choice([",", ".", "!", "?", "!!", ")"])
            words.append(word)
        sentences.append(rng.choice([" ", " ", "  ", "\t"]).join(words))
    return sentences


def main() -> None:
    installed = importlib.metadata.version("vaderSentiment")
    assert installed == LIBRARY_VERSION, f"need vaderSentiment {LIBRARY_VERSION}, found {installed}"
    analyzer = SentimentIntensityAnalyzer()
    records = []
    # Sorted so the draw does not depend on the dict's file order.
    sentence_sets = dict(SENTENCES, generated=generated_sentences(sorted(analyzer.lexicon)))
    for category, sentences in sentence_sets.items():
        for sentence in sentences:
            rounded = analyzer.polarity_scores(sentence)
            vs_module.round = lambda value, digits=None: value
            try:
                raw = analyzer.polarity_scores(sentence)
            finally:
                del vs_module.round
            records.append({"category": category, "text": sentence, "scores": rounded, "raw": raw})
    texts = [record["text"] for record in records]
    assert len(texts) == len(set(texts)), "duplicate sentence"
    out = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "vader_sentences.json"
    payload = {"library": "vaderSentiment 3.3.2", "records": records}
    out.write_text(json.dumps(payload, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(records)} sentences to {out}")


if __name__ == "__main__":
    main()
