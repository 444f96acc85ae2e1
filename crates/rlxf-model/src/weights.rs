//! Parameter tensors: which ones an architecture needs, seeded random initialisation, reading HF
//! checkpoints (`model.safetensors`, `pytorch_model.bin`), checking them, and atomic saving.
//!
//! The list of parameters is not written down twice: [`record_parameters`] runs an architecture's
//! constructor against a recording `VarBuilder` backend and notes every name, shape and init hint the
//! constructor asks for. Loading and initialisation both go through that list, so a checkpoint is
//! checked against exactly what the model will read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use rlxf_data::atomic_file;

use crate::error::{ModelError, Result};

/// HF file names.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
pub const PYTORCH_FILE: &str = "pytorch_model.bin";

/// One parameter an architecture reads: its HF name, shape and how HF initialises it.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

/// A `VarBuilder` backend that hands out zero-cost placeholder tensors and remembers what was asked.
#[derive(Clone, Default)]
struct RecordingBackend {
    requests: Arc<Mutex<Vec<ParamSpec>>>,
}

impl SimpleBackend for RecordingBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.requests
            .lock()
            .expect("recording backend lock")
            .push(ParamSpec {
                name: name.to_string(),
                shape: shape.dims().to_vec(),
                init,
            });
        // A broadcast scalar: no memory, even for a 125M-parameter model.
        Tensor::zeros((), dtype, device)?.broadcast_as(shape)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("recording backend: `{name}` requested without a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

/// Runs `build` against a recording backend and returns the parameters it asked for, in order.
pub fn record_parameters<T>(build: impl FnOnce(VarBuilder) -> Result<T>) -> Result<Vec<ParamSpec>> {
    let backend = RecordingBackend::default();
    let vb = VarBuilder::from_backend(Box::new(backend.clone()), DType::F32, Device::Cpu);
    build(vb)?;
    let requests = backend.requests.lock().expect("recording backend lock");
    Ok(requests.clone())
}

/// Draws every parameter of `spec` from its HF init with a ChaCha stream seeded by `seed`, so the
/// same seed gives the same model on every platform.
pub fn init_tensors(
    spec: &[ParamSpec],
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tensors = HashMap::with_capacity(spec.len());
    for param in spec {
        let count: usize = param.shape.iter().product();
        let values: Vec<f32> = match param.init {
            Init::Const(value) => vec![value as f32; count],
            Init::Randn { mean, stdev } => (0..count)
                .map(|_| (mean + stdev * standard_normal(&mut rng)) as f32)
                .collect(),
            Init::Uniform { lo, up } => (0..count)
                .map(|_| rng.random_range(lo..up) as f32)
                .collect(),
            Init::Kaiming { .. } => {
                return Err(ModelError::InvalidInput(format!(
                    "parameter `{}` asks for Kaiming init, which no supported architecture uses",
                    param.name
                )))
            }
        };
        let tensor = Tensor::from_vec(values, param.shape.as_slice(), device)?.to_dtype(dtype)?;
        tensors.insert(param.name.clone(), tensor);
    }
    Ok(tensors)
}

/// Box–Muller: one N(0, 1) sample from two uniforms.
fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    // 1 - u keeps the logarithm's argument in (0, 1].
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// The weight file of a model directory: `model.safetensors`, else `pytorch_model.bin`.
pub fn find_weight_file(dir: &Path) -> Result<PathBuf> {
    [SAFETENSORS_FILE, PYTORCH_FILE]
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| ModelError::MissingWeights {
            path: dir.to_path_buf(),
        })
}

/// Reads every tensor of a safetensors file or a PyTorch pickle (`.bin`, `.pt`, `.pth`).
pub fn read_weight_file(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let unreadable = |err: candle_core::Error| ModelError::UnreadableWeights {
        path: path.to_path_buf(),
        reason: err.to_string(),
    };
    if path.extension().is_some_and(|ext| ext == "safetensors") {
        candle_core::safetensors::load(path, device).map_err(unreadable)
    } else {
        let tensors = candle_core::pickle::read_all(path).map_err(unreadable)?;
        tensors
            .into_iter()
            .map(|(name, tensor)| Ok((name, tensor.to_device(device)?)))
            .collect()
    }
}

/// Some checkpoints (OpenAI's `gpt2`) name the transformer's tensors without the `transformer.`
/// prefix the HF classes use; add it so both forms load.
pub fn add_transformer_prefix(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    let has_prefix = tensors.keys().any(|name| name.starts_with("transformer."));
    if has_prefix {
        return tensors;
    }
    tensors
        .into_iter()
        .map(|(name, tensor)| {
            let is_head = name.starts_with("lm_head.") || name.starts_with("score.");
            let name = if is_head {
                name
            } else {
                format!("transformer.{name}")
            };
            (name, tensor)
        })
        .collect()
}

/// Checks that `tensors` holds every parameter of `spec` with the right shape and returns those
/// parameters converted to `dtype` (extra tensors, such as HF's `attn.bias` buffers, are dropped).
pub fn select_parameters(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    spec: &[ParamSpec],
    dtype: DType,
) -> Result<HashMap<String, Tensor>> {
    spec.iter()
        .map(|param| {
            let tensor = tensors
                .get(&param.name)
                .ok_or_else(|| ModelError::MissingTensor {
                    path: path.to_path_buf(),
                    name: param.name.clone(),
                })?;
            if tensor.dims() != param.shape.as_slice() {
                return Err(ModelError::ShapeMismatch {
                    path: path.to_path_buf(),
                    name: param.name.clone(),
                    expected: param.shape.clone(),
                    found: tensor.dims().to_vec(),
                });
            }
            Ok((param.name.clone(), tensor.to_dtype(dtype)?))
        })
        .collect()
}

/// Wraps each tensor in a trainable `Var`, keyed by its HF name.
pub fn varmap_from_tensors(tensors: HashMap<String, Tensor>) -> Result<VarMap> {
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().expect("varmap lock");
        for (name, tensor) in tensors {
            data.insert(name, Var::from_tensor(&tensor)?);
        }
    }
    Ok(varmap)
}

/// The current values of every variable of `varmap`, keyed by name.
pub fn varmap_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    let data = varmap.data().lock().expect("varmap lock");
    data.iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
        .collect()
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so readers
/// never see a half-written file (see [`rlxf_data::atomic_file`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_file::write(path, bytes).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Saves tensors as a safetensors file, atomically.
pub fn save_safetensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let io_error = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let temp = atomic_file::temp_file_for(path).map_err(io_error)?;
    let permissions = temp.as_file().metadata().map_err(io_error)?.permissions();
    let contiguous: HashMap<&str, Tensor> = tensors
        .iter()
        .map(|(name, tensor)| Ok((name.as_str(), tensor.contiguous()?)))
        .collect::<Result<_>>()?;
    // safetensors writes a temporary file of its own (owner-only) and renames it over the path it
    // is given: ours. So the permissions are set again by path before our rename, which also
    // syncs the file by path.
    candle_core::safetensors::save(&contiguous, temp.path())?;
    std::fs::set_permissions(temp.path(), permissions).map_err(io_error)?;
    atomic_file::persist(temp, path).map_err(io_error)
}

/// HF's name for a dtype in `config.json`.
pub fn hf_dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_init_is_reproducible_and_has_the_requested_moments() {
        let spec = vec![
            ParamSpec {
                name: "w".into(),
                shape: vec![200, 100],
                init: Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            },
            ParamSpec {
                name: "ln".into(),
                shape: vec![5],
                init: Init::Const(1.0),
            },
        ];
        let a = init_tensors(&spec, 3, DType::F32, &Device::Cpu).unwrap();
        let b = init_tensors(&spec, 3, DType::F32, &Device::Cpu).unwrap();
        let c = init_tensors(&spec, 4, DType::F32, &Device::Cpu).unwrap();
        let values = |map: &HashMap<String, Tensor>| {
            map["w"].flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert_eq!(values(&a), values(&b));
        assert_ne!(values(&a), values(&c));
        let w = values(&a);
        let mean = w.iter().sum::<f32>() / w.len() as f32;
        let std = (w.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / w.len() as f32).sqrt();
        assert!(mean.abs() < 1e-3, "mean {mean}");
        assert!((std - 0.02).abs() < 5e-4, "std {std}");
        assert_eq!(a["ln"].to_vec1::<f32>().unwrap(), vec![1.0; 5]);
    }

    #[test]
    fn missing_and_misshapen_tensors_are_named() {
        let spec = vec![ParamSpec {
            name: "transformer.wte.weight".into(),
            shape: vec![4, 2],
            init: Init::Const(0.0),
        }];
        let path = Path::new("m/model.safetensors");
        let err = select_parameters(path, &HashMap::new(), &spec, DType::F32).unwrap_err();
        assert!(err.is_bad_input());
        assert!(err.to_string().contains("transformer.wte.weight"), "{err}");

        let wrong = HashMap::from([(
            "transformer.wte.weight".to_string(),
            Tensor::zeros((4, 3), DType::F32, &Device::Cpu).unwrap(),
        )]);
        let err = select_parameters(path, &wrong, &spec, DType::F32).unwrap_err();
        assert!(err.is_bad_input());
        let message = err.to_string();
        assert!(
            message.contains("[4, 3]") && message.contains("[4, 2]") && message.contains("wte"),
            "{message}"
        );
    }
}
