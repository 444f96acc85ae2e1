//! Import of llama.cpp GGUF files (Llama architecture, byte-level BPE tokenizer) into a Hugging Face
//! model directory rlxf can train: `config.json`, `model.safetensors` (every tensor dequantized to
//! f32), `tokenizer.json` and `tokenizer_config.json` (with the chat template).
//!
//! Three things llama.cpp's converter (`convert_hf_to_gguf.py`) changes have to be undone:
//! - tensor names (`blk.N.attn_q.weight` for `model.layers.N.self_attn.q_proj.weight`, ...);
//! - the rows of `q_proj` and `k_proj`, permuted per head so GGML's interleaved rotary embedding
//!   computes what HF's `rotate_half` form computes on the original rows;
//! - the tokenizer, stored as metadata (`tokenizer.ggml.tokens`/`merges`/`token_type`, special
//!   token ids, and `tokenizer.ggml.pre` naming the pre-tokenizer rules, which are rebuilt here).

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value as GgufValue};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Map, Value};

use crate::config::{LlamaConfig, ModelConfig, RopeParameters};
use crate::error::{ModelError, Result};
use crate::loading::parameter_spec;
use crate::weights;

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// What [`import_gguf`] wrote.
#[derive(Debug, Clone)]
pub struct GgufImport {
    pub config: LlamaConfig,
    /// Number of tensors of each GGML type in the file (e.g. `Q4_1: 210`).
    pub tensor_types: Vec<(String, usize)>,
    pub vocab_size: usize,
    /// `tokenizer.chat_template`, when the file has one.
    pub chat_template: Option<String>,
}

/// Converts the GGUF file at `gguf_path` into a Hugging Face model directory `out_dir` (created if
/// needed; each file written atomically). Only `general.architecture = llama` with a byte-level
/// BPE tokenizer (`tokenizer.ggml.model = gpt2`) is supported.
pub fn import_gguf(gguf_path: &Path, out_dir: &Path) -> Result<GgufImport> {
    let file = File::open(gguf_path).map_err(|source| ModelError::Io {
        path: gguf_path.to_path_buf(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|err| ModelError::UnreadableWeights {
        path: gguf_path.to_path_buf(),
        reason: err.to_string(),
    })?;
    let meta = Metadata {
        path: gguf_path,
        values: &content.metadata,
    };
    let architecture = meta.string("general.architecture")?;
    if architecture != "llama" {
        return Err(meta.invalid(
            "general.architecture",
            format!("`{architecture}` is not supported (only llama)"),
        ));
    }
    let tokenizer = GgufTokenizer::read(&meta)?;
    let has_output = content.tensor_infos.contains_key("output.weight");
    let config = llama_config(&meta, tokenizer.tokens.len(), !has_output)?;
    let tensors = read_tensors(&content, &mut reader, gguf_path, &config)?;

    // Check the tensors against exactly what the model will read before writing anything.
    let model_config = ModelConfig::Llama(config.clone());
    let spec = parameter_spec(&model_config)?;
    let tensors = weights::select_parameters(gguf_path, &tensors, &spec, DType::F32)?;

    std::fs::create_dir_all(out_dir).map_err(|source| ModelError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let config_json = model_config.to_json(model_config.causal_lm_class(), "float32");
    write_json(&out_dir.join("config.json"), &config_json)?;
    write_json(
        &out_dir.join("tokenizer.json"),
        &tokenizer.tokenizer_json()?,
    )?;
    write_json(
        &out_dir.join("tokenizer_config.json"),
        &tokenizer.tokenizer_config_json(config.max_position_embeddings),
    )?;
    weights::save_safetensors(&out_dir.join(weights::SAFETENSORS_FILE), &tensors)?;

    let mut tensor_types: HashMap<String, usize> = HashMap::new();
    for info in content.tensor_infos.values() {
        *tensor_types
            .entry(format!("{:?}", info.ggml_dtype))
            .or_default() += 1;
    }
    let mut tensor_types: Vec<(String, usize)> = tensor_types.into_iter().collect();
    tensor_types.sort();
    Ok(GgufImport {
        config,
        tensor_types,
        vocab_size: tokenizer.tokens.len(),
        chat_template: tokenizer.chat_template,
    })
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    weights::write_atomic(path, text.as_bytes())
}

/// Typed access to the metadata, with errors naming the file and key.
struct Metadata<'a> {
    path: &'a Path,
    values: &'a HashMap<String, GgufValue>,
}

impl Metadata<'_> {
    fn invalid(&self, key: &str, reason: String) -> ModelError {
        ModelError::InvalidGguf {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            reason,
        }
    }

    fn get(&self, key: &str) -> Result<&GgufValue> {
        self.values
            .get(key)
            .ok_or_else(|| self.invalid(key, "missing".into()))
    }

    fn string(&self, key: &str) -> Result<String> {
        match self.get(key)? {
            GgufValue::String(text) => Ok(text.clone()),
            other => Err(self.invalid(key, format!("expected a string, found {other:?}"))),
        }
    }

    fn optional_string(&self, key: &str) -> Result<Option<String>> {
        match self.values.contains_key(key) {
            true => self.string(key).map(Some),
            false => Ok(None),
        }
    }

    fn integer(&self, key: &str) -> Result<i64> {
        integer_value(self.get(key)?).ok_or_else(|| self.invalid(key, "expected an integer".into()))
    }

    fn optional_integer(&self, key: &str) -> Result<Option<i64>> {
        match self.values.contains_key(key) {
            true => self.integer(key).map(Some),
            false => Ok(None),
        }
    }

    fn count(&self, key: &str) -> Result<usize> {
        let value = self.integer(key)?;
        usize::try_from(value)
            .ok()
            .filter(|&count| count > 0)
            .ok_or_else(|| self.invalid(key, format!("expected a positive count, found {value}")))
    }

    fn optional_float(&self, key: &str) -> Result<Option<f64>> {
        match self.values.get(key) {
            None => Ok(None),
            Some(GgufValue::F32(value)) => Ok(Some(f64::from(*value))),
            Some(GgufValue::F64(value)) => Ok(Some(*value)),
            Some(other) => Err(self.invalid(key, format!("expected a float, found {other:?}"))),
        }
    }

    fn array(&self, key: &str) -> Result<&Vec<GgufValue>> {
        match self.get(key)? {
            GgufValue::Array(items) => Ok(items),
            other => Err(self.invalid(key, format!("expected an array, found {other:?}"))),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>> {
        self.array(key)?
            .iter()
            .enumerate()
            .map(|(index, item)| match item {
                GgufValue::String(text) => Ok(text.clone()),
                other => Err(self.invalid(
                    key,
                    format!("entry {index}: expected a string, found {other:?}"),
                )),
            })
            .collect()
    }
}

fn integer_value(value: &GgufValue) -> Option<i64> {
    Some(match value {
        GgufValue::U8(v) => i64::from(*v),
        GgufValue::I8(v) => i64::from(*v),
        GgufValue::U16(v) => i64::from(*v),
        GgufValue::I16(v) => i64::from(*v),
        GgufValue::U32(v) => i64::from(*v),
        GgufValue::I32(v) => i64::from(*v),
        GgufValue::U64(v) => i64::try_from(*v).ok()?,
        GgufValue::I64(v) => *v,
        _ => return None,
    })
}

/// The HF config of the model described by the `llama.*` metadata keys.
fn llama_config(meta: &Metadata, vocab_size: usize, tied: bool) -> Result<LlamaConfig> {
    let hidden = meta.count("llama.embedding_length")?;
    let heads = meta.count("llama.attention.head_count")?;
    let head_dim = match meta.optional_integer("llama.attention.key_length")? {
        Some(_) => Some(meta.count("llama.attention.key_length")?),
        None => None,
    };
    if let Some(scaling) = meta.optional_string("llama.rope.scaling.type")? {
        if scaling != "none" {
            return Err(meta.invalid(
                "llama.rope.scaling.type",
                format!("`{scaling}` is not supported (only unscaled RoPE)"),
            ));
        }
    }
    let theta = meta
        .optional_float("llama.rope.freq_base")?
        .unwrap_or(10000.0);
    let kv_heads = match meta.optional_integer("llama.attention.head_count_kv")? {
        Some(_) => meta.count("llama.attention.head_count_kv")?,
        None => heads,
    };
    let mut extra = Map::new();
    for (hf_key, gguf_key) in [
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("pad_token_id", "tokenizer.ggml.padding_token_id"),
    ] {
        if let Some(id) = meta.optional_integer(gguf_key)? {
            extra.insert(hf_key.into(), id.into());
        }
    }
    let config = LlamaConfig {
        vocab_size,
        hidden_size: hidden,
        intermediate_size: meta.count("llama.feed_forward_length")?,
        num_hidden_layers: meta.count("llama.block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: Some(kv_heads),
        // Only written when it differs from HF's default, as HF does.
        head_dim: head_dim.filter(|&dim| dim != hidden / heads),
        hidden_act: "silu".into(),
        max_position_embeddings: meta.count("llama.context_length")?,
        initializer_range: 0.02,
        rms_norm_eps: meta
            .optional_float("llama.attention.layer_norm_rms_epsilon")?
            .unwrap_or(1e-6),
        tie_word_embeddings: tied,
        rope_theta: Some(theta),
        rope_parameters: Some(RopeParameters::with_theta(theta)),
        rope_scaling: None,
        attention_bias: false,
        mlp_bias: false,
        extra,
    };
    // The same checks a config.json gets, reported against the GGUF file.
    let text = ModelConfig::Llama(config.clone())
        .to_json("LlamaForCausalLM", "float32")
        .to_string();
    ModelConfig::parse(&text, meta.path)?;
    Ok(config)
}

/// The HF name of a llama.cpp tensor, and the number of heads whose rows llama.cpp permuted
/// (`Some` for `attn_q` and `attn_k`).
fn hf_tensor_name(name: &str, config: &LlamaConfig) -> Option<(String, Option<usize>)> {
    let global = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(hf) = global {
        return Some((hf.to_string(), None));
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (hf_suffix, permuted_heads) = match suffix {
        "attn_norm.weight" => ("input_layernorm.weight", None),
        "attn_q.weight" => ("self_attn.q_proj.weight", Some(config.num_attention_heads)),
        "attn_k.weight" => ("self_attn.k_proj.weight", Some(config.kv_heads())),
        "attn_v.weight" => ("self_attn.v_proj.weight", None),
        "attn_output.weight" => ("self_attn.o_proj.weight", None),
        "ffn_norm.weight" => ("post_attention_layernorm.weight", None),
        "ffn_gate.weight" => ("mlp.gate_proj.weight", None),
        "ffn_up.weight" => ("mlp.up_proj.weight", None),
        "ffn_down.weight" => ("mlp.down_proj.weight", None),
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{hf_suffix}"), permuted_heads))
}

/// Every tensor of the file, dequantized to f32, under its HF name and with q/k rows restored.
fn read_tensors(
    content: &Content,
    reader: &mut BufReader<File>,
    path: &Path,
    config: &LlamaConfig,
) -> Result<HashMap<String, Tensor>> {
    let device = Device::Cpu;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = HashMap::with_capacity(names.len());
    for name in names {
        let (hf_name, permuted_heads) =
            hf_tensor_name(name, config).ok_or_else(|| ModelError::InvalidGguf {
                path: path.to_path_buf(),
                key: name.clone(),
                reason: "tensor not part of the Llama architecture rlxf supports".into(),
            })?;
        let unreadable = |err: candle_core::Error| ModelError::UnreadableWeights {
            path: path.to_path_buf(),
            reason: format!("tensor `{name}`: {err}"),
        };
        let tensor = content
            .tensor(reader, name, &device)
            .and_then(|quantized| quantized.dequantize(&device))
            .map_err(unreadable)?;
        let tensor = match permuted_heads {
            Some(heads) => unpermute_rotary_rows(&tensor, heads).map_err(unreadable)?,
            None => tensor,
        };
        tensors.insert(hf_name, tensor);
    }
    Ok(tensors)
}

/// Inverse of llama.cpp's `permute`, which reorders each head's rows from HF's halves layout
/// (`[x_0 .. x_{d/2-1}, y_0 .. y_{d/2-1}]`) to interleaved pairs (`[x_0, y_0, x_1, y_1, ..]`).
fn unpermute_rotary_rows(weight: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = weight.dims2()?;
    let half = rows / heads / 2;
    weight
        .reshape((heads, half, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

/// The tokenizer described by the `tokenizer.*` metadata.
struct GgufTokenizer {
    tokens: Vec<String>,
    token_types: Vec<i64>,
    merges: Vec<String>,
    pre_tokenizer: Value,
    bos_id: Option<usize>,
    eos_id: Option<usize>,
    unk_id: Option<usize>,
    pad_id: Option<usize>,
    add_bos: bool,
    chat_template: Option<String>,
}

impl GgufTokenizer {
    fn read(meta: &Metadata) -> Result<Self> {
        let model = meta.string("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(meta.invalid(
                "tokenizer.ggml.model",
                format!("`{model}` is not supported (only byte-level BPE, `gpt2`)"),
            ));
        }
        let tokens = meta.strings("tokenizer.ggml.tokens")?;
        let token_types = match meta.values.contains_key("tokenizer.ggml.token_type") {
            true => meta
                .array("tokenizer.ggml.token_type")?
                .iter()
                .map(|value| {
                    integer_value(value).ok_or_else(|| {
                        meta.invalid("tokenizer.ggml.token_type", "expected integers".into())
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            false => vec![1; tokens.len()],
        };
        if token_types.len() != tokens.len() {
            return Err(meta.invalid(
                "tokenizer.ggml.token_type",
                format!("{} entries for {} tokens", token_types.len(), tokens.len()),
            ));
        }
        let pre = meta
            .optional_string("tokenizer.ggml.pre")?
            .unwrap_or_else(|| "gpt-2".into());
        let pre_tokenizer = pre_tokenizer_for(&pre).ok_or_else(|| {
            meta.invalid(
                "tokenizer.ggml.pre",
                format!(
                    "`{pre}` is not supported (supported: {})",
                    SUPPORTED_PRE_TOKENIZERS.join(", ")
                ),
            )
        })?;
        let token_id = |key: &str| -> Result<Option<usize>> {
            let Some(id) = meta.optional_integer(key)? else {
                return Ok(None);
            };
            match usize::try_from(id).ok().filter(|&id| id < tokens.len()) {
                Some(id) => Ok(Some(id)),
                None => Err(meta.invalid(
                    key,
                    format!(
                        "token id {id} is outside the vocabulary of {}",
                        tokens.len()
                    ),
                )),
            }
        };
        let add_bos = match meta.values.get("tokenizer.ggml.add_bos_token") {
            Some(GgufValue::Bool(add)) => *add,
            _ => false,
        };
        Ok(Self {
            merges: meta.strings("tokenizer.ggml.merges")?,
            bos_id: token_id("tokenizer.ggml.bos_token_id")?,
            eos_id: token_id("tokenizer.ggml.eos_token_id")?,
            unk_id: token_id("tokenizer.ggml.unknown_token_id")?,
            pad_id: token_id("tokenizer.ggml.padding_token_id")?,
            chat_template: meta.optional_string("tokenizer.chat_template")?,
            tokens,
            token_types,
            pre_tokenizer,
            add_bos,
        })
    }

    /// The HF `tokenizer.json`: byte-level BPE over the GGUF vocabulary and merges, control and
    /// user-defined tokens as added tokens (matched in text before BPE), the pre-tokenizer that
    /// `tokenizer.ggml.pre` names.
    fn tokenizer_json(&self) -> Result<Value> {
        let vocab: Map<String, Value> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.clone(), json!(id)))
            .collect();
        let merges = self
            .merges
            .iter()
            .map(|merge| {
                // Byte-level tokens never contain a space (it is `Ġ`), so the split is unambiguous.
                let (left, right) = merge.split_once(' ').ok_or_else(|| {
                    ModelError::InvalidInput(format!(
                        "GGUF merge `{merge}` is not two tokens separated by a space"
                    ))
                })?;
                Ok(json!([left, right]))
            })
            .collect::<Result<Vec<_>>>()?;
        let added_tokens: Vec<Value> = self
            .tokens
            .iter()
            .zip(&self.token_types)
            .enumerate()
            .filter(|(_, (_, &kind))| kind == TOKEN_TYPE_CONTROL || kind == TOKEN_TYPE_USER_DEFINED)
            .map(|(id, (token, &kind))| {
                json!({
                    "id": id, "content": token, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": kind == TOKEN_TYPE_CONTROL
                })
            })
            .collect();
        let byte_level = |add_prefix_space: bool, trim_offsets: bool| {
            json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space,
                   "trim_offsets": trim_offsets, "use_regex": true})
        };
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added_tokens,
            "normalizer": null,
            "pre_tokenizer": self.pre_tokenizer,
            "post_processor": byte_level(true, false),
            "decoder": byte_level(true, true),
            "model": {
                "type": "BPE", "dropout": null, "unk_token": self.token_text(self.unk_id),
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges
            }
        }))
    }

    /// `tokenizer_config.json`: special tokens and the chat template, for `AutoTokenizer`.
    fn tokenizer_config_json(&self, max_length: usize) -> Value {
        let mut config = json!({
            // Not GPT2Tokenizer: transformers 5 rebuilds that one with GPT-2's own pre-tokenizer,
            // losing rules such as SmolLM2's digit splitting; this class uses tokenizer.json as is.
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_prefix_space": false,
            "add_bos_token": self.add_bos,
            "clean_up_tokenization_spaces": false,
            "model_max_length": max_length,
            "bos_token": self.token_text(self.bos_id),
            "eos_token": self.token_text(self.eos_id),
            "unk_token": self.token_text(self.unk_id),
            "pad_token": self.token_text(self.pad_id),
        });
        if let Some(template) = &self.chat_template {
            config["chat_template"] = template.clone().into();
        }
        config
    }

    fn token_text(&self, id: Option<usize>) -> Value {
        id.map_or(Value::Null, |id| self.tokens[id].clone().into())
    }
}

/// llama.cpp pre-tokenizer names (`tokenizer.ggml.pre`) this importer can rebuild.
pub const SUPPORTED_PRE_TOKENIZERS: [&str; 4] = ["gpt-2", "gpt2", "smollm", "starcoder"];

/// The HF pre-tokenizer equivalent to llama.cpp's rules for `pre`.
fn pre_tokenizer_for(pre: &str) -> Option<Value> {
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                            "use_regex": true});
    match pre {
        "gpt-2" | "gpt2" => Some(byte_level),
        // llama.cpp splits `\p{N}` one character at a time before GPT-2's regex: HF's
        // `Digits(individual_digits)` (the tokenizer.json SmolLM2 and StarCoder ship).
        "smollm" | "starcoder" => Some(json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]
        })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // Two heads of head_dim 4, 3 input columns: llama.cpp's permute maps row order
        // [0 1 2 3 | 4 5 6 7] to [0 2 1 3 | 4 6 5 7].
        let original: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let permuted_rows = [0usize, 2, 1, 3, 4, 6, 5, 7];
        let permuted: Vec<f32> = permuted_rows
            .iter()
            .flat_map(|&row| original[row * 3..row * 3 + 3].to_vec())
            .collect();
        let tensor = Tensor::from_vec(permuted, (8, 3), &Device::Cpu).unwrap();
        let restored = unpermute_rotary_rows(&tensor, 2).unwrap();
        assert_eq!(
            restored.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            original
        );
    }

    #[test]
    fn names_map_to_hf_and_unknown_ones_are_refused() {
        let config = LlamaConfig::smollm2_135m();
        assert_eq!(
            hf_tensor_name("blk.12.attn_k.weight", &config),
            Some(("model.layers.12.self_attn.k_proj.weight".into(), Some(3)))
        );
        assert_eq!(
            hf_tensor_name("blk.0.attn_q.weight", &config),
            Some(("model.layers.0.self_attn.q_proj.weight".into(), Some(9)))
        );
        assert_eq!(
            hf_tensor_name("output.weight", &config),
            Some(("lm_head.weight".into(), None))
        );
        assert_eq!(hf_tensor_name("rope_freqs.weight", &config), None);
        assert_eq!(hf_tensor_name("blk.x.attn_q.weight", &config), None);
    }

    #[test]
    fn unknown_pre_tokenizers_are_refused() {
        assert!(pre_tokenizer_for("smollm").is_some());
        assert!(pre_tokenizer_for("llama-bpe").is_none());
    }
}
