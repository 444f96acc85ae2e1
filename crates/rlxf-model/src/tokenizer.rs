//! Tokenizers: the GPT-2 byte-level BPE that GPT-Neo and GPT-2 use (embedded, no download), and any
//! Hugging Face `tokenizer.json`.
//!
//! [`Tokenizer::encode`] never adds BOS/EOS: where EOS goes is decided in one place, the dialogue
//! template ([`crate::chat`]), so the tokenizer stays a pure text <-> ids map.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use tiktoken_rs::CoreBPE;

use crate::{ModelError, Result};

/// `<|endoftext|>`, GPT-2's only special token: its end-of-sequence marker, which GPT-Neo also uses
/// for padding.
pub const GPT2_EOS_ID: u32 = 50256;
/// 50,000 merges + 256 byte tokens + `<|endoftext|>`.
pub const GPT2_VOCAB_SIZE: usize = 50257;
const GPT2_EOS_TEXT: &str = "<|endoftext|>";

/// End-of-sequence strings tried, in order, when a `tokenizer.json` comes without a config naming the
/// EOS id (GPT-2 family, Llama/Mistral, ChatML models such as SmolLM2, Gemma).
const KNOWN_EOS_TOKENS: [&str; 4] = ["<|endoftext|>", "</s>", "<|im_end|>", "<eos>"];

enum Backend {
    /// tiktoken's `r50k_base` is exactly GPT-2's rank table (rank = GPT-2 token id).
    Gpt2(&'static CoreBPE),
    HuggingFace(Box<tokenizers::Tokenizer>),
}

/// Text to token ids and back, plus the ids of the special tokens generation and padding need.
pub struct Tokenizer {
    backend: Backend,
    eos_id: u32,
    pad_id: u32,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.backend {
            Backend::Gpt2(_) => "gpt2-bpe",
            Backend::HuggingFace(_) => "tokenizer.json",
        };
        f.debug_struct("Tokenizer")
            .field("kind", &kind)
            .field("vocab_size", &self.vocab_size())
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

impl Tokenizer {
    /// The GPT-2 byte-level BPE (GPT-2, GPT-Neo), built in.
    pub fn gpt2() -> Self {
        Self {
            backend: Backend::Gpt2(tiktoken_rs::r50k_base_singleton()),
            eos_id: GPT2_EOS_ID,
            pad_id: GPT2_EOS_ID,
        }
    }

    /// A Hugging Face `tokenizer.json`. `eos_id` falls back to the first of the usual EOS strings
    /// found in the vocabulary; `pad_id` falls back to the EOS id (what GPT-style models do).
    pub fn from_hf_file(path: &Path, eos_id: Option<u32>, pad_id: Option<u32>) -> Result<Self> {
        let inner =
            tokenizers::Tokenizer::from_file(path).map_err(|err| ModelError::TokenizerLoad {
                path: path.to_path_buf(),
                message: err.to_string(),
            })?;
        let eos_id = match eos_id {
            Some(id) => id,
            None => KNOWN_EOS_TOKENS
                .iter()
                .find_map(|token| inner.token_to_id(token))
                .ok_or_else(|| ModelError::TokenizerLoad {
                    path: path.to_path_buf(),
                    message: format!(
                        "cannot tell the end-of-sequence token: none of {KNOWN_EOS_TOKENS:?} is in \
                         the vocabulary and config.json has no eos_token_id"
                    ),
                })?,
        };
        Ok(Self {
            backend: Backend::HuggingFace(Box::new(inner)),
            eos_id,
            pad_id: pad_id.unwrap_or(eos_id),
        })
    }

    /// Token ids of `text`, with no special tokens added. The GPT-2 BPE encodes the text
    /// `<|endoftext|>` as ordinary characters (user data cannot inject an EOS); a `tokenizer.json`
    /// matches its added tokens in the text, as the `tokenizers` library always does, which is what
    /// templates that spell their special tokens (ChatML's `<|im_start|>`) rely on.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.backend {
            Backend::Gpt2(bpe) => Ok(bpe.encode_ordinary(text)),
            Backend::HuggingFace(inner) => inner
                .encode(text, false)
                .map(|encoding| encoding.get_ids().to_vec())
                .map_err(|err| ModelError::Encode(err.to_string())),
        }
    }

    /// Text of `ids`, special tokens included as their text. Byte sequences cut in the middle of a
    /// UTF-8 character (a generation stopped mid-character) decode to U+FFFD rather than failing.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.backend {
            Backend::Gpt2(bpe) => {
                let bytes = bpe
                    .decode_bytes(ids)
                    .map_err(|err| ModelError::UnknownTokenId {
                        id: err.token,
                        vocab: GPT2_VOCAB_SIZE,
                    })?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Backend::HuggingFace(inner) => {
                let vocab = inner.get_vocab_size(true);
                if let Some(&id) = ids.iter().find(|&&id| inner.id_to_token(id).is_none()) {
                    return Err(ModelError::UnknownTokenId { id, vocab });
                }
                inner
                    .decode(ids, false)
                    .map_err(|err| ModelError::Encode(err.to_string()))
            }
        }
    }

    /// Text of a single token (e.g. `" Yes"`), as [`Tokenizer::decode`] gives it.
    pub fn token_text(&self, id: u32) -> Result<String> {
        self.decode(&[id])
    }

    /// The id of `text` when it is exactly one token (e.g. `" A"` for a labeler reading the
    /// probability of answer A), `None` when it encodes to zero or several tokens.
    pub fn single_token_id(&self, text: &str) -> Result<Option<u32>> {
        let ids = self.encode(text)?;
        Ok(match ids.as_slice() {
            [id] => Some(*id),
            _ => None,
        })
    }

    /// Number of ids the tokenizer can produce (added/special tokens included).
    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::Gpt2(_) => GPT2_VOCAB_SIZE,
            Backend::HuggingFace(inner) => inner.get_vocab_size(true),
        }
    }

    /// Largest id the tokenizer can produce: what must fit in the model's embedding table. Added
    /// tokens may sit above the base vocabulary, so this is not always `vocab_size() - 1`.
    pub fn max_token_id(&self) -> u32 {
        match &self.backend {
            Backend::Gpt2(_) => GPT2_EOS_ID,
            Backend::HuggingFace(inner) => inner.get_vocab(true).into_values().max().unwrap_or(0),
        }
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
}

/// The embedded GPT-2 BPE as a Hugging Face `tokenizer.json` (byte-level BPE, vocabulary and merges
/// rebuilt from the rank table), so model directories rlxf writes also load with Python's
/// `AutoTokenizer`. The merge that made token `r` is the pair BPE reaches when it encodes that
/// token's bytes with only the ranks below `r`.
pub fn gpt2_tokenizer_json() -> Value {
    let bpe = tiktoken_rs::r50k_base_singleton();
    let tokens: Vec<Vec<u8>> = (0..GPT2_EOS_ID)
        .map(|rank| {
            bpe.decode_bytes(&[rank])
                .expect("every rank below 50256 is a token")
        })
        .collect();
    let ranks: HashMap<&[u8], u32> = tokens
        .iter()
        .enumerate()
        .map(|(rank, token)| (token.as_slice(), rank as u32))
        .collect();
    let byte_chars = gpt2_byte_chars();
    let to_unicode =
        |bytes: &[u8]| -> String { bytes.iter().map(|&b| byte_chars[b as usize]).collect() };

    let mut vocab = Map::new();
    let mut merges = Vec::new();
    for (rank, token) in tokens.iter().enumerate() {
        vocab.insert(to_unicode(token), json!(rank));
        if token.len() >= 2 {
            let (left, right) = last_merge(token, rank as u32, &ranks);
            merges.push(json!(format!("{} {}", to_unicode(left), to_unicode(right))));
        }
    }
    vocab.insert(GPT2_EOS_TEXT.to_string(), json!(GPT2_EOS_ID));
    let byte_level = |add_prefix_space: bool, trim_offsets: bool| json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": trim_offsets, "use_regex": true});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{
            "id": GPT2_EOS_ID, "content": GPT2_EOS_TEXT, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": true, "special": true
        }],
        "normalizer": null,
        "pre_tokenizer": byte_level(false, true),
        "post_processor": byte_level(true, false),
        "decoder": byte_level(true, true),
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges
        }
    })
}

/// The `tokenizer_config.json` that tells `AutoTokenizer` GPT-2's special tokens.
pub fn gpt2_tokenizer_config_json() -> Value {
    json!({
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": GPT2_EOS_TEXT,
        "eos_token": GPT2_EOS_TEXT,
        "unk_token": GPT2_EOS_TEXT,
        "add_prefix_space": false,
        "model_max_length": 2048
    })
}

/// Writes `tokenizer.json` and `tokenizer_config.json` for the GPT-2 BPE into `dir` (atomically).
pub fn save_gpt2_tokenizer(dir: &Path) -> Result<()> {
    for (name, value) in [
        ("tokenizer.json", gpt2_tokenizer_json()),
        ("tokenizer_config.json", gpt2_tokenizer_config_json()),
    ] {
        let text = serde_json::to_string(&value).expect("JSON values always serialise");
        crate::weights::write_atomic(&dir.join(name), text.as_bytes())?;
    }
    Ok(())
}

/// The two tokens BPE merges last when it builds `token` (of rank `rank`) from its bytes.
fn last_merge<'a>(token: &'a [u8], rank: u32, ranks: &HashMap<&[u8], u32>) -> (&'a [u8], &'a [u8]) {
    // Part boundaries as byte offsets; merge the lowest-ranked adjacent pair until two parts remain.
    let mut bounds: Vec<usize> = (0..=token.len()).collect();
    while bounds.len() > 3 {
        let best = (0..bounds.len() - 2)
            .filter_map(|i| {
                let merged_rank = *ranks.get(&token[bounds[i]..bounds[i + 2]])?;
                (merged_rank < rank).then_some((merged_rank, i))
            })
            .min()
            .expect("GPT-2 tokens are built from lower-ranked merges");
        bounds.remove(best.1 + 1);
    }
    (&token[..bounds[1]], &token[bounds[1]..])
}

/// GPT-2's reversible byte-to-character table: printable Latin-1 bytes map to themselves, the
/// others to U+0100 onwards, so every byte sequence is a printable string.
fn gpt2_byte_chars() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut chars = ['\0'; 256];
    let mut next_unprintable = 256u32;
    for byte in 0..=255u8 {
        chars[byte as usize] = if printable(byte) {
            byte as char
        } else {
            next_unprintable += 1;
            char::from_u32(next_unprintable - 1).expect("U+0100..U+0143 are characters")
        };
    }
    chars
}

/// The tokenizer of the model in `model_dir`: its `tokenizer.json` when present, else the built-in
/// GPT-2 BPE when `config.json` says `gpt_neo` or `gpt2`. When `config.json` gives `vocab_size`, the
/// tokenizer's ids must fit in it (a mismatched tokenizer would index past the embedding table).
pub fn load_tokenizer(model_dir: &Path) -> Result<Tokenizer> {
    let config_path = model_dir.join("config.json");
    let config = read_json_file(&config_path)?;
    let tokenizer_path = model_dir.join("tokenizer.json");
    let tokenizer = if tokenizer_path.is_file() {
        let eos_id = config_token_id(config.as_ref(), &config_path, "eos_token_id")?;
        let pad_id = config_token_id(config.as_ref(), &config_path, "pad_token_id")?;
        Tokenizer::from_hf_file(&tokenizer_path, eos_id, pad_id)?
    } else {
        let model_type = config
            .as_ref()
            .and_then(|config| config.get("model_type"))
            .and_then(Value::as_str);
        match model_type {
            Some("gpt_neo" | "gpt2") => Tokenizer::gpt2(),
            Some(other) => {
                return Err(ModelError::NoTokenizer {
                    dir: model_dir.to_path_buf(),
                    detail: format!(" (config.json says model_type {other:?})"),
                })
            }
            None => {
                return Err(ModelError::NoTokenizer {
                    dir: model_dir.to_path_buf(),
                    detail: String::new(),
                })
            }
        }
    };
    if let Some(model_vocab) = config
        .as_ref()
        .and_then(|config| config.get("vocab_size"))
        .and_then(Value::as_u64)
    {
        check_fits_vocab(&tokenizer, model_vocab as usize, model_dir)?;
    }
    Ok(tokenizer)
}

/// Errors unless every id `tokenizer` can produce is below `model_vocab`.
pub fn check_fits_vocab(tokenizer: &Tokenizer, model_vocab: usize, model_dir: &Path) -> Result<()> {
    let max_token_id = tokenizer.max_token_id();
    if max_token_id as usize >= model_vocab {
        return Err(ModelError::TokenizerVocabMismatch {
            dir: model_dir.to_path_buf(),
            max_token_id,
            model_vocab,
        });
    }
    Ok(())
}

/// The JSON of a model directory's file (`config.json`, `tokenizer_config.json`), `None` when the
/// file does not exist.
pub(crate) fn read_json_file(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|err| config_error(path, "(file)", err.to_string()))
}

/// A token id field of config.json: an integer, or a list whose first entry is used (Llama 3 style
/// `eos_token_id: [..]`); `None` when absent or null.
fn config_token_id(config: Option<&Value>, path: &Path, field: &str) -> Result<Option<u32>> {
    let Some(value) = config.and_then(|config| config.get(field)) else {
        return Ok(None);
    };
    let first = match value {
        Value::Null => return Ok(None),
        Value::Array(items) => items.first().unwrap_or(&Value::Null),
        other => other,
    };
    match first.as_u64().and_then(|id| u32::try_from(id).ok()) {
        Some(id) => Ok(Some(id)),
        None if first.is_null() => Ok(None),
        None => Err(config_error(
            path,
            field,
            format!("expected a token id (non-negative integer), found {value}"),
        )),
    }
}

fn config_error(path: &Path, field: &str, message: String) -> ModelError {
    ModelError::InvalidConfig {
        path: PathBuf::from(path),
        field: field.to_string(),
        reason: message,
    }
}
