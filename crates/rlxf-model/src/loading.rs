//! Loading, initialising and saving models in Hugging Face format.
//!
//! A [`LoadedModel`] holds the config, every parameter as a trainable `Var` in a `VarMap` (keyed by
//! its HF tensor name) and the model built over that `VarMap`, so trainers optimise the same tensors
//! the model reads and [`LoadedModel::save_pretrained`] writes a directory `transformers` loads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::causal_lm::{CausalLm, KvCache};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::fetch;
use crate::gpt2::Gpt2;
use crate::gpt_neo::GptNeo;
use crate::llama::Llama;
use crate::scalar_head::ScalarHead;
use crate::weights::{self, ParamSpec};

/// A model of any supported architecture behind the [`CausalLm`] trait.
pub type DynCausalLm = Box<dyn CausalLm + Send + Sync>;

/// Builds the architecture `config` names from `vb`, computing in `vb`'s dtype.
pub fn build_model(config: &ModelConfig, vb: VarBuilder) -> Result<DynCausalLm> {
    let dtype = vb.dtype();
    build_computing_in(config, vb, dtype)
}

/// [`build_model`] with the forward pass in `compute_dtype` (see
/// [`LoadedModel::set_compute_dtype`]).
fn build_computing_in(
    config: &ModelConfig,
    vb: VarBuilder,
    compute_dtype: DType,
) -> Result<DynCausalLm> {
    Ok(match config {
        ModelConfig::GptNeo(config) => {
            Box::new(GptNeo::new(config, vb)?.with_compute_dtype(compute_dtype))
        }
        ModelConfig::Gpt2(config) => {
            Box::new(Gpt2::new(config, vb)?.with_compute_dtype(compute_dtype))
        }
        ModelConfig::Llama(config) => {
            Box::new(Llama::new(config, vb)?.with_compute_dtype(compute_dtype))
        }
    })
}

/// Builds `config`'s architecture over the variables of `varmap`, or, for `inference`, over
/// detached copies of them (the same storage, no copy; see [`LoadedModel::into_inference`]).
fn build_over_varmap(
    config: &ModelConfig,
    varmap: &VarMap,
    dtype: DType,
    compute_dtype: DType,
    inference: bool,
    device: &Device,
) -> Result<DynCausalLm> {
    let vb = if inference {
        let detached: HashMap<String, Tensor> = {
            let data = varmap.data().lock().expect("varmap lock");
            data.iter()
                .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
                .collect()
        };
        VarBuilder::from_tensors(detached, dtype, device)
    } else {
        VarBuilder::from_varmap(varmap, dtype, device)
    };
    build_computing_in(config, vb, compute_dtype)
}

/// Every parameter the architecture reads: HF name, shape and init.
pub fn parameter_spec(config: &ModelConfig) -> Result<Vec<ParamSpec>> {
    weights::record_parameters(|vb| build_model(config, vb))
}

/// A model with its config and variables. Implements [`CausalLm`] by delegating to `model`.
pub struct LoadedModel {
    pub config: ModelConfig,
    /// Every parameter as a `Var` under its HF name, plus `score.weight` when a scalar head is
    /// attached. Hand `varmap.all_vars()` to an optimiser to train the model.
    pub varmap: VarMap,
    pub model: DynCausalLm,
    /// The parameters' dtype.
    dtype: DType,
    /// The forward pass's dtype (see [`LoadedModel::set_compute_dtype`]); `dtype` unless set.
    compute_dtype: DType,
    /// Whether `model` reads detached copies of the variables ([`LoadedModel::into_inference`]).
    inference: bool,
    /// The directory the model was loaded from, whose tokenizer files a save carries along.
    source_dir: Option<PathBuf>,
}

/// Tokenizer and chat-template files a saved model takes from the directory it was loaded from,
/// so a fine-tuned SmolLM2 keeps its tokenizer and ChatML template.
const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

impl LoadedModel {
    /// Builds a model from checkpoint tensors (HF names, with or without the `transformer.` prefix);
    /// `origin` names the file in errors. A `score.weight` of shape `[1, hidden]` is kept as the
    /// scalar head; other extra tensors (HF's `attn.bias` buffers, an untied `lm_head`) are ignored.
    pub fn from_tensors(
        config: ModelConfig,
        tensors: HashMap<String, Tensor>,
        origin: &Path,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        // GPT checkpoints sometimes omit the `transformer.` prefix; Llama's names are `model.*`.
        let tensors = match config {
            ModelConfig::Llama(_) => tensors,
            _ => weights::add_transformer_prefix(tensors),
        };
        let mut spec = parameter_spec(&config)?;
        let head_shape = [1, config.hidden_size()];
        if tensors
            .get(ScalarHead::WEIGHT_NAME)
            .is_some_and(|head| head.dims() == head_shape)
        {
            spec.push(ParamSpec {
                name: ScalarHead::WEIGHT_NAME.to_string(),
                shape: head_shape.to_vec(),
                init: candle_nn::Init::Const(0.0),
            });
        }
        let selected = weights::select_parameters(origin, &tensors, &spec, dtype)?;
        let selected = selected
            .into_iter()
            .map(|(name, tensor)| Ok((name, tensor.to_device(device)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        Self::from_varmap(
            config,
            weights::varmap_from_tensors(selected)?,
            device,
            dtype,
        )
    }

    /// A freshly initialised model (HF's `_init_weights`: N(0, initializer_range) for linear and
    /// embedding weights, zero biases, unit layer-norm scales), reproducible from `seed`.
    pub fn init_random(
        config: ModelConfig,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let spec = parameter_spec(&config)?;
        let tensors = weights::init_tensors(&spec, seed, dtype, device)?;
        Self::from_varmap(
            config,
            weights::varmap_from_tensors(tensors)?,
            device,
            dtype,
        )
    }

    fn from_varmap(
        config: ModelConfig,
        varmap: VarMap,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let model = build_over_varmap(&config, &varmap, dtype, dtype, false, device)?;
        Ok(Self {
            config,
            varmap,
            model,
            dtype,
            compute_dtype: dtype,
            inference: false,
            source_dir: None,
        })
    }

    /// The same model for inference only: its layers read detached copies of the variables (the
    /// same storage, no copy), so a forward pass records no autograd graph and frees each
    /// intermediate tensor as soon as the next op has used it. Without this, every activation of
    /// every layer stays alive until the output is dropped, which on long prompts costs gigabytes.
    /// The variables stay in `varmap` (a scalar head still loads from them).
    pub fn into_inference(self) -> Result<Self> {
        let model = self.inference_model()?;
        Ok(Self {
            model,
            inference: true,
            ..self
        })
    }

    /// A view of this model for inference only, as [`Self::into_inference`] builds it, while
    /// `self` stays trainable: for sampling from, or scoring with, a policy between its updates.
    /// The view shares the variables' storage, so it sees every in-place update of them.
    pub fn inference_model(&self) -> Result<DynCausalLm> {
        build_over_varmap(
            &self.config,
            &self.varmap,
            self.dtype,
            self.compute_dtype,
            true,
            self.model.device(),
        )
    }

    /// Runs the forward pass in `dtype` while the parameters stay in [`Self::dtype`]: with bf16
    /// over f32 parameters, mixed-precision training as PyTorch autocast does it. Every layer
    /// casts its weights to bf16 in the forward (a differentiable cast, so gradients reach the
    /// f32 variables in f32, and the optimiser, checkpoints and saved models are unchanged),
    /// hidden states are bf16, and layer/RMS norms, the attention softmax and the log-softmax
    /// of log-probabilities run in f32; log-probs and scalar-head scores come out f32.
    ///
    /// Setting the parameters' own dtype restores the plain forward (no casts at all).
    pub fn set_compute_dtype(&mut self, dtype: DType) -> Result<()> {
        if !matches!(dtype, DType::BF16 | DType::F16 | DType::F32 | DType::F64) {
            return Err(ModelError::InvalidInput(format!(
                "compute dtype {dtype:?} is not a float type (bf16, f16, f32 or f64)"
            )));
        }
        if dtype == self.compute_dtype {
            return Ok(());
        }
        self.model = build_over_varmap(
            &self.config,
            &self.varmap,
            self.dtype,
            dtype,
            self.inference,
            self.model.device(),
        )?;
        self.compute_dtype = dtype;
        Ok(())
    }

    /// The forward pass's dtype (see [`Self::set_compute_dtype`]).
    pub fn compute_dtype(&self) -> DType {
        self.compute_dtype
    }

    /// Loads `config.json` and `model.safetensors` (or `pytorch_model.bin`) from a directory.
    pub fn load_dir(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let config = ModelConfig::read(dir)?;
        let weight_file = weights::find_weight_file(dir)?;
        let tensors = weights::read_weight_file(&weight_file, device)?;
        let model = Self::from_tensors(config, tensors, &weight_file, device, dtype)?;
        Ok(Self {
            source_dir: Some(dir.to_path_buf()),
            ..model
        })
    }

    /// The parameters' dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The attached scalar head, if the checkpoint had one or [`Self::attach_scalar_head`] added it.
    pub fn scalar_head(&self) -> Result<Option<ScalarHead>> {
        if !self.has_scalar_head() {
            return Ok(None);
        }
        let vb = VarBuilder::from_varmap(&self.varmap, self.dtype, self.model.device());
        Ok(Some(ScalarHead::new(self.config.hidden_size(), vb)?))
    }

    fn has_scalar_head(&self) -> bool {
        let data = self.varmap.data().lock().expect("varmap lock");
        data.contains_key(ScalarHead::WEIGHT_NAME)
    }

    /// Adds a scalar head initialised N(0, 0.02) from `seed` (replacing any present) to the model's
    /// variables, so it trains and saves with them.
    pub fn attach_scalar_head(&mut self, seed: u64) -> Result<ScalarHead> {
        let hidden = self.config.hidden_size();
        let spec = weights::record_parameters(|vb| ScalarHead::new(hidden, vb))?;
        let tensors = weights::init_tensors(&spec, seed, self.dtype, self.model.device())?;
        {
            let mut data = self.varmap.data().lock().expect("varmap lock");
            for (name, tensor) in tensors {
                data.insert(name, candle_core::Var::from_tensor(&tensor)?);
            }
        }
        let vb = VarBuilder::from_varmap(&self.varmap, self.dtype, self.model.device());
        ScalarHead::new(hidden, vb)
    }

    /// Writes `config.json` and `model.safetensors` into `dir` (created if needed), each atomically.
    /// With a scalar head the directory is a `*ForSequenceClassification` checkpoint with
    /// `num_labels = 1`; `transformers` loads it with `AutoModelForSequenceClassification` and, the
    /// LM head being tied, with `AutoModelForCausalLM` too.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let with_head = self.has_scalar_head();
        let architecture = if with_head {
            self.config.sequence_classification_class()
        } else {
            self.config.causal_lm_class()
        };
        let mut config = self
            .config
            .to_json(architecture, weights::hf_dtype_name(self.dtype));
        if with_head {
            config["id2label"] = serde_json::json!({"0": "LABEL_0"});
            config["label2id"] = serde_json::json!({"LABEL_0": 0});
        }
        let text = serde_json::to_string_pretty(&config).expect("JSON values serialize");
        weights::write_atomic(&dir.join("config.json"), text.as_bytes())?;
        weights::save_safetensors(
            &dir.join(weights::SAFETENSORS_FILE),
            &weights::varmap_tensors(&self.varmap),
        )?;
        self.copy_tokenizer_files(dir)
    }

    /// Copies the tokenizer files of the directory the model came from (those it has) into `dir`.
    fn copy_tokenizer_files(&self, dir: &Path) -> Result<()> {
        let Some(source) = &self.source_dir else {
            return Ok(());
        };
        if source == dir {
            return Ok(());
        }
        for name in TOKENIZER_FILES {
            let from = source.join(name);
            if from.is_file() {
                let bytes = std::fs::read(&from).map_err(|source| ModelError::Io {
                    path: from.clone(),
                    source,
                })?;
                weights::write_atomic(&dir.join(name), &bytes)?;
            }
        }
        Ok(())
    }
}

impl CausalLm for LoadedModel {
    fn device(&self) -> &Device {
        self.model.device()
    }

    fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }

    fn hidden_size(&self) -> usize {
        self.model.hidden_size()
    }

    fn num_layers(&self) -> usize {
        self.model.num_layers()
    }

    fn max_context(&self) -> usize {
        self.model.max_context()
    }

    fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.model.hidden_states(input_ids, attention_mask, cache)
    }

    fn logits_from_hidden(&self, hidden: &Tensor) -> Result<Tensor> {
        self.model.logits_from_hidden(hidden)
    }

    fn lm_head_weight(&self) -> Option<Tensor> {
        self.model.lm_head_weight()
    }
}

/// Loads a model from a local directory or, when `source` is not one, from the Hugging Face hub
/// (`EleutherAI/gpt-neo-125M`; needs network access, files are cached by `hf-hub`).
/// Dispatches on `config.json`'s `model_type` (`gpt_neo`, `gpt2`, `llama`).
pub fn load_pretrained(source: &str, device: &Device, dtype: DType) -> Result<LoadedModel> {
    let dir = resolve_source(source)?;
    LoadedModel::load_dir(&dir, device, dtype)
}

/// A local directory for `source`: the path itself, the cached copy of a registered model
/// (`smollm2-135m-instruct`, see [`crate::fetch`]), or the hub snapshot holding its files.
pub fn resolve_source(source: &str) -> Result<PathBuf> {
    let path = Path::new(source);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if let Some(model) = fetch::registered_model(source) {
        let dir = fetch::cached_model_dir(model, &fetch::default_cache_root()?);
        if !dir.join(fetch::MANIFEST_FILE).is_file() {
            return Err(ModelError::NotFetched {
                name: model.name.to_string(),
                dir,
            });
        }
        return Ok(dir);
    }
    if !looks_like_hub_id(source) {
        return Err(ModelError::InvalidInput(format!(
            "model source `{source}` is neither a directory nor a Hugging Face model id (owner/name)"
        )));
    }
    fetch_from_hub(source)
}

fn looks_like_hub_id(source: &str) -> bool {
    let parts: Vec<&str> = source.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

fn fetch_from_hub(model_id: &str) -> Result<PathBuf> {
    let unavailable = |reason: String| ModelError::HubUnavailable {
        model_id: model_id.to_string(),
        reason,
    };
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_progress(false)
        .build()
        .map_err(|err| unavailable(err.to_string()))?;
    let repo = api.model(model_id.to_string());
    let config = repo
        .get("config.json")
        .map_err(|err| unavailable(err.to_string()))?;
    // Fetch one weight file into the same snapshot directory, preferring safetensors.
    repo.get(weights::SAFETENSORS_FILE)
        .or_else(|_| repo.get(weights::PYTORCH_FILE))
        .map_err(|err| unavailable(err.to_string()))?;
    Ok(config
        .parent()
        .expect("a downloaded file lives in a snapshot directory")
        .to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_paths_are_told_apart() {
        assert!(looks_like_hub_id("EleutherAI/gpt-neo-125M"));
        assert!(!looks_like_hub_id("./models/x"));
        assert!(!looks_like_hub_id("/abs/path"));
        assert!(!looks_like_hub_id("a/b/c"));
        let err = resolve_source("./no/such/dir").unwrap_err();
        assert!(err.is_bad_input());
    }
}
