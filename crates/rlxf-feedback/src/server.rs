//! A small OpenAI-compatible server over an rlxf model (`rlxf serve`): `GET /v1/models`,
//! `POST /v1/completions` and `POST /v1/chat/completions` with `logprobs` / `top_logprobs`, so any
//! OpenAI client (and this crate's [`crate::OpenAiBackend`]) can use a local checkpoint.
//!
//! HTTP/1.1 over `std::net`, one thread per connection, one request per connection
//! (`Connection: close`); requests to the model are served one at a time. Supported request fields:
//! `prompt` (string or list of strings) / `messages`, `max_tokens` (default 16), `temperature`
//! (default 1; 0 is greedy), `top_p`, `seed`, `stop`, `logprobs` (completions: 0–20 alternatives;
//! chat: `true` with `top_logprobs` 0–20). `n > 1` and `echo` are rejected. A prompt longer than
//! the model's context is a 400, as on OpenAI.
//!
//! A request is computed to the end even when its client has given up waiting, so a client timeout
//! close to the service time makes retries queue behind abandoned work: give clients a timeout well
//! above the time one request takes.
//!
//! Log-probs are those of the model's unmodified distribution (before temperature and top-p), as
//! OpenAI reports them. For tests of clients, a [`FaultPlan`] makes the server misbehave on a fixed
//! schedule (429, 500, slow answers, malformed JSON, dropped connections).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use candle_core::{DType, Tensor, D};
use rlxf_model::{
    generate_keyed, CausalLm, ChatTemplate, FinishReason, GenerationConfig, LoadedModel, Role,
    Tokenizer, Turn,
};
use serde_json::{json, Map, Value};

use crate::error::{FeedbackError, Result};

/// Largest request body accepted (prompts are text; 16 MiB is far beyond any context window).
const MAX_BODY_BYTES: usize = 16 << 20;
/// Largest header block accepted.
const MAX_HEADER_BYTES: usize = 64 << 10;
/// Connections served at once; more get a 503 so a flood cannot exhaust threads.
const MAX_CONNECTIONS: usize = 64;
/// Most alternatives per token, as on OpenAI's chat endpoint.
const MAX_TOP_LOGPROBS: usize = 20;

/// What the server does to one request (see [`FaultPlan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// `429 Too Many Requests` with `Retry-After: 0`.
    TooManyRequests,
    /// `500 Internal Server Error`.
    ServerError,
    /// Waits this long, then answers normally.
    Slow(Duration),
    /// `200 OK` with a body cut off in the middle of the JSON.
    MalformedJson,
    /// Closes the connection without answering.
    Drop,
}

/// A fixed, cyclic schedule of faults for POST requests: request `i` (counted from 0 across all
/// connections) gets `faults[i % len]`. Written as a comma-separated list:
/// `ok,429,500,slow:1500,malformed,drop` (`slow:` takes milliseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    faults: Vec<Fault>,
}

impl FromStr for FaultPlan {
    type Err = FeedbackError;

    fn from_str(text: &str) -> Result<Self> {
        let faults = text
            .split(',')
            .map(|item| {
                let item = item.trim();
                Ok(match item {
                    "ok" => Fault::None,
                    "429" => Fault::TooManyRequests,
                    "500" => Fault::ServerError,
                    "malformed" => Fault::MalformedJson,
                    "drop" => Fault::Drop,
                    _ => match item.strip_prefix("slow:").map(str::parse::<u64>) {
                        Some(Ok(ms)) => Fault::Slow(Duration::from_millis(ms)),
                        _ => {
                            return Err(FeedbackError::config(
                                text,
                                "faults",
                                format!(
                                    "unknown fault {item:?} (use ok, 429, 500, slow:MS, \
                                     malformed, drop)"
                                ),
                            ))
                        }
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { faults })
    }
}

impl FaultPlan {
    fn fault(&self, request: usize) -> Fault {
        if self.faults.is_empty() {
            Fault::None
        } else {
            self.faults[request % self.faults.len()]
        }
    }
}

/// The model a server answers with.
pub struct ServedModel {
    pub model: LoadedModel,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// The name `/v1/models` lists and responses echo.
    pub name: String,
}

struct Shared {
    served: Mutex<ServedModel>,
    faults: FaultPlan,
    post_count: AtomicUsize,
    connections: AtomicUsize,
    completion_ids: AtomicUsize,
    shutdown: AtomicBool,
}

/// A server listening on a socket.
pub struct CompletionServer {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// A server running on a background thread; dropping it (or [`Self::shutdown`]) stops it.
pub struct RunningServer {
    address: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningServer {
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://ADDRESS/v1`, the base URL clients need.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    /// POST requests received so far (faulty ones included).
    pub fn post_count(&self) -> usize {
        self.shared.post_count.load(Ordering::SeqCst)
    }

    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.address);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl CompletionServer {
    /// Binds `address` (port 0 picks a free port).
    pub fn bind(address: &str, served: ServedModel, faults: FaultPlan) -> Result<Self> {
        let listener = TcpListener::bind(address).map_err(|err| FeedbackError::io(address, err))?;
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                served: Mutex::new(served),
                faults,
                post_count: AtomicUsize::new(0),
                connections: AtomicUsize::new(0),
                completion_ids: AtomicUsize::new(0),
                shutdown: AtomicBool::new(false),
            }),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|err| FeedbackError::io("listener", err))
    }

    /// Serves until the process ends.
    pub fn serve(self) {
        accept_loop(&self.listener, &self.shared);
    }

    /// Serves on a background thread.
    pub fn spawn(self) -> Result<RunningServer> {
        let address = self.local_addr()?;
        let shared = Arc::clone(&self.shared);
        let thread = std::thread::spawn(move || self.serve());
        Ok(RunningServer {
            address,
            shared,
            thread: Some(thread),
        })
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.shutdown.load(Ordering::SeqCst) {
            break;
        }
        let Ok(mut stream) = stream else { continue };
        if shared.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            let _ = write_response(&mut stream, &error_response(503, "server busy"));
            continue;
        }
        let shared = Arc::clone(shared);
        std::thread::spawn(move || {
            handle_connection(&mut stream, &shared);
            shared.connections.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// An HTTP request as this server needs it.
struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

/// A response: status, extra headers, JSON or raw body.
struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Response {
    fn json(status: u16, value: &Value) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: value.to_string().into_bytes(),
        }
    }
}

fn error_response(status: u16, message: &str) -> Response {
    let kind = if status < 500 {
        "invalid_request_error"
    } else {
        "server_error"
    };
    Response::json(
        status,
        &json!({"error": {"message": message, "type": kind, "code": status}}),
    )
}

fn read_request(stream: &mut TcpStream) -> std::result::Result<Request, String> {
    let mut reader = BufReader::new(stream);
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|err| err.to_string())?;
        if read == 0 {
            return Err("connection closed before the request ended".into());
        }
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEADER_BYTES {
            return Err("request headers too large".into());
        }
    }
    let head = String::from_utf8(head).map_err(|_| "request headers are not UTF-8")?;
    let mut lines = head.lines();
    let request_line = lines.next().ok_or("empty request")?;
    let mut parts = request_line.split_whitespace();
    let (method, target) = match (parts.next(), parts.next()) {
        (Some(method), Some(target)) => (method.to_string(), target.to_string()),
        _ => return Err(format!("malformed request line {request_line:?}")),
    };
    let mut content_length = 0usize;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        if name == "content-length" {
            content_length = value
                .trim()
                .parse()
                .map_err(|_| format!("bad Content-Length {value:?}"))?;
        } else if name == "transfer-encoding" {
            return Err("chunked request bodies are not supported; send Content-Length".into());
        }
    }
    if content_length > MAX_BODY_BYTES {
        return Err(format!(
            "request body of {content_length} bytes is too large"
        ));
    }
    let mut body = vec![0; content_length];
    reader
        .read_exact(&mut body)
        .map_err(|err| err.to_string())?;
    let path = target.split('?').next().unwrap_or("").to_string();
    Ok(Request { method, path, body })
}

fn write_response(stream: &mut TcpStream, response: &Response) -> std::io::Result<()> {
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        response.status,
        response.body.len()
    );
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(&response.body)?;
    stream.flush()
}

fn handle_connection(stream: &mut TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let request = match read_request(stream) {
        Ok(request) => request,
        Err(message) => {
            let _ = write_response(stream, &error_response(400, &message));
            return;
        }
    };
    let response = if request.method == "POST" {
        let count = shared.post_count.fetch_add(1, Ordering::SeqCst);
        match shared.faults.fault(count) {
            Fault::None => route(&request, shared),
            Fault::TooManyRequests => {
                let mut response = error_response(429, "rate limited (injected fault)");
                response.headers.push(("Retry-After", "0".into()));
                response
            }
            Fault::ServerError => error_response(500, "internal error (injected fault)"),
            Fault::Slow(delay) => {
                std::thread::sleep(delay);
                route(&request, shared)
            }
            Fault::MalformedJson => Response {
                status: 200,
                headers: Vec::new(),
                body: br#"{"id": "cmpl-broken", "choices": [{"text": "#.to_vec(),
            },
            Fault::Drop => {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
    } else {
        route(&request, shared)
    };
    let _ = write_response(stream, &response);
}

fn route(request: &Request, shared: &Shared) -> Response {
    let result = match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/v1/models") => {
            let served = shared.served.lock().unwrap_or_else(|e| e.into_inner());
            Ok(
                json!({"object": "list", "data": [{"id": served.name, "object": "model",
                "created": 0, "owned_by": "rlxf"}]}),
            )
        }
        ("POST", "/v1/completions" | "/v1/chat/completions") => {
            let chat = request.path.ends_with("chat/completions");
            serde_json::from_slice::<Value>(&request.body)
                .map_err(|err| (400, format!("request body is not valid JSON: {err}")))
                .and_then(|body| match body {
                    Value::Object(body) => {
                        let id = shared.completion_ids.fetch_add(1, Ordering::SeqCst);
                        let served = shared.served.lock().unwrap_or_else(|e| e.into_inner());
                        complete(&served, &body, chat, id)
                    }
                    _ => Err((400, "request body must be a JSON object".to_string())),
                })
        }
        (_, "/v1/models" | "/v1/completions" | "/v1/chat/completions") => {
            Err((405, format!("{} is not allowed here", request.method)))
        }
        (_, path) => Err((404, format!("no route for {path}"))),
    };
    match result {
        Ok(value) => Response::json(200, &value),
        Err((status, message)) => error_response(status, &message),
    }
}

type Answer<T> = std::result::Result<T, (u16, String)>;

fn bad(message: impl Into<String>) -> (u16, String) {
    (400, message.into())
}

fn internal(err: impl std::fmt::Display) -> (u16, String) {
    (500, err.to_string())
}

/// Parsed sampling fields shared by both endpoints.
struct Sampling {
    config: GenerationConfig,
    top_logprobs: Option<usize>,
}

fn number_field(body: &Map<String, Value>, field: &str) -> Answer<Option<f64>> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_f64()
            .map(Some)
            .ok_or_else(|| bad(format!("`{field}` must be a number"))),
    }
}

fn count_field(body: &Map<String, Value>, field: &str) -> Answer<Option<usize>> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(|n| Some(n as usize))
            .ok_or_else(|| bad(format!("`{field}` must be a non-negative integer"))),
    }
}

fn string_list(value: Option<&Value>, field: &str) -> Answer<Vec<String>> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![text.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("`{field}` must hold strings")))
            })
            .collect(),
        Some(_) => Err(bad(format!(
            "`{field}` must be a string or a list of strings"
        ))),
    }
}

fn parse_sampling(body: &Map<String, Value>, chat: bool) -> Answer<Sampling> {
    if count_field(body, "n")?.is_some_and(|n| n != 1) {
        return Err(bad("only n = 1 is supported"));
    }
    if body.get("echo").and_then(Value::as_bool) == Some(true) {
        return Err(bad("echo is not supported"));
    }
    let top_logprobs = if chat {
        match body.get("logprobs") {
            Some(Value::Bool(true)) => Some(count_field(body, "top_logprobs")?.unwrap_or(0)),
            None | Some(Value::Null) | Some(Value::Bool(false)) => None,
            Some(_) => return Err(bad("`logprobs` must be true or false")),
        }
    } else {
        count_field(body, "logprobs")?
    };
    if top_logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
        return Err(bad(format!(
            "at most {MAX_TOP_LOGPROBS} alternatives per token"
        )));
    }
    let max_tokens = count_field(body, "max_completion_tokens")?
        .or(count_field(body, "max_tokens")?)
        .unwrap_or(16);
    let config = GenerationConfig {
        max_new_tokens: max_tokens,
        temperature: number_field(body, "temperature")?.unwrap_or(1.0),
        top_k: None,
        top_p: number_field(body, "top_p")?.filter(|&p| p < 1.0),
        seed: count_field(body, "seed")?.unwrap_or(0) as u64,
        stop_strings: string_list(body.get("stop"), "stop")?,
        stop_at_eos: true,
    };
    config.validate().map_err(|err| bad(err.to_string()))?;
    Ok(Sampling {
        config,
        top_logprobs,
    })
}

/// The text of a chat message's `content`: a string, or a list of `{"type": "text"}` parts.
fn message_text(content: &Value) -> Answer<String> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(|part| {
                part.get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("only text message parts are supported"))
            })
            .collect(),
        _ => Err(bad("message `content` must be a string or a list of parts")),
    }
}

/// Chat messages as dialogue turns; system messages are put before the first user message, since
/// the HH format has no system turn.
fn chat_turns(body: &Map<String, Value>) -> Answer<Vec<Turn>> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("`messages` must be a list"))?;
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for message in messages {
        let text = message_text(message.get("content").unwrap_or(&Value::Null))?;
        match message.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => system.push(text),
            Some("user") => {
                let text = if turns.is_empty() && !system.is_empty() {
                    format!("{}\n\n{text}", system.join("\n\n"))
                } else {
                    text
                };
                turns.push(Turn::user(text));
            }
            Some("assistant") => turns.push(Turn::assistant(text)),
            other => return Err(bad(format!("unsupported message role {other:?}"))),
        }
    }
    Ok(turns)
}

/// The `k` most likely tokens of a log-prob row, most likely first.
fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut indexed: Vec<(u32, f32)> = row
        .iter()
        .enumerate()
        .map(|(id, &lp)| (id as u32, lp))
        .collect();
    let k = k.min(indexed.len());
    if k == 0 {
        return Vec::new();
    }
    indexed.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
    indexed.truncate(k);
    indexed.sort_by(|a, b| b.1.total_cmp(&a.1));
    indexed
}

/// A generated token's log-prob and the most likely `(id, log-prob)` alternatives at its position.
type TokenAlternatives = (f32, Vec<(u32, f32)>);

/// Per generated token: its log-prob and the `k` most likely alternatives at its position, from one
/// teacher-forced pass over the prompt and the generated tokens.
fn token_alternatives(
    served: &ServedModel,
    prompt: &[u32],
    generated: &[u32],
    k: usize,
) -> rlxf_model::Result<Vec<TokenAlternatives>> {
    if generated.is_empty() {
        return Ok(Vec::new());
    }
    let model = &served.model;
    let sequence: Vec<u32> = prompt
        .iter()
        .chain(&generated[..generated.len() - 1])
        .copied()
        .collect();
    let length = sequence.len();
    let input = Tensor::from_vec(sequence, (1, length), model.device())?;
    let hidden = model.hidden_states(&input, None, None)?;
    let predicting = hidden.narrow(1, prompt.len() - 1, generated.len())?;
    let logits = model
        .logits_from_hidden(&predicting)?
        .to_dtype(DType::F32)?;
    let rows = candle_nn::ops::log_softmax(&logits, D::Minus1)?
        .squeeze(0)?
        .to_vec2::<f32>()?;
    // A model's vocabulary may be padded past the tokenizer's (ids without text): only ids the
    // tokenizer names can be listed, by text, as alternatives.
    let named = served.tokenizer.max_token_id() as usize + 1;
    Ok(rows
        .iter()
        .zip(generated)
        .map(|(row, &token)| (row[token as usize], top_k(&row[..named.min(row.len())], k)))
        .collect())
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Eos | FinishReason::StopString => "stop",
        FinishReason::MaxNewTokens | FinishReason::ContextFull => "length",
    }
}

/// Completions `logprobs` object of one generation.
fn completion_logprobs(
    tokenizer: &Tokenizer,
    token_ids: &[u32],
    alternatives: Vec<TokenAlternatives>,
) -> Answer<Value> {
    let text = |id: u32| tokenizer.token_text(id).map_err(internal);
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top_logprobs = Vec::new();
    let mut text_offset = Vec::new();
    let mut offset = 0;
    for (&id, (logprob, top)) in token_ids.iter().zip(alternatives) {
        let token = text(id)?;
        text_offset.push(offset);
        offset += token.len();
        tokens.push(token);
        token_logprobs.push(logprob);
        let mut listed = Map::new();
        for (alt, lp) in top {
            // Two ids can decode to the same text (partial UTF-8); keep the likelier one.
            listed.entry(text(alt)?).or_insert(json!(lp));
        }
        top_logprobs.push(Value::Object(listed));
    }
    Ok(json!({
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    }))
}

/// Chat `logprobs` object of one generation.
fn chat_logprobs(
    tokenizer: &Tokenizer,
    token_ids: &[u32],
    alternatives: Vec<TokenAlternatives>,
) -> Answer<Value> {
    let entry = |id: u32, logprob: f32| -> Answer<Value> {
        let token = tokenizer.token_text(id).map_err(internal)?;
        let bytes: Vec<u8> = token.as_bytes().to_vec();
        Ok(json!({"token": token, "logprob": logprob, "bytes": bytes}))
    };
    let content = token_ids
        .iter()
        .zip(alternatives)
        .map(|(&id, (logprob, top))| {
            let mut item = entry(id, logprob)?;
            item["top_logprobs"] = Value::Array(
                top.into_iter()
                    .map(|(alt, lp)| entry(alt, lp))
                    .collect::<Answer<_>>()?,
            );
            Ok(item)
        })
        .collect::<Answer<Vec<Value>>>()?;
    Ok(json!({"content": content}))
}

fn complete(
    served: &ServedModel,
    body: &Map<String, Value>,
    chat: bool,
    id: usize,
) -> Answer<Value> {
    let mut sampling = parse_sampling(body, chat)?;
    let prompts: Vec<String> = if chat {
        let turns = chat_turns(body)?;
        if turns.last().map(|turn| turn.role) != Some(Role::User) {
            return Err(bad("the last message must come from the user"));
        }
        sampling
            .config
            .stop_strings
            .extend(served.template.stop_strings());
        vec![served
            .template
            .format_prompt(&turns)
            .map_err(|err| bad(err.to_string()))?]
    } else {
        let prompts = string_list(body.get("prompt"), "prompt")?;
        if prompts.is_empty() {
            return Err(bad("`prompt` is required"));
        }
        prompts
    };
    let max_context = served.model.max_context();
    let encoded: Vec<Vec<u32>> = prompts
        .iter()
        .map(|prompt| served.tokenizer.encode(prompt).map_err(internal))
        .collect::<Answer<_>>()?;
    for ids in &encoded {
        if ids.is_empty() {
            return Err(bad("a prompt must contain at least one token"));
        }
        if ids.len() >= max_context {
            return Err(bad(format!(
                "the prompt has {} tokens; this model's context is {max_context} tokens",
                ids.len()
            )));
        }
    }
    let keys: Vec<u64> = (0..encoded.len() as u64).collect();
    let generations = generate_keyed(
        &served.model,
        &served.tokenizer,
        &encoded,
        &keys,
        &sampling.config,
    )
    .map_err(internal)?;
    let mut choices = Vec::new();
    let mut completion_tokens = 0;
    for (index, (prompt, generation)) in encoded.iter().zip(&generations).enumerate() {
        completion_tokens += generation.token_ids.len();
        let logprobs = match sampling.top_logprobs {
            Some(k) => {
                let tokens = &generation.token_ids;
                let alternatives =
                    token_alternatives(served, prompt, tokens, k).map_err(internal)?;
                if chat {
                    chat_logprobs(&served.tokenizer, tokens, alternatives)?
                } else {
                    completion_logprobs(&served.tokenizer, tokens, alternatives)?
                }
            }
            None => Value::Null,
        };
        let mut choice = json!({
            "index": index,
            "logprobs": logprobs,
            "finish_reason": finish_reason(generation.finish_reason),
        });
        if chat {
            let reply = served.template.reply_text(&generation.text);
            choice["message"] = json!({"role": "assistant", "content": reply});
        } else {
            choice["text"] = json!(generation.text);
        }
        choices.push(choice);
    }
    let prompt_tokens: usize = encoded.iter().map(Vec::len).sum();
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    Ok(json!({
        "id": format!("{}-{id}", if chat { "chatcmpl" } else { "cmpl" }),
        "object": if chat { "chat.completion" } else { "text_completion" },
        "created": created,
        "model": served.name,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_plans_parse_and_cycle() {
        let plan: FaultPlan = "ok, 429,500,slow:250,malformed,drop".parse().unwrap();
        assert_eq!(plan.fault(0), Fault::None);
        assert_eq!(plan.fault(1), Fault::TooManyRequests);
        assert_eq!(plan.fault(3), Fault::Slow(Duration::from_millis(250)));
        assert_eq!(plan.fault(5), Fault::Drop);
        assert_eq!(plan.fault(6), Fault::None);
        assert!("ok,teapot".parse::<FaultPlan>().unwrap_err().is_bad_input());
        assert_eq!(FaultPlan::default().fault(3), Fault::None);
    }

    #[test]
    fn top_k_orders_the_most_likely_first() {
        let row = [-3.0, -0.5, -2.0, -0.1, -9.0];
        assert_eq!(top_k(&row, 3), vec![(3, -0.1), (1, -0.5), (2, -2.0)]);
        assert_eq!(top_k(&row, 0), vec![]);
        assert_eq!(top_k(&row, 10).len(), 5);
    }

    #[test]
    fn system_messages_join_the_first_user_turn() {
        let body = json!({"messages": [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        ]});
        let turns = chat_turns(body.as_object().unwrap()).unwrap();
        assert_eq!(turns, vec![Turn::user("Be kind.\n\nHi")]);
    }
}
