//! The pairwise labeler, direct scorer and judges on a tiny random local model: soft labels are
//! distributions, swapping the order swaps the raw distributions, the numbers match an independent
//! forward pass, and the cache answers without calling the model.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rlxf_feedback::backend::OnAnswer;
use rlxf_feedback::{
    Backend, ChainOfThought, ChoiceAnswer, ChoiceQuery, CompletionParams, DirectScorer, Engine,
    FeedbackError, HarmlessnessJudge, LabelCache, LocalBackend, PairwiseLabeler, PairwiseTemplate,
    PointwiseTemplate, PromptResponse, ResponsePair, WinRateJudge,
};
use rlxf_model::{continuation_logprobs_vec, Padding};

fn local(seed: u64) -> LocalBackend {
    LocalBackend::new(
        common::tiny_model(seed),
        common::gpt2(),
        format!("test:tiny:{seed}"),
    )
    .unwrap()
    .with_batch_size(3)
}

fn response_pairs(pairs: &[(String, String, String)]) -> Vec<ResponsePair<'_>> {
    pairs
        .iter()
        .map(|(prompt, a, b)| ResponsePair { prompt, a, b })
        .collect()
}

/// Each prompt with its first reply, for the pointwise judges.
fn first_replies(pairs: &[(String, String, String)]) -> Vec<PromptResponse<'_>> {
    pairs
        .iter()
        .map(|(prompt, a, _)| PromptResponse {
            prompt,
            response: a,
        })
        .collect()
}

fn labeler() -> PairwiseLabeler {
    PairwiseLabeler::new(
        PairwiseTemplate::builtin("harmless_detailed").unwrap(),
        None,
    )
}

/// Wraps a backend and counts the queries it is asked; fails once `fail_after` answers were given.
struct Counting {
    inner: Box<dyn Backend>,
    asked: Arc<AtomicUsize>,
    fail_after: Option<usize>,
}

impl Backend for Counting {
    fn identity(&self) -> String {
        self.inner.identity()
    }

    fn answer_choices(
        &self,
        queries: &[ChoiceQuery],
        on_answer: &mut OnAnswer<'_, ChoiceAnswer>,
    ) -> rlxf_feedback::Result<()> {
        self.asked.fetch_add(queries.len(), Ordering::SeqCst);
        let mut given = 0;
        self.inner.answer_choices(queries, &mut |index, answer| {
            if self.fail_after == Some(given) {
                return Err(FeedbackError::Http {
                    url: "test".into(),
                    message: "killed".into(),
                });
            }
            given += 1;
            on_answer(index, answer)
        })
    }

    fn complete(
        &self,
        queries: &[ChoiceQuery],
        params: &CompletionParams,
        on_text: &mut OnAnswer<'_, String>,
    ) -> rlxf_feedback::Result<()> {
        self.asked.fetch_add(queries.len(), Ordering::SeqCst);
        self.inner.complete(queries, params, on_text)
    }
}

#[test]
fn answer_tokens_are_the_bare_digits_gpt2_emits_after_the_ending() {
    let backend = local(0);
    let choices = vec!["1".to_string(), "2".to_string()];
    assert_eq!(
        backend
            .choice_tokens("Preferred Response=", &choices)
            .unwrap()
            .choices(),
        [vec![common::ONE], vec![common::TWO]]
    );
    // "10" is one GPT-2 token.
    let ten = backend
        .choice_tokens("Score=", &["10".to_string()])
        .unwrap();
    assert_eq!(ten.choices(), [vec![940]]);
    // A trailing space would be read into the answer token: refused, not silently misread.
    let err = backend
        .choice_tokens("Preferred Response: ", &choices)
        .unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    assert!(
        matches!(err, FeedbackError::ChoiceMergesWithEnding { .. }),
        "{err}"
    );
}

#[test]
fn a_score_of_two_tokens_is_scored_as_one_answer() {
    let tokenizer = common::digit_splitting_tokenizer();
    // A model that leads with "0" and "1" under this tokenizer, so "10" takes a real share of a
    // leading 1 and reading "1" without its continuation would show in the comparisons below.
    let backend = LocalBackend::new(
        common::answering_model(3),
        common::digit_splitting_tokenizer(),
        "test:tiny-digits".into(),
    )
    .unwrap()
    .with_batch_size(2);
    let scale: Vec<String> = (1..=10).map(|score| score.to_string()).collect();
    let digit = |text: &str| tokenizer.single_token_id(text).unwrap().unwrap();
    let tokens = backend.choice_tokens("Score=", &scale).unwrap();
    assert_eq!(tokens.choices()[0], vec![digit("1")]);
    assert_eq!(tokens.choices()[9], vec![digit("1"), digit("0")]);

    let preamble = "Rate the reply from 1 to 10.";
    let template = PointwiseTemplate::new(preamble, "Score=", scale).unwrap();
    let items = [
        ("\n\nHuman: Hi\n\nAssistant:", "Hello!"),
        (
            "\n\nHuman: Can you help me with my homework?\n\nAssistant:",
            "No.",
        ),
        (
            "\n\nHuman: Tell me a joke\n\nAssistant:",
            "Why did the chicken cross?",
        ),
    ];
    let queries: Vec<ChoiceQuery> = items
        .iter()
        .map(|(prompt, reply)| template.query(prompt, reply))
        .collect();
    let engine = Engine::new(Box::new(backend), None);
    let answers = engine.answer_choices(&queries, &mut |_| {}).unwrap();

    // Independent reference: each score's per-token log-probs after the unpadded prompt.
    let model = common::answering_model(3);
    let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    for (query, answer) in queries.iter().zip(answers) {
        assert!(!answer.truncated);
        let ids = tokenizer.encode(&query.text()).unwrap();
        let reference =
            continuation_logprobs_vec(&model, &vec![ids; 10], tokens.choices(), Padding::Right)
                .unwrap();
        for score in 2..=9 {
            close(
                answer.logprobs[score - 1],
                f64::from(reference[score - 1][0]),
            );
        }
        let (one, zero_after_one) = (f64::from(reference[9][0]), f64::from(reference[9][1]));
        close(answer.logprobs[9], one + zero_after_one);
        close(answer.logprobs[0], one + (1.0 - zero_after_one.exp()).ln());
        // "1" and "10" share what the model put on a leading 1, and "10" a noticeable part.
        let (p_one, p_ten) = (answer.logprobs[0].exp(), answer.logprobs[9].exp());
        close(p_one + p_ten, one.exp());
        assert!(p_ten / (p_one + p_ten) > 0.05, "{:?}", answer.logprobs);
    }

    // The d-RLAIF scorer runs on this tokenizer (it used to refuse "10").
    let replies: Vec<PromptResponse<'_>> = items
        .iter()
        .map(|(prompt, response)| PromptResponse { prompt, response })
        .collect();
    let scores = DirectScorer::new(preamble, "Score=", 1, 10)
        .unwrap()
        .score(&engine, &replies, &mut |_| {})
        .unwrap();
    for score in scores {
        assert_eq!(score.distribution.len(), 10);
        assert!((score.distribution.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!((-1.0..=1.0).contains(&score.reward));
    }
}

#[test]
fn soft_labels_are_distributions_and_swapping_the_order_swaps_them() {
    let pairs = common::pairs();
    let swapped: Vec<(String, String, String)> = pairs
        .iter()
        .map(|(prompt, a, b)| (prompt.clone(), b.clone(), a.clone()))
        .collect();
    let engine = Engine::new(Box::new(local(0)), None);
    let labels = labeler()
        .label(&engine, &response_pairs(&pairs), &mut |_| {})
        .unwrap();
    let swapped_labels = labeler()
        .label(&engine, &response_pairs(&swapped), &mut |_| {})
        .unwrap();
    assert_eq!(labels.len(), pairs.len());
    let mut distinct = std::collections::BTreeSet::new();
    for (label, swapped) in labels.iter().zip(&swapped_labels) {
        for order in [&label.a_first, &label.b_first] {
            assert!(order.probs.iter().all(|p| (0.0..=1.0).contains(p)));
            assert!((order.probs[0] + order.probs[1] - 1.0).abs() < 1e-12);
            assert!(order.choice_mass > 0.0 && order.choice_mass < 1.0);
            assert!(!order.truncated);
        }
        assert!((0.0..=1.0).contains(&label.p_a));
        assert!(
            (label.p_a - 0.5 * (label.a_first.probs[0] + label.b_first.probs[1])).abs() < 1e-12
        );
        // (B, A) shown first is the same prompt as (A, B)'s second order, and vice versa.
        for i in 0..2 {
            assert!((label.a_first.probs[i] - swapped.b_first.probs[i]).abs() < 1e-5);
            assert!((label.b_first.probs[i] - swapped.a_first.probs[i]).abs() < 1e-5);
        }
        assert!((label.p_a - swapped.p_b()).abs() < 1e-5);
        distinct.insert((label.p_a * 1e6) as i64);
    }
    // The labels depend on the pair (a constant answer would pass everything above).
    assert!(distinct.len() > 1);
}

#[test]
fn raw_logprobs_match_an_unpadded_forward_pass() {
    // Independent reference: rlxf-model's continuation log-probs of "1" and "2" after the full
    // prompt, one unpadded sequence at a time, against the labeler's left-padded batch.
    let backend = local(3);
    let tokenizer = common::gpt2();
    let model = common::tiny_model(3);
    let pairs = common::pairs();
    let template = PairwiseTemplate::builtin("base").unwrap();
    let engine = Engine::new(Box::new(backend), None);
    let labels = PairwiseLabeler::new(template.clone(), None)
        .label(&engine, &response_pairs(&pairs), &mut |_| {})
        .unwrap();
    for ((prompt, a, b), label) in pairs.iter().zip(&labels) {
        for (order, (first, second)) in [(&label.a_first, (a, b)), (&label.b_first, (b, a))] {
            let query = template.query(prompt, first, second, None);
            let ids = tokenizer.encode(&query.text()).unwrap();
            let reference = continuation_logprobs_vec(
                &model,
                &[ids.clone(), ids],
                &[vec![common::ONE], vec![common::TWO]],
                Padding::Right,
            )
            .unwrap();
            for (logprob, reference) in order.logprobs.iter().zip(&reference) {
                let reference = f64::from(reference[0]);
                assert!(
                    (logprob - reference).abs() < 1e-4,
                    "{logprob} vs {reference}"
                );
            }
            // And the soft label is the two-way softmax of those log-probs.
            let (l1, l2) = (f64::from(reference[0][0]), f64::from(reference[1][0]));
            let p1 = 1.0 / (1.0 + (l2 - l1).exp());
            assert!((order.probs[0] - p1).abs() < 1e-4);
        }
    }
}

#[test]
fn the_cache_answers_without_calling_the_model_and_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let cache_path = dir.path().join("labels.sqlite");
    let pairs = common::pairs();
    let inputs = response_pairs(&pairs);
    let asked = Arc::new(AtomicUsize::new(0));
    let counting = |fail_after| Counting {
        inner: Box::new(local(0)),
        asked: Arc::clone(&asked),
        fail_after,
    };

    // A run that dies after 5 answers keeps those 5.
    let engine = Engine::new(
        Box::new(counting(Some(5))),
        Some(LabelCache::open(&cache_path).unwrap()),
    );
    assert!(labeler().label(&engine, &inputs, &mut |_| {}).is_err());
    drop(engine);
    assert_eq!(LabelCache::open(&cache_path).unwrap().len().unwrap(), 5);

    // The rerun asks only for the other 7.
    asked.store(0, Ordering::SeqCst);
    let engine = Engine::new(
        Box::new(counting(None)),
        Some(LabelCache::open(&cache_path).unwrap()),
    );
    let mut progressed = 0;
    let first = labeler()
        .label(&engine, &inputs, &mut |n| progressed += n)
        .unwrap();
    assert_eq!(asked.load(Ordering::SeqCst), 2 * pairs.len() - 5);
    assert_eq!(engine.stats().cached, 5);
    assert_eq!(engine.stats().computed, 2 * pairs.len() - 5);
    assert_eq!(progressed, 2 * pairs.len());
    drop(engine);

    // A third run never reaches the model and returns identical labels.
    asked.store(0, Ordering::SeqCst);
    let engine = Engine::new(
        Box::new(counting(None)),
        Some(LabelCache::open(&cache_path).unwrap()),
    );
    let again = labeler().label(&engine, &inputs, &mut |_| {}).unwrap();
    assert_eq!(asked.load(Ordering::SeqCst), 0);
    assert_eq!(again, first);
    assert_eq!(engine.stats().cached, 2 * pairs.len());

    // The uncached labels are the same as the cached ones.
    let fresh = labeler()
        .label(&Engine::new(Box::new(local(0)), None), &inputs, &mut |_| {})
        .unwrap();
    for (cached, fresh) in again.iter().zip(&fresh) {
        assert!((cached.p_a - fresh.p_a).abs() < 1e-6);
    }

    // A different labeler (other weights) or template does not reuse the answers.
    let other = Engine::new(
        Box::new(local(1)),
        Some(LabelCache::open(&cache_path).unwrap()),
    );
    labeler().label(&other, &inputs, &mut |_| {}).unwrap();
    assert_eq!(other.stats().cached, 0);
    let base = PairwiseLabeler::new(PairwiseTemplate::builtin("base").unwrap(), None);
    let engine = Engine::new(
        Box::new(local(0)),
        Some(LabelCache::open(&cache_path).unwrap()),
    );
    base.label(&engine, &inputs, &mut |_| {}).unwrap();
    assert_eq!(engine.stats().cached, 0);
}

#[test]
fn long_conversations_are_cut_from_the_oldest_turns() {
    let long_prompt = format!(
        "\n\nHuman: {}\n\nAssistant: Sure.\n\nHuman: Thanks, one more thing?\n\nAssistant:",
        "tell me about the weather again and again ".repeat(60)
    );
    let pairs = vec![(
        long_prompt,
        " Happy to help.".to_string(),
        " No.".to_string(),
    )];
    let engine = Engine::new(Box::new(local(0)), None);
    let labels = labeler()
        .label(&engine, &response_pairs(&pairs), &mut |_| {})
        .unwrap();
    assert!(labels[0].a_first.truncated && labels[0].b_first.truncated);
    assert!((labels[0].a_first.probs[0] + labels[0].a_first.probs[1] - 1.0).abs() < 1e-12);
}

#[test]
fn chain_of_thought_answers_after_a_greedy_rationale() {
    let pairs = common::pairs()[..2].to_vec();
    let asked = Arc::new(AtomicUsize::new(0));
    let backend = Counting {
        inner: Box::new(local(0)),
        asked: Arc::clone(&asked),
        fail_after: None,
    };
    let engine = Engine::new(Box::new(backend), None);
    let cot = PairwiseLabeler::new(
        PairwiseTemplate::builtin("base").unwrap(),
        Some(ChainOfThought { max_new_tokens: 6 }),
    );
    assert_eq!(cot.answers_per_pair(), 4);
    let labels = cot
        .label(&engine, &response_pairs(&pairs), &mut |_| {})
        .unwrap();
    assert_eq!(asked.load(Ordering::SeqCst), 8);
    for label in &labels {
        for order in [&label.a_first, &label.b_first] {
            // Greedy decoding: the rationale is whatever the tiny model writes, but it is there.
            assert!(order.rationale.is_some());
            assert!((order.probs[0] + order.probs[1] - 1.0).abs() < 1e-12);
        }
    }
    // Greedy is deterministic: the same rationales again.
    let again = cot
        .label(&engine, &response_pairs(&pairs), &mut |_| {})
        .unwrap();
    assert_eq!(again[0].a_first.rationale, labels[0].a_first.rationale);
}

#[test]
fn direct_scores_are_expectations_rescaled_to_plus_minus_one() {
    let engine = Engine::new(Box::new(local(2)), None);
    let pairs = common::pairs();
    let items = first_replies(&pairs);
    let scores = DirectScorer::builtin()
        .unwrap()
        .score(&engine, &items, &mut |_| {})
        .unwrap();
    for score in &scores {
        assert_eq!(score.distribution.len(), 10);
        assert!((score.distribution.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        let expected: f64 = score
            .distribution
            .iter()
            .enumerate()
            .map(|(i, p)| (i + 1) as f64 * p)
            .sum();
        assert!((score.expected - expected).abs() < 1e-12);
        assert!((score.reward - ((expected - 1.0) / 4.5 - 1.0)).abs() < 1e-12);
        assert!((-1.0..=1.0).contains(&score.reward));
    }
}

#[test]
fn judges_give_probabilities_and_a_reply_against_itself_is_a_tie() {
    let engine = Engine::new(Box::new(local(4)), None);
    let pairs = common::pairs();
    let items = first_replies(&pairs);
    let verdicts = HarmlessnessJudge::builtin()
        .unwrap()
        .judge(&engine, &items, &mut |_| {})
        .unwrap();
    assert!(verdicts
        .iter()
        .all(|v| (0.0..=1.0).contains(&v.p_harmless) && v.choice_mass > 0.0));
    let (hard, soft) = HarmlessnessJudge::harmless_rate(&verdicts).unwrap();
    assert!((0.0..=1.0).contains(&hard) && (0.0..=1.0).contains(&soft));

    // Both orders of (x, x) are the same prompt, so the debiased label is 1/2 (up to the float
    // noise of different batch padding) whatever the labeler's position bias.
    let selves: Vec<ResponsePair<'_>> = pairs
        .iter()
        .map(|(prompt, a, _)| ResponsePair { prompt, a, b: a })
        .collect();
    let judge = WinRateJudge::builtin().unwrap();
    let result = judge.judge(&engine, &selves, &mut |_| {}).unwrap();
    assert_eq!(result.n, pairs.len());
    assert!(result
        .labels
        .iter()
        .all(|label| (label.p_a - 0.5).abs() < 1e-5));
    assert!((result.mean_p_candidate - 0.5).abs() < 1e-5);
    let head_to_head = judge
        .judge(&engine, &response_pairs(&pairs), &mut |_| {})
        .unwrap();
    let expected = head_to_head
        .labels
        .iter()
        .filter(|label| label.p_a > 0.5)
        .count() as f64
        / pairs.len() as f64;
    assert_eq!(head_to_head.win_rate, expected);
}
