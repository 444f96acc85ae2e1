//! Any OpenAI-compatible server as a labeler (vLLM, TGI, llama.cpp server, Ollama, OpenAI itself,
//! or `rlxf serve`), through `/v1/completions` or `/v1/chat/completions` with log-probs.
//!
//! - **Completions**: the prompt is the query's plain text; one token is generated at temperature 0
//!   with `logprobs: top_logprobs`, and the answer is read from `choices[0].logprobs.top_logprobs[0]`.
//! - **Chat**: the whole query (preamble, item, ending) is one user message; one token is generated
//!   with `logprobs: true, top_logprobs`, read from `choices[0].logprobs.content[0].top_logprobs`.
//!
//! # Matching answer tokens
//!
//! A server names tokens by their text, and which variant a model emits (`"1"`, `" 1"`) depends on
//! its tokenizer and, for chat, on its format. Every listed token whose text equals the choice once
//! surrounding whitespace is trimmed counts as that choice, and their probabilities are added.
//!
//! # Answers of several tokens
//!
//! A choice that begins another (`1` begins `10`) is asked a second time over completions, with
//! the choice appended to the prompt, so the answer is read as a whole as the local backend reads
//! it ([`crate::ChoiceTokens`]): `P(10)` adds `P(1)·P(0 | …1)` to a listed `10` token, and `P(1)`
//! keeps `P(1)·(1 − P(0 | …1))`. Each step of a longer answer must be one listed token of the
//! server's. Over chat a reply cannot be continued portably, so there every choice is read from
//! the first token alone and should be one token of the server's tokenizer.
//!
//! # Answers missing from the top log-probs
//!
//! When a choice is not among the listed tokens, all that is known is that its probability is at
//! most the smallest listed one. That bound is used as its log-prob and the choice is named in
//! [`ChoiceAnswer::bounded`] (the audit counts such pairs). Raise `top_logprobs` to make this rarer.
//! A response with no log-probs at all is an error, not a guess.
//!
//! # Failures
//!
//! Requests run on `concurrency` threads. Timeouts, connection errors, HTTP 408/429/5xx and bodies
//! that are not JSON are retried with exponential backoff and full jitter (`Retry-After` is honoured
//! up to `backoff_max_s`), up to `max_retries` times. Other 4xx statuses fail at once with the
//! server's message. Each query index is handed to exactly one worker and answered exactly once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::backend::{Backend, ChoiceAnswer, CompletionParams, OnAnswer};
use crate::error::{FeedbackError, Result};
use crate::template::ChoiceQuery;

/// Which endpoint the backend calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    Completions,
    Chat,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "completions",
            Endpoint::Chat => "chat/completions",
        }
    }
}

/// Where the server is and how to talk to it (the `[backend]` table of a labeler config with
/// `kind = "openai"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiConfig {
    /// Base URL up to and including `/v1`.
    pub base_url: String,
    pub model: String,
    pub endpoint: Endpoint,
    /// Environment variable holding the API key; unset or empty means no `Authorization` header
    /// (local servers need none).
    pub api_key_env: String,
    /// How many alternatives the server lists per token (OpenAI allows up to 5 for completions and
    /// 20 for chat).
    pub top_logprobs: usize,
    /// Whole-request timeout.
    pub timeout_s: f64,
    pub max_retries: u32,
    /// First backoff delay; doubles per retry up to `backoff_max_s`, each drawn uniformly in
    /// [0, delay] (full jitter).
    pub backoff_initial_s: f64,
    pub backoff_max_s: f64,
    /// Requests in flight at once.
    pub concurrency: usize,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.openai.com/v1".into(),
            model: String::new(),
            endpoint: Endpoint::Completions,
            api_key_env: "OPENAI_API_KEY".into(),
            top_logprobs: 5,
            timeout_s: 60.0,
            max_retries: 6,
            backoff_initial_s: 0.5,
            backoff_max_s: 30.0,
            concurrency: 4,
        }
    }
}

impl OpenAiConfig {
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |field: &str, reason: &str| Err(FeedbackError::config(origin, field, reason));
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return bad("base_url", "must start with http:// or https://");
        }
        if self.model.trim().is_empty() {
            return bad("model", "name the model the server should use");
        }
        if !(1..=20).contains(&self.top_logprobs) {
            return bad("top_logprobs", "must be between 1 and 20");
        }
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0) {
            return bad("timeout_s", "must be a positive number of seconds");
        }
        if !(self.backoff_initial_s >= 0.0 && self.backoff_max_s >= self.backoff_initial_s) {
            return bad(
                "backoff_max_s",
                "backoff delays must satisfy 0 <= backoff_initial_s <= backoff_max_s",
            );
        }
        if self.concurrency == 0 {
            return bad("concurrency", "must be at least 1");
        }
        Ok(())
    }
}

/// An attempt's failure: worth retrying or not.
enum Failure {
    Retry {
        message: String,
        retry_after: Option<f64>,
    },
    Fatal(FeedbackError),
}

pub struct OpenAiBackend {
    config: OpenAiConfig,
    api_key: Option<String>,
    agent: ureq::Agent,
}

impl OpenAiBackend {
    /// A backend for `config`, reading the API key from the environment variable it names.
    pub fn new(config: OpenAiConfig) -> Result<Self> {
        config.validate("openai backend")?;
        let api_key = std::env::var(&config.api_key_env)
            .ok()
            .filter(|key| !key.is_empty());
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs_f64(config.timeout_s))
            .build();
        Ok(Self {
            config,
            api_key,
            agent,
        })
    }

    fn url(&self) -> String {
        format!(
            "{}/{}",
            self.config.base_url.trim_end_matches('/'),
            self.config.endpoint.path()
        )
    }

    fn request_body(&self, prompt: String, max_tokens: usize, stop: &[String]) -> Value {
        let mut body = match self.config.endpoint {
            Endpoint::Completions => json!({
                "model": self.config.model,
                "prompt": prompt,
                "max_tokens": max_tokens,
                "temperature": 0.0,
            }),
            Endpoint::Chat => json!({
                "model": self.config.model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens,
                "temperature": 0.0,
            }),
        };
        if !stop.is_empty() {
            // OpenAI accepts at most four stop sequences.
            body["stop"] = json!(stop.iter().take(4).collect::<Vec<_>>());
        }
        body
    }

    /// One POST, classified.
    fn attempt(&self, url: &str, body: &Value) -> std::result::Result<Value, Failure> {
        let mut request = self.agent.post(url);
        if let Some(key) = &self.api_key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        let retry = |message: String, retry_after: Option<f64>| Failure::Retry {
            message,
            retry_after,
        };
        match request.send_json(body) {
            Ok(response) => {
                let text = response
                    .into_string()
                    .map_err(|err| retry(format!("reading the response failed: {err}"), None))?;
                serde_json::from_str(&text).map_err(|err| {
                    retry(
                        format!("response is not valid JSON ({err}): {}", excerpt(&text)),
                        None,
                    )
                })
            }
            Err(ureq::Error::Status(status, response)) => {
                let retry_after = response
                    .header("Retry-After")
                    .and_then(|value| value.trim().parse::<f64>().ok());
                let text = response.into_string().unwrap_or_default();
                let message = format!("HTTP {status}: {}", excerpt(&text));
                if status == 408 || status == 429 || status >= 500 {
                    Err(retry(message, retry_after))
                } else {
                    Err(Failure::Fatal(FeedbackError::Http {
                        url: url.to_string(),
                        message,
                    }))
                }
            }
            Err(ureq::Error::Transport(transport)) => Err(retry(transport.to_string(), None)),
        }
    }

    /// POSTs `body`, retrying transient failures (see the module docs).
    fn post(&self, body: &Value) -> Result<Value> {
        let url = self.url();
        let mut delay_cap = self.config.backoff_initial_s;
        let mut last = String::new();
        for attempt in 0..=self.config.max_retries {
            match self.attempt(&url, body) {
                Ok(value) => return Ok(value),
                Err(Failure::Fatal(err)) => return Err(err),
                Err(Failure::Retry {
                    message,
                    retry_after,
                }) => {
                    tracing::debug!("{url}: attempt {} failed: {message}", attempt + 1);
                    last = message;
                    if attempt == self.config.max_retries {
                        break;
                    }
                    let jittered = rand::random::<f64>() * delay_cap;
                    let wait = retry_after
                        .map_or(jittered, |after| after.max(jittered))
                        .min(self.config.backoff_max_s);
                    std::thread::sleep(Duration::from_secs_f64(wait));
                    delay_cap = (delay_cap * 2.0).min(self.config.backoff_max_s);
                }
            }
        }
        Err(FeedbackError::Http {
            url,
            message: format!(
                "gave up after {} attempts; last error: {last}",
                self.config.max_retries + 1
            ),
        })
    }

    fn choice_answer(&self, query: &ChoiceQuery) -> Result<ChoiceAnswer> {
        let listed = self.listed_after(query.text())?;
        // Over completions, the choices that begin longer ones are asked again with the choice
        // appended (see the module docs).
        let continued = query
            .choices
            .iter()
            .map(|choice| {
                let text = choice.trim();
                let begins_another = query
                    .choices
                    .iter()
                    .any(|other| other.trim().len() > text.len() && other.trim().starts_with(text));
                (self.config.endpoint == Endpoint::Completions && begins_another)
                    .then(|| self.listed_after(format!("{}{text}", query.text())))
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(answer_from_listed(&listed, &continued, &query.choices))
    }

    /// The alternatives the server lists for the token after `prompt`.
    fn listed_after(&self, prompt: String) -> Result<Vec<(String, f64)>> {
        let mut body = self.request_body(prompt, 1, &[]);
        match self.config.endpoint {
            Endpoint::Completions => body["logprobs"] = json!(self.config.top_logprobs),
            Endpoint::Chat => {
                body["logprobs"] = json!(true);
                body["top_logprobs"] = json!(self.config.top_logprobs);
            }
        }
        let response = self.post(&body)?;
        first_token_top_logprobs(&response, self.config.endpoint).map_err(|reason| {
            FeedbackError::BadResponse {
                url: self.url(),
                reason,
            }
        })
    }

    fn completion_text(&self, query: &ChoiceQuery, params: &CompletionParams) -> Result<String> {
        let body = self.request_body(query.text(), params.max_new_tokens, &params.stop);
        let response = self.post(&body)?;
        let choice = &response["choices"][0];
        let text = match self.config.endpoint {
            Endpoint::Completions => choice["text"].as_str(),
            Endpoint::Chat => choice["message"]["content"].as_str(),
        };
        text.map(str::to_string)
            .ok_or_else(|| FeedbackError::BadResponse {
                url: self.url(),
                reason: format!("no generated text in {}", excerpt(&response.to_string())),
            })
    }
}

impl Backend for OpenAiBackend {
    fn identity(&self) -> String {
        format!(
            "openai:{}:{}:{}:top_logprobs={}:whole_answers",
            self.config.endpoint.path(),
            self.config.base_url.trim_end_matches('/'),
            self.config.model,
            self.config.top_logprobs
        )
    }

    fn answer_choices(
        &self,
        queries: &[ChoiceQuery],
        on_answer: &mut OnAnswer<'_, ChoiceAnswer>,
    ) -> Result<()> {
        run_parallel(
            queries.len(),
            self.config.concurrency,
            |index| self.choice_answer(&queries[index]),
            on_answer,
        )
    }

    fn complete(
        &self,
        queries: &[ChoiceQuery],
        params: &CompletionParams,
        on_text: &mut OnAnswer<'_, String>,
    ) -> Result<()> {
        run_parallel(
            queries.len(),
            self.config.concurrency,
            |index| self.completion_text(&queries[index], params),
            on_text,
        )
    }
}

/// Runs `work(i)` for every `i < count` on up to `concurrency` threads and hands each result to
/// `on_result` on the calling thread as it arrives. Each index is claimed by exactly one worker (an
/// atomic counter), so every result arrives exactly once. The first error, from `work` or from
/// `on_result`, stops new work and is returned once the workers have finished.
pub fn run_parallel<T: Send>(
    count: usize,
    concurrency: usize,
    work: impl Fn(usize) -> Result<T> + Sync,
    on_result: &mut OnAnswer<'_, T>,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (sender, receiver) = mpsc::channel::<(usize, Result<T>)>();
        for _ in 0..concurrency.clamp(1, count.max(1)) {
            let sender = sender.clone();
            let (next, stop, work) = (&next, &stop, &work);
            scope.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let index = next.fetch_add(1, Ordering::SeqCst);
                    if index >= count {
                        break;
                    }
                    let result = work(index);
                    if sender.send((index, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(sender);
        let mut first_error = None;
        for (index, result) in receiver {
            if first_error.is_some() {
                continue;
            }
            if let Err(err) = result.and_then(|value| on_result(index, value)) {
                stop.store(true, Ordering::SeqCst);
                first_error = Some(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    })
}

/// The `(token, logprob)` alternatives listed for the first generated token.
fn first_token_top_logprobs(
    response: &Value,
    endpoint: Endpoint,
) -> std::result::Result<Vec<(String, f64)>, String> {
    let logprobs = &response["choices"][0]["logprobs"];
    if logprobs.is_null() {
        return Err(format!(
            "no log-probs in the response ({}); the server must support {}",
            excerpt(&response.to_string()),
            match endpoint {
                Endpoint::Completions => "`logprobs: N` on /v1/completions",
                Endpoint::Chat => "`logprobs: true, top_logprobs: N` on /v1/chat/completions",
            }
        ));
    }
    let listed: Vec<(String, f64)> = match endpoint {
        Endpoint::Completions => logprobs["top_logprobs"][0]
            .as_object()
            .map(|alternatives| {
                alternatives
                    .iter()
                    .filter_map(|(token, lp)| Some((token.clone(), lp.as_f64()?)))
                    .collect()
            })
            .unwrap_or_default(),
        Endpoint::Chat => logprobs["content"][0]["top_logprobs"]
            .as_array()
            .map(|alternatives| {
                alternatives
                    .iter()
                    .filter_map(|entry| {
                        Some((
                            entry["token"].as_str()?.to_string(),
                            entry["logprob"].as_f64()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    if listed.is_empty() {
        return Err(format!(
            "the log-probs list no alternatives for the first token: {}",
            excerpt(&logprobs.to_string())
        ));
    }
    Ok(listed)
}

/// Log-probs of `choices` from a server's listed alternatives after the prompt (`listed`) and,
/// for each choice that begins a longer one, after the prompt with the choice appended
/// (`continued`, by choice index; see the module docs).
fn answer_from_listed(
    listed: &[(String, f64)],
    continued: &[Option<Vec<(String, f64)>>],
    choices: &[String],
) -> ChoiceAnswer {
    let floor = listed
        .iter()
        .map(|(_, lp)| *lp)
        .fold(f64::INFINITY, f64::min);
    let texts: Vec<&str> = choices.iter().map(|choice| choice.trim()).collect();
    // P(the answer starts with choice i), from every listed way of spelling it; None when no
    // listed token spells it. Shorter choices first: a longer one continues them.
    let mut starts: Vec<Option<f64>> = vec![None; choices.len()];
    let mut by_length: Vec<usize> = (0..choices.len()).collect();
    by_length.sort_by_key(|&i| texts[i].len());
    for &i in &by_length {
        let direct = listed
            .iter()
            .filter(|(token, _)| token.trim() == texts[i])
            .map(|(_, lp)| lp.exp());
        // Through each shorter choice that was asked again: P(it) · P(the rest | it).
        let continuing = continued
            .iter()
            .zip(&starts)
            .zip(&texts)
            .filter_map(|((after, start), shorter)| {
                let rest = texts[i]
                    .strip_prefix(shorter)
                    .filter(|rest| !rest.is_empty())?;
                Some((after.as_ref()?, (*start)?, rest))
            })
            .flat_map(|(after, start, rest)| {
                after
                    .iter()
                    .filter(move |(token, _)| token == rest)
                    .map(move |(_, lp)| start * lp.exp())
            });
        let paths: Vec<f64> = direct.chain(continuing).collect();
        starts[i] = (!paths.is_empty()).then(|| paths.iter().sum());
    }
    let mut bounded = Vec::new();
    let logprobs = (0..choices.len())
        .map(|i| {
            let Some(start) = starts[i] else {
                bounded.push(choices[i].clone());
                return floor;
            };
            // The mass that goes on into a longer choice is that choice's, not this one's.
            let continuing: f64 = continued[i]
                .iter()
                .flatten()
                .filter(|(token, _)| {
                    !token.is_empty()
                        && texts
                            .iter()
                            .any(|other| other.strip_prefix(texts[i]) == Some(token.as_str()))
                })
                .map(|(_, lp)| lp.exp())
                .sum();
            (start * (1.0 - continuing.min(1.0))).ln()
        })
        .collect();
    ChoiceAnswer {
        logprobs,
        bounded,
        truncated: false,
    }
}

/// The first 200 characters of `text`, for error messages.
fn excerpt(text: &str) -> String {
    let cut: String = text.chars().take(200).collect();
    if cut.len() < text.len() {
        format!("{cut}...")
    } else {
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choices() -> Vec<String> {
        vec!["1".into(), "2".into()]
    }

    #[test]
    fn whitespace_variants_of_a_choice_are_added() {
        let listed = vec![
            ("1".to_string(), (0.2f64).ln()),
            (" 1".to_string(), (0.1f64).ln()),
            ("2".to_string(), (0.6f64).ln()),
            ("x".to_string(), (0.05f64).ln()),
        ];
        let answer = answer_from_listed(&listed, &[None, None], &choices());
        assert!((answer.logprobs[0] - (0.3f64).ln()).abs() < 1e-12);
        assert!((answer.logprobs[1] - (0.6f64).ln()).abs() < 1e-12);
        assert!(answer.bounded.is_empty());
    }

    #[test]
    fn a_missing_choice_is_bounded_by_the_smallest_listed_logprob() {
        let listed = vec![
            ("1".to_string(), (0.7f64).ln()),
            ("x".to_string(), (0.1f64).ln()),
        ];
        let answer = answer_from_listed(&listed, &[None, None], &choices());
        assert_eq!(answer.bounded, vec!["2".to_string()]);
        assert!((answer.logprobs[1] - (0.1f64).ln()).abs() < 1e-12);
        let probs = answer.distribution();
        assert!((probs[0] - 0.875).abs() < 1e-12);
    }

    #[test]
    fn a_choice_that_begins_another_is_read_as_a_whole_answer() {
        let ln = |p: f64| p.ln();
        let scale = vec!["1".to_string(), "2".to_string(), "10".to_string()];
        let first = vec![
            ("1".to_string(), ln(0.5)),
            ("2".to_string(), ln(0.3)),
            ("x".to_string(), ln(0.1)),
        ];
        // After "…1": "0" makes it "10"; " 0" and "5" do not continue into a choice.
        let after_one = vec![
            ("0".to_string(), ln(0.4)),
            ("5".to_string(), ln(0.1)),
            (" 0".to_string(), ln(0.05)),
        ];
        let answer = answer_from_listed(&first, &[Some(after_one.clone()), None, None], &scale);
        // Hand-computed: "1" = 0.5 · (1 − 0.4), "2" = 0.3, "10" = 0.5 · 0.4.
        for (lp, expected) in answer.logprobs.iter().zip([0.3, 0.3, 0.2]) {
            assert!((lp.exp() - expected).abs() < 1e-12, "{:?}", answer.logprobs);
        }
        assert!(answer.bounded.is_empty());
        // A tokenizer that also has "10" as one token: both spellings count.
        let mut with_ten = first.clone();
        with_ten.push(("10".to_string(), ln(0.05)));
        let answer = answer_from_listed(&with_ten, &[Some(after_one), None, None], &scale);
        assert!((answer.logprobs[2].exp() - 0.25).abs() < 1e-12);
        // Nothing listed that spells "10": bounded by the smallest listed log-prob.
        let answer = answer_from_listed(
            &first,
            &[Some(vec![("5".into(), ln(0.9))]), None, None],
            &scale,
        );
        assert_eq!(answer.bounded, vec!["10".to_string()]);
        assert!((answer.logprobs[0].exp() - 0.5).abs() < 1e-12);
        assert!((answer.logprobs[2] - ln(0.1)).abs() < 1e-12);
    }

    #[test]
    fn responses_without_logprobs_are_rejected_with_a_reason() {
        let response = json!({"choices": [{"text": "1", "logprobs": null}]});
        let err = first_token_top_logprobs(&response, Endpoint::Completions).unwrap_err();
        assert!(err.contains("no log-probs"), "{err}");
        let chat = json!({"choices": [{"logprobs": {"content": [{"token": "1", "logprob": -0.1,
            "top_logprobs": [{"token": "1", "logprob": -0.1}, {"token": "2", "logprob": -2.5}]}]}}]});
        let listed = first_token_top_logprobs(&chat, Endpoint::Chat).unwrap();
        assert_eq!(
            listed,
            vec![("1".to_string(), -0.1), ("2".to_string(), -2.5)]
        );
    }

    #[test]
    fn run_parallel_delivers_every_index_once_and_stops_on_error() {
        let mut seen = [0; 50];
        run_parallel(50, 4, Ok, &mut |index, value: usize| {
            assert_eq!(index, value);
            seen[index] += 1;
            Ok(())
        })
        .unwrap();
        assert!(seen.iter().all(|&count| count == 1));

        let err = run_parallel(
            50,
            3,
            |index| {
                if index == 7 {
                    Err(FeedbackError::InvalidInput("boom".into()))
                } else {
                    Ok(index)
                }
            },
            &mut |index, _| {
                assert_ne!(index, 7, "a failed query is never delivered");
                Ok(())
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("boom"));
    }

    #[test]
    fn configs_are_validated() {
        let config = OpenAiConfig {
            model: "m".into(),
            ..OpenAiConfig::default()
        };
        config.validate("test").unwrap();
        for broken in [
            OpenAiConfig {
                model: String::new(),
                ..config.clone()
            },
            OpenAiConfig {
                base_url: "localhost:8000".into(),
                ..config.clone()
            },
            OpenAiConfig {
                top_logprobs: 0,
                ..config.clone()
            },
            OpenAiConfig {
                concurrency: 0,
                ..config.clone()
            },
        ] {
            assert!(broken.validate("test").unwrap_err().is_bad_input());
        }
    }
}
