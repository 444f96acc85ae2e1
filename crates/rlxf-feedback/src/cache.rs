//! The persistent label cache: one SQLite file (WAL journal) mapping a hash of everything that
//! determines an answer to the answer itself.
//!
//! The key is SHA-256 over the answer kind, the backend's identity, and the full query: preamble and
//! exemplars (the template), the item with its replies in the order shown (pair and order), the
//! ending and the choices. Each answer is written in its own transaction the moment it arrives, so
//! a killed run loses nothing it was told, and a rerun asks the model only for what is missing.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{FeedbackError, Result};
use crate::template::ChoiceQuery;

/// Bumped when the meaning of a cached value changes, so old entries stop matching.
const KEY_VERSION: &str = "rlxf-feedback-cache-v1";

/// What kind of answer a key stands for: the same query may be scored or continued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    /// A [`crate::ChoiceAnswer`].
    Choices,
    /// A chain-of-thought rationale (generated text).
    Rationale,
}

impl AnswerKind {
    fn as_str(self) -> &'static str {
        match self {
            AnswerKind::Choices => "choices",
            AnswerKind::Rationale => "rationale",
        }
    }
}

/// The cache key of `query` answered by the backend `identity` (hex SHA-256). Every part is
/// length-prefixed, so no two different inputs can produce the same byte stream.
pub fn cache_key(kind: AnswerKind, identity: &str, query: &ChoiceQuery) -> String {
    let mut hasher = Sha256::new();
    let mut part = |text: &str| {
        hasher.update((text.len() as u64).to_le_bytes());
        hasher.update(text.as_bytes());
    };
    part(KEY_VERSION);
    part(kind.as_str());
    part(identity);
    part(&query.prefix);
    part(&query.body);
    part(&query.ending);
    part(&query.choices.len().to_string());
    for choice in &query.choices {
        part(choice);
    }
    hex::encode(hasher.finalize())
}

/// An open cache file.
pub struct LabelCache {
    connection: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for LabelCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabelCache")
            .field("path", &self.path)
            .finish()
    }
}

impl LabelCache {
    /// Opens (or creates) the cache at `path`, in WAL mode.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|err| FeedbackError::io(parent, err))?;
        }
        let err = |source| FeedbackError::Cache {
            path: path.to_path_buf(),
            source,
        };
        let connection = Connection::open(path).map_err(err)?;
        // WAL: readers never block the writer and a crash mid-write leaves the file consistent.
        // synchronous=NORMAL in WAL mode keeps every committed answer across a process kill (only a
        // power loss can drop the last transactions), at a fraction of FULL's fsync cost.
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        connection
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS answers (
                     key TEXT PRIMARY KEY,
                     kind TEXT NOT NULL,
                     labeler TEXT NOT NULL,
                     value TEXT NOT NULL
                 );",
            )
            .map_err(err)?;
        Ok(Self {
            connection,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql_error(&self, source: rusqlite::Error) -> FeedbackError {
        FeedbackError::Cache {
            path: self.path.clone(),
            source,
        }
    }

    /// The cached value for `key`, if any.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let text: Option<String> = self
            .connection
            .query_row("SELECT value FROM answers WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .map_err(|err| self.sql_error(err))?;
        text.map(|text| {
            serde_json::from_str(&text).map_err(|err| FeedbackError::CorruptCacheEntry {
                path: self.path.clone(),
                key: key.to_string(),
                reason: err.to_string(),
            })
        })
        .transpose()
    }

    /// Stores `value` under `key` (committed before returning). Storing a key again replaces it.
    pub fn put<T: Serialize>(
        &self,
        key: &str,
        kind: AnswerKind,
        labeler: &str,
        value: &T,
    ) -> Result<()> {
        let text = serde_json::to_string(value).expect("answers serialise to JSON");
        self.connection
            .execute(
                "INSERT OR REPLACE INTO answers (key, kind, labeler, value) VALUES (?1, ?2, ?3, ?4)",
                (key, kind.as_str(), labeler, text),
            )
            .map_err(|err| self.sql_error(err))?;
        Ok(())
    }

    /// Number of stored answers.
    pub fn len(&self) -> Result<usize> {
        let count: i64 = self
            .connection
            .query_row("SELECT COUNT(*) FROM answers", [], |row| row.get(0))
            .map_err(|err| self.sql_error(err))?;
        Ok(count as usize)
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ChoiceAnswer;

    fn query(body: &str) -> ChoiceQuery {
        ChoiceQuery {
            prefix: "Judge.\n\n".into(),
            body: body.into(),
            ending: "Preferred Response=".into(),
            choices: vec!["1".into(), "2".into()],
        }
    }

    #[test]
    fn keys_change_with_every_part() {
        let base = cache_key(AnswerKind::Choices, "m", &query("a"));
        assert_eq!(base.len(), 64);
        assert_eq!(base, cache_key(AnswerKind::Choices, "m", &query("a")));
        assert_ne!(base, cache_key(AnswerKind::Rationale, "m", &query("a")));
        assert_ne!(base, cache_key(AnswerKind::Choices, "other", &query("a")));
        assert_ne!(base, cache_key(AnswerKind::Choices, "m", &query("b")));
        let mut moved = query("a");
        // Same concatenated text, different split between template and item.
        moved.prefix = "Judge.\n\na".into();
        moved.body = String::new();
        assert_ne!(base, cache_key(AnswerKind::Choices, "m", &moved));
    }

    #[test]
    fn answers_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cache.sqlite");
        let answer = ChoiceAnswer {
            logprobs: vec![-0.5, -1.25],
            bounded: vec!["2".into()],
            truncated: true,
        };
        {
            let cache = LabelCache::open(&path).unwrap();
            assert!(cache.is_empty().unwrap());
            cache.put("k", AnswerKind::Choices, "m", &answer).unwrap();
        }
        let cache = LabelCache::open(&path).unwrap();
        assert_eq!(cache.len().unwrap(), 1);
        assert_eq!(cache.get::<ChoiceAnswer>("k").unwrap(), Some(answer));
        assert_eq!(cache.get::<ChoiceAnswer>("missing").unwrap(), None);
        let mode: String = cache
            .connection
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
