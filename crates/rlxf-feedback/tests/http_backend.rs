//! The OpenAI-compatible backend against the OpenAI-compatible server, both from this crate, on
//! 127.0.0.1: numbers agree with the local backend over the same model, and under injected faults
//! (429, 500, slow answers past the client timeout, malformed JSON, dropped connections) every pair
//! is labeled exactly once with the same labels as without faults.

mod common;

use rlxf_feedback::{
    Backend, ChoiceQuery, CompletionServer, Endpoint, Engine, FaultPlan, LabelCache, LocalBackend,
    OpenAiBackend, OpenAiConfig, PairwiseLabeler, PairwiseTemplate, PointwiseTemplate,
    ResponsePair, RunningServer, ServedModel, SoftLabel,
};
use rlxf_model::{ChatTemplate, Tokenizer};

const SEED: u64 = 7;

fn server(faults: &str) -> RunningServer {
    serve(common::gpt2(), faults)
}

fn serve(tokenizer: Tokenizer, faults: &str) -> RunningServer {
    let served = ServedModel {
        model: common::answering_model(SEED),
        tokenizer,
        template: ChatTemplate::HumanAssistant,
        name: "tiny-labeler".into(),
    };
    let faults: FaultPlan = if faults.is_empty() {
        FaultPlan::default()
    } else {
        faults.parse().unwrap()
    };
    CompletionServer::bind("127.0.0.1:0", served, faults)
        .unwrap()
        .spawn()
        .unwrap()
}

fn client(server: &RunningServer, endpoint: Endpoint) -> OpenAiBackend {
    OpenAiBackend::new(OpenAiConfig {
        base_url: server.base_url(),
        model: "tiny-labeler".into(),
        endpoint,
        api_key_env: "RLXF_TEST_NO_SUCH_KEY".into(),
        top_logprobs: 5,
        timeout_s: 2.0,
        max_retries: 2,
        backoff_initial_s: 0.01,
        backoff_max_s: 0.05,
        concurrency: 3,
    })
    .unwrap()
}

fn label(engine: &Engine, pairs: &[(String, String, String)]) -> Vec<SoftLabel> {
    let inputs: Vec<ResponsePair<'_>> = pairs
        .iter()
        .map(|(prompt, a, b)| ResponsePair { prompt, a, b })
        .collect();
    PairwiseLabeler::new(PairwiseTemplate::builtin("base").unwrap(), None)
        .label(engine, &inputs, &mut |_| {})
        .unwrap()
}

fn local_labels(pairs: &[(String, String, String)]) -> Vec<SoftLabel> {
    let backend = LocalBackend::new(
        common::answering_model(SEED),
        common::gpt2(),
        "local".into(),
    )
    .unwrap();
    label(&Engine::new(Box::new(backend), None), pairs)
}

#[test]
fn completions_over_http_match_the_local_backend() {
    let server = server("");
    let pairs = common::pairs();
    let engine = Engine::new(Box::new(client(&server, Endpoint::Completions)), None);
    let remote = label(&engine, &pairs);
    let local = local_labels(&pairs);
    for (remote, local) in remote.iter().zip(&local) {
        for (r, l) in [
            (&remote.a_first, &local.a_first),
            (&remote.b_first, &local.b_first),
        ] {
            assert!(
                r.bounded.is_empty(),
                "1 and 2 lead this model's distribution"
            );
            for i in 0..2 {
                assert!((r.logprobs[i] - l.logprobs[i]).abs() < 1e-4);
            }
        }
        assert!((remote.p_a - local.p_a).abs() < 1e-4);
    }
    // The labels differ between pairs: the server reads each prompt.
    assert!(remote
        .iter()
        .any(|label| (label.p_a - remote[0].p_a).abs() > 1e-6));
    assert_eq!(server.post_count(), 2 * pairs.len());
}

#[test]
fn an_answer_of_two_tokens_over_http_matches_the_local_backend() {
    // A tokenizer that splits "10" into "1", "0": the server is asked again after "…1".
    let server = serve(common::digit_splitting_tokenizer(), "");
    let choices = vec!["1".to_string(), "10".to_string(), "0".to_string()];
    let template = PointwiseTemplate::new("Rate the reply.", "Score=", choices).unwrap();
    let queries: Vec<ChoiceQuery> = [
        ("Hi", "Hello!"),
        ("Help me", "No."),
        ("A joke?", "Why not."),
    ]
    .iter()
    .map(|(prompt, reply)| template.query(&format!("\n\nHuman: {prompt}\n\nAssistant:"), reply))
    .collect();
    let answers = |backend: Box<dyn Backend>| {
        Engine::new(backend, None)
            .answer_choices(&queries, &mut |_| {})
            .unwrap()
    };
    let remote = answers(Box::new(client(&server, Endpoint::Completions)));
    let local = answers(Box::new(
        LocalBackend::new(
            common::answering_model(SEED),
            common::digit_splitting_tokenizer(),
            "local".into(),
        )
        .unwrap(),
    ));
    for (remote, local) in remote.iter().zip(&local) {
        assert!(
            remote.bounded.is_empty(),
            "0 and 1 lead this model's distributions"
        );
        for (r, l) in remote.logprobs.iter().zip(&local.logprobs) {
            assert!(
                (r - l).abs() < 1e-4,
                "{:?} vs {:?}",
                remote.logprobs,
                local.logprobs
            );
        }
        // "10" takes a noticeable share of a leading 1 here, so reading "1" from the first token
        // alone would not pass the comparison above.
        let (one, ten) = (remote.logprobs[0].exp(), remote.logprobs[1].exp());
        assert!(ten / (one + ten) > 0.05, "{:?}", remote.logprobs);
    }
    assert_eq!(server.post_count(), 2 * queries.len());
}

#[test]
fn chat_completions_give_proper_soft_labels() {
    // Over chat the prompt is one user turn in the model's dialogue format, so the numbers differ
    // from completions; they must still be distributions, read from listed tokens.
    let server = server("");
    let pairs = common::pairs()[..2].to_vec();
    let engine = Engine::new(Box::new(client(&server, Endpoint::Chat)), None);
    for label in label(&engine, &pairs) {
        for order in [&label.a_first, &label.b_first] {
            assert!((order.probs[0] + order.probs[1] - 1.0).abs() < 1e-12);
            assert!(order.bounded.is_empty());
        }
    }
}

#[test]
fn faults_are_retried_and_every_pair_is_labeled_exactly_once() {
    let pairs = common::pairs();
    let clean = local_labels(&pairs);
    // The slow answer comes well after the client's timeout; the timeout itself is generous so a
    // busy test machine never makes ordinary answers time out (abandoned requests still occupy the
    // server, so timeouts near the service time feed on themselves).
    let server = server("ok,429,ok,500,slow:3500,ok,malformed,drop");
    let dir = tempfile::tempdir().unwrap();
    let cache = LabelCache::open(&dir.path().join("cache.sqlite")).unwrap();
    let backend = OpenAiBackend::new(OpenAiConfig {
        timeout_s: 2.5,
        max_retries: 30,
        ..client_config(&server)
    })
    .unwrap();
    let engine = Engine::new(Box::new(backend), Some(cache));
    let labels = label(&engine, &pairs);
    assert_eq!(labels.len(), pairs.len());
    for (label, clean) in labels.iter().zip(&clean) {
        assert!((label.p_a - clean.p_a).abs() < 1e-4);
    }
    // Exactly one stored answer per (pair, order), none lost, none twice.
    assert_eq!(engine.cache().unwrap().len().unwrap(), 2 * pairs.len());
    assert_eq!(engine.stats().computed, 2 * pairs.len());
    // The faults really happened: far more requests than answers.
    assert!(server.post_count() > 2 * pairs.len() + 4);
}

fn client_config(server: &RunningServer) -> OpenAiConfig {
    OpenAiConfig {
        base_url: server.base_url(),
        model: "tiny-labeler".into(),
        api_key_env: "RLXF_TEST_NO_SUCH_KEY".into(),
        backoff_initial_s: 0.01,
        backoff_max_s: 0.05,
        concurrency: 3,
        ..OpenAiConfig::default()
    }
}

#[test]
fn client_errors_fail_at_once_and_exhausted_retries_name_the_last_error() {
    let server = server("500");
    let backend = OpenAiBackend::new(OpenAiConfig {
        max_retries: 2,
        ..client_config(&server)
    })
    .unwrap();
    let engine = Engine::new(Box::new(backend), None);
    let pairs = common::pairs()[..1].to_vec();
    let inputs = [ResponsePair {
        prompt: &pairs[0].0,
        a: &pairs[0].1,
        b: &pairs[0].2,
    }];
    let labeler = PairwiseLabeler::new(PairwiseTemplate::builtin("base").unwrap(), None);
    let err = labeler.label(&engine, &inputs, &mut |_| {}).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("gave up after 3 attempts"), "{message}");
    assert!(message.contains("HTTP 500"), "{message}");
    assert!(!err.is_bad_input());

    // A 4xx (here: a prompt longer than the tiny model's context) is not retried.
    let server = self::server("");
    let engine = Engine::new(Box::new(client(&server, Endpoint::Completions)), None);
    let long = format!("\n\nHuman: {}\n\nAssistant:", "words ".repeat(400));
    let inputs = [ResponsePair {
        prompt: &long,
        a: " a",
        b: " b",
    }];
    let err = labeler.label(&engine, &inputs, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("HTTP 400"), "{err}");
    assert!(err.to_string().contains("context"), "{err}");
    assert!(server.post_count() <= 2, "no retries on 400");
}

#[test]
fn the_server_speaks_plain_openai() {
    let server = server("");
    let url = format!("{}/completions", server.base_url());
    let post = |body: serde_json::Value| -> serde_json::Value {
        ureq::post(&url)
            .send_json(body)
            .unwrap()
            .into_json()
            .unwrap()
    };
    let plain = post(
        serde_json::json!({"model": "m", "prompt": "Hello", "max_tokens": 2,
        "temperature": 0}),
    );
    assert!(plain["choices"][0]["logprobs"].is_null());
    assert_eq!(plain["choices"][0]["finish_reason"], "length");
    assert_eq!(plain["usage"]["completion_tokens"], 2);

    let with_logprobs = post(
        serde_json::json!({"model": "m", "prompt": ["Hello", "Hi there"],
        "max_tokens": 2, "temperature": 0, "logprobs": 3}),
    );
    let choices = with_logprobs["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for choice in choices {
        assert_eq!(choice["text"], plain_text(choice));
        let logprobs = &choice["logprobs"];
        let tokens = logprobs["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), 2);
        for (i, token) in tokens.iter().enumerate() {
            let top = logprobs["top_logprobs"][i].as_object().unwrap();
            assert_eq!(top.len(), 3);
            // Greedy: the generated token is the most likely one, with the log-prob listed for it.
            let best = top
                .values()
                .map(|lp| lp.as_f64().unwrap())
                .fold(f64::NEG_INFINITY, f64::max);
            let own = logprobs["token_logprobs"][i].as_f64().unwrap();
            assert!((own - best).abs() < 1e-6);
            assert_eq!(top[token.as_str().unwrap()].as_f64().unwrap(), own);
        }
    }
    assert_eq!(plain["choices"][0]["text"], choices[0]["text"]);

    let models: serde_json::Value = ureq::get(&format!("{}/models", server.base_url()))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(models["data"][0]["id"], "tiny-labeler");
    for (request, status) in [
        (
            ureq::get(&format!("{}/nowhere", server.base_url())).call(),
            404,
        ),
        (ureq::post(&url).send_string("{not json"), 400),
        (
            ureq::post(&url).send_json(serde_json::json!({"prompt": "x", "n": 2})),
            400,
        ),
    ] {
        match request {
            Err(ureq::Error::Status(code, _)) => assert_eq!(code, status),
            other => panic!("expected HTTP {status}, got {other:?}"),
        }
    }
}

/// The tokens of a completion joined: what its `text` must be.
fn plain_text(choice: &serde_json::Value) -> String {
    choice["logprobs"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|token| token.as_str().unwrap())
        .collect()
}
