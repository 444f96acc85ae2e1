//! Hugging Face Hub dataset sources (`hf://datasets/OWNER/NAME[@REVISION][/FILTER]`), fetched with
//! `hf-hub` into the standard HF cache. Like the Python client, the Hub is asked first (for the
//! current file list) and the cached snapshot is the fallback when it cannot be reached or when
//! `HF_HUB_OFFLINE=1`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{DataError, Result};
use crate::source::{data_files_under, is_data_file};

const SCHEME: &str = "hf://datasets/";
const DEFAULT_REVISION: &str = "main";

/// A dataset repository on the Hub, an optional revision (branch, tag or commit; default `main`)
/// and an optional filter choosing its data files: a file path (`data/test-00000-of-00001.parquet`),
/// a folder (`data`), or a file-name prefix such as a split name (`test`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSource {
    pub repo_id: String,
    pub revision: Option<String>,
    pub filter: Option<String>,
}

/// Where the Hub cache lives and which endpoint to ask. The defaults follow `hf-hub` (and the
/// Python client): `$HF_HOME/hub` or `~/.cache/huggingface/hub`, and `$HF_ENDPOINT` or
/// `https://huggingface.co`.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// The hub cache folder itself (the one holding `datasets--OWNER--NAME`).
    pub cache_dir: Option<PathBuf>,
    pub endpoint: Option<String>,
    /// Show a download progress bar.
    pub progress: bool,
}

impl FromStr for HubSource {
    type Err = DataError;

    fn from_str(text: &str) -> Result<Self> {
        let bad = |message: &str| DataError::Source {
            source_text: text.to_string(),
            message: format!("{message} (expected hf://datasets/OWNER/NAME[@REVISION][/FILTER])"),
        };
        let rest = text
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("only dataset repositories are supported"))?;
        let mut parts = rest.splitn(3, '/');
        let owner = parts.next().filter(|s| !s.is_empty());
        let name_and_revision = parts.next().filter(|s| !s.is_empty());
        let (Some(owner), Some(name_and_revision)) = (owner, name_and_revision) else {
            return Err(bad("missing OWNER/NAME"));
        };
        let (name, revision) = match name_and_revision.split_once('@') {
            Some((_, "")) => return Err(bad("empty revision after `@`")),
            Some((name, revision)) => (name, Some(revision.to_string())),
            None => (name_and_revision, None),
        };
        if name.is_empty() {
            return Err(bad("missing dataset name"));
        }
        let filter = parts
            .next()
            .map(|f| f.trim_matches('/'))
            .filter(|f| !f.is_empty())
            .map(str::to_string);
        Ok(HubSource {
            repo_id: format!("{owner}/{name}"),
            revision,
            filter,
        })
    }
}

impl fmt::Display for HubSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}", self.repo_id)?;
        if let Some(revision) = &self.revision {
            write!(f, "@{revision}")?;
        }
        if let Some(filter) = &self.filter {
            write!(f, "/{filter}")?;
        }
        Ok(())
    }
}

impl HubSource {
    fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or(DEFAULT_REVISION)
    }

    fn repo(&self) -> Repo {
        Repo::with_revision(
            self.repo_id.clone(),
            RepoType::Dataset,
            self.revision().to_string(),
        )
    }

    /// True when the repository path `file` is chosen by the filter (every data file when there
    /// is no filter).
    pub fn selects(&self, file: &str) -> bool {
        if !is_data_file(file) {
            return false;
        }
        let Some(filter) = &self.filter else {
            return true;
        };
        let file_name = file.rsplit('/').next().unwrap_or(file);
        file == filter
            || file.starts_with(&format!("{filter}/"))
            || file_name.starts_with(filter.as_str())
    }

    /// Local paths of the chosen data files, in repository path order: downloaded into the cache
    /// (hf-hub skips files it already has), or, when the Hub cannot be reached or `HF_HUB_OFFLINE`
    /// is set, the matching files of the cached snapshot. Without either, the error says how to
    /// use local files instead.
    pub fn resolve(&self, options: &HubOptions) -> Result<Vec<PathBuf>> {
        let cache = options
            .cache_dir
            .clone()
            .map(Cache::new)
            .unwrap_or_else(Cache::from_env);
        let cached = || self.cached_files(cache.path());
        let offline =
            std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !matches!(v.as_str(), "" | "0"));
        if offline {
            let files = cached()?;
            if files.is_empty() {
                return Err(DataError::Hub {
                    repo_id: self.repo_id.clone(),
                    what: self.to_string(),
                    message: "HF_HUB_OFFLINE is set and the cache holds no matching file".into(),
                });
            }
            return Ok(files);
        }
        match self.download(cache.clone(), options) {
            Err(err @ DataError::Hub { .. }) => {
                let files = cached()?;
                if files.is_empty() {
                    Err(err)
                } else {
                    Ok(files)
                }
            }
            result => result,
        }
    }

    /// The snapshot folder for the revision, as `hf-hub` and the Python client lay it out:
    /// `datasets--OWNER--NAME/refs/REVISION` holds the commit, `snapshots/COMMIT/` the files. A
    /// revision that is itself a commit has a snapshot and no ref.
    fn snapshot_dir(&self, cache_dir: &Path) -> Option<PathBuf> {
        let repo_dir = cache_dir.join(self.repo().folder_name());
        let commit = std::fs::read_to_string(repo_dir.join("refs").join(self.revision()))
            .map(|commit| commit.trim().to_string())
            .unwrap_or_else(|_| self.revision().to_string());
        let snapshot = repo_dir.join("snapshots").join(commit);
        snapshot.is_dir().then_some(snapshot)
    }

    fn cached_files(&self, cache_dir: &Path) -> Result<Vec<PathBuf>> {
        let Some(snapshot) = self.snapshot_dir(cache_dir) else {
            return Ok(Vec::new());
        };
        let files = data_files_under(&snapshot)?;
        Ok(files
            .into_iter()
            .filter(|path| {
                path.strip_prefix(&snapshot)
                    .is_ok_and(|rel| self.selects(&rel.to_string_lossy().replace('\\', "/")))
            })
            .collect())
    }

    fn download(&self, cache: Cache, options: &HubOptions) -> Result<Vec<PathBuf>> {
        let hub_error = |what: &str, message: String| DataError::Hub {
            repo_id: self.repo_id.clone(),
            what: what.to_string(),
            message,
        };
        let mut builder = ApiBuilder::from_cache(cache).with_progress(options.progress);
        if let Some(endpoint) = options
            .endpoint
            .clone()
            .or_else(|| std::env::var("HF_ENDPOINT").ok())
        {
            builder = builder.with_endpoint(endpoint);
        }
        let api = builder
            .build()
            .map_err(|e| hub_error("a client", e.to_string()))?;
        let repo = api.repo(self.repo());
        let info = repo
            .info()
            .map_err(|e| hub_error(&format!("the file list of {self}"), e.to_string()))?;
        let mut files: Vec<String> = info
            .siblings
            .into_iter()
            .map(|sibling| sibling.rfilename)
            .filter(|file| self.selects(file))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(DataError::Source {
                source_text: self.to_string(),
                message: "no .parquet, .jsonl or .jsonl.gz file in the repository matches".into(),
            });
        }
        files
            .iter()
            .map(|file| {
                repo.get(file)
                    .map_err(|e| hub_error(&format!("{file} of {self}"), e.to_string()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repo_revision_and_filter() {
        let source: HubSource = "hf://datasets/Dahoas/rm-static@v1.0/data/test"
            .parse()
            .unwrap();
        assert_eq!(source.repo_id, "Dahoas/rm-static");
        assert_eq!(source.revision.as_deref(), Some("v1.0"));
        assert_eq!(source.filter.as_deref(), Some("data/test"));
        assert_eq!(
            source.to_string(),
            "hf://datasets/Dahoas/rm-static@v1.0/data/test"
        );

        let plain: HubSource = "hf://datasets/Dahoas/rm-static".parse().unwrap();
        assert_eq!((plain.revision, plain.filter), (None, None));

        for bad in [
            "hf://models/gpt2",
            "hf://datasets/Dahoas",
            "hf://datasets//x",
            "hf://datasets/Dahoas/rm-static@",
            "hf://datasets/Dahoas/@main",
        ] {
            assert!(bad.parse::<HubSource>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn filter_selects_files_folders_and_split_prefixes() {
        let split: HubSource = "hf://datasets/a/b/test".parse().unwrap();
        assert!(split.selects("data/test-00000-of-00001.parquet"));
        assert!(!split.selects("data/train-00000-of-00001.parquet"));
        assert!(!split.selects("test.md"));
        let folder: HubSource = "hf://datasets/a/b/harmless-base".parse().unwrap();
        assert!(folder.selects("harmless-base/train.jsonl.gz"));
        assert!(!folder.selects("helpful-base/train.jsonl.gz"));
        let file: HubSource = "hf://datasets/a/b/data/x.parquet".parse().unwrap();
        assert!(file.selects("data/x.parquet"));
    }
}
