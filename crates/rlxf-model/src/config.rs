//! Model configurations, read from and written to Hugging Face `config.json` files.
//!
//! The structs mirror the HF field names and defaults (`GPTNeoConfig`, `GPT2Config`), so a config
//! saved by `transformers` loads here and a config saved here loads in `transformers`. Fields this
//! crate does not use (token ids, dropout rates, task-specific settings) are kept in `extra` and
//! written back unchanged.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{ModelError, Result};

/// The `model_type` values [`ModelConfig::read`] understands.
pub const SUPPORTED_MODEL_TYPES: [&str; 3] = ["gpt_neo", "gpt2", "llama"];

/// Fields `to_json` writes from the model itself rather than from the config struct.
const DERIVED_FIELDS: [&str; 5] = [
    "architectures",
    "model_type",
    "dtype",
    "torch_dtype",
    "attention_layers",
];

/// GPT-2's end-of-text token, also GPT-Neo's bos/eos token: used by the built-in size presets.
const GPT2_END_OF_TEXT: u32 = 50256;

/// Kind of attention of one GPT-Neo layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKind {
    /// Causal attention over every earlier position.
    Global,
    /// Causal attention over the last `window_size` positions (the query's own included).
    Local,
}

/// Activation of the MLP, named as in HF's `ACT2FN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation GPT-2 and GPT-Neo were trained with.
    GeluTanh,
    /// `gelu`: the exact erf form.
    GeluErf,
}

impl Activation {
    /// The activation of a validated config's `activation_function`.
    pub(crate) fn of_validated(name: &str) -> Self {
        Self::parse(name).expect("validated when the config was built")
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" => Some(Activation::GeluTanh),
            "gelu" => Some(Activation::GeluErf),
            _ => None,
        }
    }
}

/// HF `LlamaConfig` (Llama, SmolLM2, TinyLlama, ...): RMSNorm, rotary position embeddings,
/// SwiGLU MLP, grouped-query attention, tied or untied LM head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    #[serde(default = "defaults::llama_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::llama_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "defaults::llama_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "defaults::llama_num_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "defaults::llama_num_heads")]
    pub num_attention_heads: usize,
    /// Heads of keys and values (grouped-query attention); `None` means one per query head.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// `None` means `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "defaults::llama_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "defaults::llama_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "defaults::initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "defaults::llama_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// HF's default for Llama is an untied head.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// transformers 4 keeps the RoPE base here; transformers 5 in `rope_parameters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<RopeParameters>,
    /// transformers 4's RoPE scaling; only `null` (or type `default`) is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    /// Every other field of the file, written back unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// transformers 5's `rope_parameters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default = "defaults::rope_type")]
    pub rope_type: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// HF `GPTNeoConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptNeoConfig {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::neo_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "defaults::neo_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "defaults::neo_num_layers", alias = "num_hidden_layers")]
    pub num_layers: usize,
    /// Compact form `[[["global", "local"], 12]]`: the pattern repeated 12 times.
    #[serde(default = "defaults::neo_attention_types")]
    pub attention_types: Vec<(Vec<AttentionKind>, usize)>,
    #[serde(default = "defaults::neo_num_heads", alias = "num_attention_heads")]
    pub num_heads: usize,
    #[serde(default)]
    pub intermediate_size: Option<usize>,
    #[serde(default = "defaults::neo_window_size")]
    pub window_size: usize,
    #[serde(default = "defaults::activation")]
    pub activation_function: String,
    #[serde(default = "defaults::layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "defaults::initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "defaults::tie_word_embeddings")]
    pub tie_word_embeddings: bool,
    /// Every other field of the file, written back unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// HF `GPT2Config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(
        default = "defaults::gpt2_n_positions",
        alias = "max_position_embeddings"
    )]
    pub n_positions: usize,
    #[serde(default = "defaults::gpt2_n_embd", alias = "hidden_size")]
    pub n_embd: usize,
    #[serde(default = "defaults::gpt2_n_layer", alias = "num_hidden_layers")]
    pub n_layer: usize,
    #[serde(default = "defaults::gpt2_n_head", alias = "num_attention_heads")]
    pub n_head: usize,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "defaults::activation")]
    pub activation_function: String,
    #[serde(default = "defaults::layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "defaults::initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "defaults::yes")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Only changes the order of floating-point operations in HF; the result is the same in f32.
    #[serde(default)]
    pub reorder_and_upcast_attn: bool,
    #[serde(default)]
    pub add_cross_attention: bool,
    #[serde(default = "defaults::tie_word_embeddings")]
    pub tie_word_embeddings: bool,
    /// Every other field of the file, written back unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

mod defaults {
    use super::AttentionKind;

    pub fn vocab_size() -> usize {
        50257
    }
    pub fn neo_max_positions() -> usize {
        2048
    }
    pub fn neo_hidden_size() -> usize {
        2048
    }
    pub fn neo_num_layers() -> usize {
        24
    }
    pub fn neo_attention_types() -> Vec<(Vec<AttentionKind>, usize)> {
        vec![(vec![AttentionKind::Global, AttentionKind::Local], 12)]
    }
    pub fn neo_num_heads() -> usize {
        16
    }
    pub fn neo_window_size() -> usize {
        256
    }
    pub fn activation() -> String {
        "gelu_new".to_string()
    }
    pub fn layer_norm_epsilon() -> f64 {
        1e-5
    }
    pub fn initializer_range() -> f64 {
        0.02
    }
    pub fn tie_word_embeddings() -> bool {
        true
    }
    pub fn yes() -> bool {
        true
    }
    pub fn gpt2_n_positions() -> usize {
        1024
    }
    pub fn gpt2_n_embd() -> usize {
        768
    }
    pub fn gpt2_n_layer() -> usize {
        12
    }
    pub fn gpt2_n_head() -> usize {
        12
    }
    pub fn llama_vocab_size() -> usize {
        32000
    }
    pub fn llama_hidden_size() -> usize {
        4096
    }
    pub fn llama_intermediate_size() -> usize {
        11008
    }
    pub fn llama_num_layers() -> usize {
        32
    }
    pub fn llama_num_heads() -> usize {
        32
    }
    pub fn llama_hidden_act() -> String {
        "silu".to_string()
    }
    pub fn llama_max_positions() -> usize {
        2048
    }
    pub fn llama_rms_norm_eps() -> f64 {
        1e-6
    }
    pub fn rope_type() -> String {
        "default".to_string()
    }
    pub fn rope_theta() -> f64 {
        10000.0
    }
}

fn token_id_fields() -> Map<String, Value> {
    let mut extra = Map::new();
    extra.insert("bos_token_id".into(), GPT2_END_OF_TEXT.into());
    extra.insert("eos_token_id".into(), GPT2_END_OF_TEXT.into());
    extra
}

impl GptNeoConfig {
    /// A 4-layer, 64-wide model (two global and two local layers, window 16) for tests and smoke runs.
    pub fn tiny() -> Self {
        Self {
            vocab_size: defaults::vocab_size(),
            max_position_embeddings: 256,
            hidden_size: 64,
            num_layers: 4,
            attention_types: vec![(vec![AttentionKind::Global, AttentionKind::Local], 2)],
            num_heads: 4,
            intermediate_size: None,
            window_size: 16,
            activation_function: defaults::activation(),
            layer_norm_epsilon: defaults::layer_norm_epsilon(),
            initializer_range: defaults::initializer_range(),
            tie_word_embeddings: true,
            extra: token_id_fields(),
        }
    }

    /// The configuration of `EleutherAI/gpt-neo-125M`.
    pub fn gpt_neo_125m() -> Self {
        Self {
            max_position_embeddings: 2048,
            hidden_size: 768,
            num_layers: 12,
            attention_types: vec![(vec![AttentionKind::Global, AttentionKind::Local], 6)],
            num_heads: 12,
            window_size: 256,
            ..Self::tiny()
        }
    }

    /// The attention kind of every layer, expanded from `attention_types`.
    pub fn attention_layers(&self) -> Vec<AttentionKind> {
        self.attention_types
            .iter()
            .flat_map(|(pattern, repeats)| {
                std::iter::repeat_n(pattern.iter().copied(), *repeats).flatten()
            })
            .collect()
    }

    pub fn inner_size(&self) -> usize {
        self.intermediate_size.unwrap_or(4 * self.hidden_size)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let layers = self.attention_layers().len();
        if layers != self.num_layers {
            return Err(invalid(
                path,
                "attention_types",
                format!(
                    "expands to {layers} layers but num_layers is {}",
                    self.num_layers
                ),
            ));
        }
        if self.window_size == 0 {
            return Err(invalid(path, "window_size", "must be at least 1".into()));
        }
        validate_common(
            path,
            self.hidden_size,
            ("num_heads", self.num_heads),
            &self.activation_function,
            self.tie_word_embeddings,
        )
    }
}

impl Gpt2Config {
    /// A 4-layer, 64-wide model for tests and smoke runs.
    pub fn tiny() -> Self {
        Self {
            vocab_size: defaults::vocab_size(),
            n_positions: 256,
            n_embd: 64,
            n_layer: 4,
            n_head: 4,
            n_inner: None,
            activation_function: defaults::activation(),
            layer_norm_epsilon: defaults::layer_norm_epsilon(),
            initializer_range: defaults::initializer_range(),
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            reorder_and_upcast_attn: false,
            add_cross_attention: false,
            tie_word_embeddings: true,
            extra: token_id_fields(),
        }
    }

    /// The configuration of OpenAI's `gpt2` (124M parameters, the "125m" size class).
    pub fn gpt2_124m() -> Self {
        Self {
            n_positions: 1024,
            n_embd: 768,
            n_layer: 12,
            n_head: 12,
            ..Self::tiny()
        }
    }

    pub fn inner_size(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        if self.add_cross_attention {
            return Err(invalid(
                path,
                "add_cross_attention",
                "encoder-decoder cross-attention is not supported".into(),
            ));
        }
        validate_common(
            path,
            self.n_embd,
            ("n_head", self.n_head),
            &self.activation_function,
            self.tie_word_embeddings,
        )
    }
}

impl LlamaConfig {
    /// A 2-layer, 64-wide model with grouped-query attention (4 query heads sharing 2 key/value
    /// heads) over the GPT-2 vocabulary, for tests and smoke runs.
    pub fn tiny() -> Self {
        Self {
            vocab_size: defaults::vocab_size(),
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: Some(2),
            head_dim: None,
            hidden_act: defaults::llama_hidden_act(),
            max_position_embeddings: 256,
            initializer_range: defaults::initializer_range(),
            rms_norm_eps: 1e-5,
            tie_word_embeddings: true,
            rope_theta: Some(defaults::rope_theta()),
            rope_parameters: Some(RopeParameters::with_theta(defaults::rope_theta())),
            rope_scaling: None,
            attention_bias: false,
            mlp_bias: false,
            extra: token_id_fields(),
        }
    }

    /// The configuration of `HuggingFaceTB/SmolLM2-135M-Instruct` (tokens 1/2 are
    /// `<|im_start|>`/`<|im_end|>`).
    pub fn smollm2_135m() -> Self {
        let theta = 100000.0;
        let mut extra = Map::new();
        extra.insert("bos_token_id".into(), 1.into());
        extra.insert("eos_token_id".into(), 2.into());
        extra.insert("pad_token_id".into(), 2.into());
        Self {
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: Some(3),
            max_position_embeddings: 8192,
            rope_theta: Some(theta),
            rope_parameters: Some(RopeParameters::with_theta(theta)),
            extra,
            ..Self::tiny()
        }
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_size(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The RoPE base: `rope_parameters.rope_theta`, else `rope_theta`, else HF's 10000.
    pub fn rope_base(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|parameters| parameters.rope_theta)
            .or(self.rope_theta)
            .unwrap_or_else(defaults::rope_theta)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let heads = self.num_attention_heads;
        if heads == 0 || (self.head_dim.is_none() && !self.hidden_size.is_multiple_of(heads)) {
            return Err(invalid(
                path,
                "num_attention_heads",
                format!(
                    "hidden size {} is not divisible by {heads} heads",
                    self.hidden_size
                ),
            ));
        }
        let kv_heads = self.kv_heads();
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(invalid(
                path,
                "num_key_value_heads",
                format!(
                    "{heads} query heads cannot be shared evenly by {kv_heads} key/value heads"
                ),
            ));
        }
        if !self.head_size().is_multiple_of(2) {
            return Err(invalid(
                path,
                "head_dim",
                format!(
                    "rotary embeddings need an even head size, got {}",
                    self.head_size()
                ),
            ));
        }
        if self.hidden_act != "silu" {
            return Err(invalid(
                path,
                "hidden_act",
                format!("`{}` is not supported (Llama uses silu)", self.hidden_act),
            ));
        }
        let default_rope = |kind: Option<&str>| kind.is_none_or(|kind| kind == "default");
        if let Some(parameters) = &self.rope_parameters {
            if !default_rope(Some(&parameters.rope_type)) {
                return Err(invalid(
                    path,
                    "rope_parameters.rope_type",
                    format!(
                        "`{}` is not supported (only default RoPE)",
                        parameters.rope_type
                    ),
                ));
            }
        }
        match &self.rope_scaling {
            None | Some(Value::Null) => {}
            Some(scaling) => {
                let kind = scaling
                    .get("rope_type")
                    .or_else(|| scaling.get("type"))
                    .and_then(Value::as_str);
                if !default_rope(kind) {
                    return Err(invalid(
                        path,
                        "rope_scaling",
                        format!("{scaling} is not supported (only default RoPE)"),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl RopeParameters {
    pub fn with_theta(theta: f64) -> Self {
        Self {
            rope_theta: Some(theta),
            rope_type: defaults::rope_type(),
            extra: Map::new(),
        }
    }
}

fn validate_common(
    path: &Path,
    hidden: usize,
    (heads_field, heads): (&str, usize),
    activation: &str,
    tied: bool,
) -> Result<()> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(invalid(
            path,
            heads_field,
            format!("hidden size {hidden} is not divisible by {heads} heads"),
        ));
    }
    if Activation::parse(activation).is_none() {
        return Err(invalid(
            path,
            "activation_function",
            format!("`{activation}` is not supported (use gelu_new, gelu_pytorch_tanh or gelu)"),
        ));
    }
    if !tied {
        return Err(invalid(
            path,
            "tie_word_embeddings",
            "only models whose LM head is tied to the token embedding are supported".into(),
        ));
    }
    Ok(())
}

fn invalid(path: &Path, field: &str, reason: String) -> ModelError {
    ModelError::InvalidConfig {
        path: path.to_path_buf(),
        field: field.to_string(),
        reason,
    }
}

/// A configuration of any supported architecture.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    GptNeo(GptNeoConfig),
    Gpt2(Gpt2Config),
    Llama(LlamaConfig),
}

impl ModelConfig {
    /// Reads and validates `<dir>/config.json`, dispatching on its `model_type`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                invalid(&path, "(file)", "config.json not found".into())
            } else {
                ModelError::Io {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        Self::parse(&text, &path)
    }

    /// Parses the text of a `config.json`; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|err| invalid(path, "(json syntax)", err.to_string()))?;
        let model_type = match value.get("model_type") {
            Some(Value::String(kind)) => kind.clone(),
            Some(_) => return Err(invalid(path, "model_type", "must be a string".into())),
            None => return Err(invalid(path, "model_type", "missing".into())),
        };
        let config = match model_type.as_str() {
            "gpt_neo" => ModelConfig::GptNeo(deserialize(value, path)?),
            "gpt2" => ModelConfig::Gpt2(deserialize(value, path)?),
            "llama" => ModelConfig::Llama(deserialize(value, path)?),
            _ => {
                return Err(ModelError::UnknownModelType {
                    path: path.to_path_buf(),
                    found: model_type,
                    supported: SUPPORTED_MODEL_TYPES.to_vec(),
                })
            }
        };
        config.validate(path)?;
        Ok(config.without_written_fields())
    }

    /// Drops the fields [`Self::to_json`] derives at save time, so a reloaded config equals the
    /// saved one whatever the file said about its class or dtype.
    fn without_written_fields(mut self) -> Self {
        let extra = match &mut self {
            ModelConfig::GptNeo(config) => &mut config.extra,
            ModelConfig::Gpt2(config) => &mut config.extra,
            ModelConfig::Llama(config) => &mut config.extra,
        };
        for field in DERIVED_FIELDS {
            extra.remove(field);
        }
        self
    }

    fn validate(&self, path: &Path) -> Result<()> {
        match self {
            ModelConfig::GptNeo(config) => config.validate(path),
            ModelConfig::Gpt2(config) => config.validate(path),
            ModelConfig::Llama(config) => config.validate(path),
        }
    }

    pub fn model_type(&self) -> &'static str {
        match self {
            ModelConfig::GptNeo(_) => "gpt_neo",
            ModelConfig::Gpt2(_) => "gpt2",
            ModelConfig::Llama(_) => "llama",
        }
    }

    /// The HF class name written to `architectures`.
    pub fn causal_lm_class(&self) -> &'static str {
        match self {
            ModelConfig::GptNeo(_) => "GPTNeoForCausalLM",
            ModelConfig::Gpt2(_) => "GPT2LMHeadModel",
            ModelConfig::Llama(_) => "LlamaForCausalLM",
        }
    }

    /// The HF class that holds the transformer plus a `score` head (reward models).
    pub fn sequence_classification_class(&self) -> &'static str {
        match self {
            ModelConfig::GptNeo(_) => "GPTNeoForSequenceClassification",
            ModelConfig::Gpt2(_) => "GPT2ForSequenceClassification",
            ModelConfig::Llama(_) => "LlamaForSequenceClassification",
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::GptNeo(config) => config.vocab_size,
            ModelConfig::Gpt2(config) => config.vocab_size,
            ModelConfig::Llama(config) => config.vocab_size,
        }
    }

    pub fn hidden_size(&self) -> usize {
        match self {
            ModelConfig::GptNeo(config) => config.hidden_size,
            ModelConfig::Gpt2(config) => config.n_embd,
            ModelConfig::Llama(config) => config.hidden_size,
        }
    }

    pub fn num_layers(&self) -> usize {
        match self {
            ModelConfig::GptNeo(config) => config.num_layers,
            ModelConfig::Gpt2(config) => config.n_layer,
            ModelConfig::Llama(config) => config.num_hidden_layers,
        }
    }

    pub fn max_positions(&self) -> usize {
        match self {
            ModelConfig::GptNeo(config) => config.max_position_embeddings,
            ModelConfig::Gpt2(config) => config.n_positions,
            ModelConfig::Llama(config) => config.max_position_embeddings,
        }
    }

    pub fn initializer_range(&self) -> f64 {
        match self {
            ModelConfig::GptNeo(config) => config.initializer_range,
            ModelConfig::Gpt2(config) => config.initializer_range,
            ModelConfig::Llama(config) => config.initializer_range,
        }
    }

    fn extra(&self) -> &Map<String, Value> {
        match self {
            ModelConfig::GptNeo(config) => &config.extra,
            ModelConfig::Gpt2(config) => &config.extra,
            ModelConfig::Llama(config) => &config.extra,
        }
    }

    /// `pad_token_id` from the config, if it names one.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.extra()
            .get("pad_token_id")
            .and_then(Value::as_u64)
            .and_then(|id| u32::try_from(id).ok())
    }

    /// The `config.json` object HF expects: every field, plus `architectures`, `model_type`,
    /// `dtype` (transformers 5) and `torch_dtype` (transformers 4) for the saved weights.
    pub fn to_json(&self, architecture: &str, dtype_name: &str) -> Value {
        let mut object = match self {
            ModelConfig::GptNeo(config) => {
                let mut object = to_object(config);
                // HF writes the expanded form too; keep it in step with `attention_types`.
                object.insert(
                    "attention_layers".into(),
                    serde_json::to_value(config.attention_layers())
                        .expect("attention kinds serialize"),
                );
                object
            }
            ModelConfig::Gpt2(config) => to_object(config),
            ModelConfig::Llama(config) => to_object(config),
        };
        object.insert("architectures".into(), Value::from(vec![architecture]));
        object.insert("model_type".into(), self.model_type().into());
        object.insert("dtype".into(), dtype_name.into());
        object.insert("torch_dtype".into(), dtype_name.into());
        Value::Object(object)
    }
}

fn to_object<T: Serialize>(config: &T) -> Map<String, Value> {
    match serde_json::to_value(config).expect("config structs serialize") {
        Value::Object(object) => object,
        _ => unreachable!("config structs serialize to JSON objects"),
    }
}

fn deserialize<T: serde::de::DeserializeOwned>(value: Value, path: &Path) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let field = err.path().to_string();
        ModelError::InvalidConfig {
            path: PathBuf::from(path),
            field,
            reason: err.into_inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_types_expand_like_hf() {
        let config = GptNeoConfig::gpt_neo_125m();
        let layers = config.attention_layers();
        assert_eq!(layers.len(), 12);
        assert_eq!(layers[0], AttentionKind::Global);
        assert_eq!(layers[1], AttentionKind::Local);
        assert_eq!(layers[11], AttentionKind::Local);
    }

    #[test]
    fn hf_defaults_fill_missing_fields() {
        let config =
            ModelConfig::parse(r#"{"model_type": "gpt_neo"}"#, Path::new("c.json")).unwrap();
        let ModelConfig::GptNeo(config) = config else {
            panic!("wrong architecture")
        };
        assert_eq!(config.hidden_size, 2048);
        assert_eq!(config.num_layers, 24);
        assert_eq!(config.window_size, 256);
        assert_eq!(config.layer_norm_epsilon, 1e-5);
    }

    #[test]
    fn unknown_fields_round_trip() {
        let text = r#"{"model_type": "gpt2", "n_layer": 2, "n_embd": 8, "n_head": 2, "pad_token_id": 7, "task_specific_params": {"a": 1}}"#;
        let config = ModelConfig::parse(text, Path::new("c.json")).unwrap();
        assert_eq!(config.pad_token_id(), Some(7));
        let json = config.to_json("GPT2LMHeadModel", "float32");
        assert_eq!(json["task_specific_params"]["a"], 1);
        let again = ModelConfig::parse(&json.to_string(), Path::new("c.json")).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn errors_name_file_and_field() {
        let path = Path::new("dir/config.json");
        let err = ModelConfig::parse(r#"{"model_type": "mamba"}"#, path).unwrap_err();
        assert!(err.is_bad_input());
        let message = err.to_string();
        assert!(
            message.contains("mamba") && message.contains("gpt_neo, gpt2, llama"),
            "{message}"
        );

        let err =
            ModelConfig::parse(r#"{"model_type": "gpt2", "n_embd": "wide"}"#, path).unwrap_err();
        assert!(err.is_bad_input());
        let message = err.to_string();
        assert!(
            message.contains("dir/config.json") && message.contains("n_embd"),
            "{message}"
        );

        let err = ModelConfig::parse(r#"{"n_embd": 8}"#, path).unwrap_err();
        assert!(err.to_string().contains("model_type"));

        let err = ModelConfig::parse(
            r#"{"model_type": "gpt_neo", "num_layers": 3, "attention_types": [[["global", "local"], 1]]}"#,
            path,
        )
        .unwrap_err();
        assert!(err.to_string().contains("attention_types"), "{err}");

        let err = ModelConfig::read(Path::new("/nonexistent-rlxf-dir")).unwrap_err();
        assert!(err.is_bad_input());
        assert!(err.to_string().contains("config.json"));
    }

    #[test]
    fn llama_configs_of_both_transformers_generations_parse() {
        // transformers 4 style: top-level rope_theta, GQA.
        let v4 = r#"{"model_type": "llama", "hidden_size": 576, "num_attention_heads": 9,
            "num_key_value_heads": 3, "rope_theta": 100000.0, "rope_scaling": null,
            "tie_word_embeddings": true, "eos_token_id": 2}"#;
        let ModelConfig::Llama(config) = ModelConfig::parse(v4, Path::new("c.json")).unwrap()
        else {
            panic!("wrong architecture")
        };
        assert_eq!((config.head_size(), config.kv_heads()), (64, 3));
        assert_eq!(config.rope_base(), 100000.0);
        // transformers 5 style: rope_parameters; defaults for the rest (untied, 10000 for a
        // missing theta).
        let v5 = r#"{"model_type": "llama", "rope_parameters": {"rope_theta": 500.0, "rope_type": "default"}}"#;
        let ModelConfig::Llama(config) = ModelConfig::parse(v5, Path::new("c.json")).unwrap()
        else {
            panic!("wrong architecture")
        };
        assert_eq!(config.rope_base(), 500.0);
        assert!(!config.tie_word_embeddings);
        assert_eq!(config.kv_heads(), 32);
        let bare = r#"{"model_type": "llama"}"#;
        let ModelConfig::Llama(config) = ModelConfig::parse(bare, Path::new("c.json")).unwrap()
        else {
            panic!("wrong architecture")
        };
        assert_eq!(config.rope_base(), 10000.0);
    }

    #[test]
    fn unsupported_llama_settings_are_named() {
        let path = Path::new("m/config.json");
        for (text, field) in [
            (
                r#"{"model_type": "llama", "num_attention_heads": 8, "num_key_value_heads": 3}"#,
                "num_key_value_heads",
            ),
            (
                r#"{"model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}"#,
                "rope_scaling",
            ),
            (
                r#"{"model_type": "llama", "rope_parameters": {"rope_theta": 1.0, "rope_type": "yarn"}}"#,
                "rope_parameters.rope_type",
            ),
            (
                r#"{"model_type": "llama", "hidden_act": "gelu"}"#,
                "hidden_act",
            ),
        ] {
            let err = ModelConfig::parse(text, path).unwrap_err();
            assert!(err.is_bad_input());
            let message = err.to_string();
            assert!(
                message.contains(field) && message.contains("m/config.json"),
                "{message}"
            );
        }
    }
}
