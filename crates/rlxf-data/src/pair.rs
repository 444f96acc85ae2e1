//! The canonical record types and their JSONL form.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// One preference judgement.
///
/// `prompt` is the conversation so far in HH transcript form, ending with the final
/// `"\n\nAssistant:"`; `chosen` and `rejected` are the final assistant replies exactly as they follow
/// it (leading space kept), so `prompt + chosen` is the original chosen transcript byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferencePair {
    /// Stable id: the source's own id, or `<file name>:L<line>` / `<file name>:R<row>`.
    pub id: String,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// Context tag for per-context analysis (see [`crate::context`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

/// One prompt of a prompt set (evaluation or generation), in the same transcript form as
/// [`PreferencePair::prompt`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prompt {
    pub id: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

/// Writes records as canonical JSONL (one object per line), atomically: the file appears complete
/// or not at all.
pub fn write_jsonl<T: Serialize>(path: &Path, records: &[T]) -> Result<()> {
    write_atomic(path, |out| {
        for record in records {
            serde_json::to_writer(&mut *out, record).map_err(std::io::Error::other)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// Writes a file through a temporary file in the same folder and a rename, so readers never see a
/// partial file and a failure leaves the old file (or nothing) in place; see [`crate::atomic_file`].
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    crate::atomic_file::write_with(path, fill).map_err(|source| DataError::io(path, source))
}
