//! Where data comes from: a local file or folder, a Hugging Face Hub dataset, or the embedded set.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{DataError, Result};
use crate::hub::HubSource;

/// A data source as a user names it on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file, or a folder whose data files (`.parquet`, `.jsonl`, `.jsonl.gz`) are read in path
    /// order.
    Path(PathBuf),
    /// `hf://datasets/OWNER/NAME[@REVISION][/FILTER]`.
    Hub(HubSource),
    /// The preference set compiled into rlxf (`embedded`). A file named `embedded` is `./embedded`.
    Embedded,
}

impl FromStr for Source {
    type Err = DataError;

    fn from_str(text: &str) -> Result<Self> {
        if text == "embedded" {
            Ok(Source::Embedded)
        } else if text.starts_with("hf://") {
            text.parse().map(Source::Hub)
        } else if text.is_empty() {
            Err(DataError::Source {
                source_text: text.to_string(),
                message: "empty source; give a path, an hf://datasets/... source or `embedded`"
                    .into(),
            })
        } else {
            Ok(Source::Path(PathBuf::from(text)))
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Path(path) => write!(f, "{}", path.display()),
            Source::Hub(hub) => write!(f, "{hub}"),
            Source::Embedded => f.write_str("embedded"),
        }
    }
}

/// True for file names rlxf can read as data: `.parquet`, `.jsonl`, `.jsonl.gz`.
pub fn is_data_file(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [".parquet", ".jsonl", ".jsonl.gz"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// The data files under `dir` (recursively, skipping hidden entries), sorted by path so the
/// reading order, and with it every id and split, is the same on every machine.
pub fn data_files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let entries = std::fs::read_dir(&folder).map_err(|e| DataError::io(&folder, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| DataError::io(&folder, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if is_data_file(&name) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_kinds_of_source() {
        assert_eq!("embedded".parse::<Source>().unwrap(), Source::Embedded);
        assert_eq!(
            "./embedded".parse::<Source>().unwrap(),
            Source::Path("./embedded".into())
        );
        assert!(matches!(
            "hf://datasets/Dahoas/rm-static".parse::<Source>().unwrap(),
            Source::Hub(_)
        ));
        assert!("".parse::<Source>().is_err());
    }

    #[test]
    fn lists_data_files_recursively_in_path_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data/.cache")).unwrap();
        for name in [
            "data/b.parquet",
            "a.jsonl.gz",
            "data/a.jsonl",
            "README.md",
            "data/.cache/x.jsonl",
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let files = data_files_under(dir.path()).unwrap();
        let relative: Vec<_> = files
            .iter()
            .map(|p| {
                p.strip_prefix(dir.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(
            relative,
            vec!["a.jsonl.gz", "data/a.jsonl", "data/b.parquet"]
        );
    }
}
