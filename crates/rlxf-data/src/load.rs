//! Loading preference pairs from any [`Source`] into canonical [`PreferencePair`]s, with a report of
//! every record that could not be used.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::embedded::{EMBEDDED_PAIRS, EMBEDDED_PAIRS_NAME};
use crate::error::{DataError, Position, Result};
use crate::format::{detect_format, FieldNames, Format};
use crate::hub::HubOptions;
use crate::jsonl::{open_text, JsonLines};
use crate::pair::PreferencePair;
use crate::record::{to_pair, Converted, RawRecord, RecordSite};
use crate::source::{data_files_under, Source};

/// How to read a source.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The format of every file; `None` detects it per file (see [`detect_format`]).
    pub format: Option<Format>,
    pub fields: FieldNames,
    /// Turn record errors (malformed JSON, missing field, wrong type, non-UTF-8 line) into reported
    /// skips instead of failing the load. Errors that affect a whole file (empty, corrupt gzip,
    /// missing Parquet columns) always fail.
    pub skip_invalid: bool,
    pub hub: HubOptions,
}

/// The pairs a source gave, and what happened on the way.
#[derive(Debug, Clone)]
pub struct LoadedPairs {
    pub pairs: Vec<PreferencePair>,
    pub report: LoadReport,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub inputs: Vec<InputFile>,
    /// Records seen (blank lines aside), whether or not they became pairs.
    pub records_read: usize,
    /// Every record that did not become a pair, in reading order.
    pub problems: Vec<Problem>,
}

/// One file that was read.
#[derive(Debug, Clone, Serialize)]
pub struct InputFile {
    /// The path as given (or as found in a folder or the Hub cache); `embedded:...` for the
    /// embedded set.
    pub path: PathBuf,
    pub format: Format,
    /// SHA-256 of the file's bytes, as they are on disk (compressed, for gzip).
    pub sha256: String,
    pub records: usize,
}

/// A record that did not become a pair.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub path: PathBuf,
    pub position: Position,
    pub kind: ProblemKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// An HH transcript pair whose two conversations share no prompt.
    NoSharedPrompt,
    /// A record error skipped under `skip_invalid`.
    InvalidRecord,
}

impl LoadReport {
    pub fn count(&self, kind: ProblemKind) -> usize {
        self.problems.iter().filter(|p| p.kind == kind).count()
    }
}

/// Loads every pair of `source`. See [`LoadOptions`] for what fails and what is reported.
pub fn load_pairs(source: &Source, options: &LoadOptions) -> Result<LoadedPairs> {
    let mut loader = Loader::new(options);
    match source {
        Source::Embedded => {
            return load_jsonl_bytes(
                EMBEDDED_PAIRS.as_bytes(),
                Path::new(EMBEDDED_PAIRS_NAME),
                Format::Jsonl,
                options,
            )
        }
        Source::Path(path) if path.is_dir() => {
            let files = data_files_under(path)?;
            if files.is_empty() {
                return Err(DataError::Format {
                    path: path.clone(),
                    message: "folder holds no .parquet, .jsonl or .jsonl.gz file".into(),
                });
            }
            for file in files {
                loader.read_file(&file)?;
            }
        }
        Source::Path(path) => loader.read_file(path)?,
        Source::Hub(hub) => {
            for file in hub.resolve(&options.hub)? {
                loader.read_file(&file)?;
            }
        }
    }
    Ok(loader.loaded)
}

/// Loads pairs from JSONL bytes held in memory (plain, not gzip); `name` stands for the file in
/// ids and errors.
pub fn load_jsonl_bytes(
    bytes: &[u8],
    name: &Path,
    format: Format,
    options: &LoadOptions,
) -> Result<LoadedPairs> {
    let mut loader = Loader::new(options);
    let sha256 = hex::encode(Sha256::digest(bytes));
    loader.read_jsonl(name, sha256, format, JsonLines::new(bytes, name, false))?;
    Ok(loader.loaded)
}

/// Reads a canonical JSONL file (as written by [`crate::write_jsonl`]) strictly.
pub fn read_pairs_jsonl(path: &Path) -> Result<Vec<PreferencePair>> {
    let options = LoadOptions {
        format: Some(Format::Jsonl),
        ..LoadOptions::default()
    };
    Ok(load_pairs(&Source::Path(path.to_path_buf()), &options)?.pairs)
}

struct Loader<'o> {
    options: &'o LoadOptions,
    loaded: LoadedPairs,
}

impl<'o> Loader<'o> {
    fn new(options: &'o LoadOptions) -> Self {
        Loader {
            options,
            loaded: LoadedPairs {
                pairs: Vec::new(),
                report: LoadReport::default(),
            },
        }
    }

    fn read_file(&mut self, path: &Path) -> Result<()> {
        let format = match self.options.format {
            Some(format) => format,
            None => detect_format(path, &self.options.fields)?,
        };
        let sha256 = sha256_file(path)?;
        match format {
            Format::Parquet => self.read_parquet(path, sha256),
            Format::Hh | Format::Jsonl => {
                let (reader, gzip) = open_text(path)?;
                self.read_jsonl(path, sha256, format, JsonLines::new(reader, path, gzip))
            }
        }
    }

    fn read_jsonl(
        &mut self,
        path: &Path,
        sha256: String,
        format: Format,
        records: impl Iterator<Item = Result<(usize, serde_json::Map<String, serde_json::Value>)>>,
    ) -> Result<()> {
        let source_name = file_name(path);
        let mut count = 0;
        for record in records {
            count += 1;
            match record {
                Ok((line, object)) => {
                    let site = RecordSite {
                        path,
                        source_name: &source_name,
                        position: Position::Line(line),
                    };
                    self.convert(&object, &site, format)?;
                }
                Err(err) => self.record_error(err)?,
            }
        }
        self.finish_file(path, sha256, format, count)
    }

    fn read_parquet(&mut self, path: &Path, sha256: String) -> Result<()> {
        let parquet_error = |e: parquet::errors::ParquetError| DataError::Parquet {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let reader = SerializedFileReader::new(file).map_err(parquet_error)?;
        let columns: Vec<String> = reader
            .metadata()
            .file_metadata()
            .schema()
            .get_fields()
            .iter()
            .map(|field| field.name().to_string())
            .collect();
        let fields = &self.options.fields;
        let missing: Vec<String> = [&fields.prompt, &fields.chosen, &fields.rejected]
            .into_iter()
            .filter(|name| !columns.contains(name))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(DataError::ParquetColumns {
                path: path.to_path_buf(),
                missing,
                found: columns,
            });
        }
        let source_name = file_name(path);
        let mut count = 0;
        for row in reader.get_row_iter(None).map_err(parquet_error)? {
            count += 1;
            let row = row.map_err(parquet_error)?;
            let site = RecordSite {
                path,
                source_name: &source_name,
                position: Position::Row(count),
            };
            self.convert(&row, &site, Format::Parquet)?;
        }
        self.finish_file(path, sha256, Format::Parquet, count)
    }

    fn convert(
        &mut self,
        record: &impl RawRecord,
        site: &RecordSite<'_>,
        format: Format,
    ) -> Result<()> {
        match to_pair(record, site, format, &self.options.fields) {
            Ok(Converted::Pair(pair)) => self.loaded.pairs.push(pair),
            Ok(Converted::NoSharedPrompt(mismatch)) => self.loaded.report.problems.push(Problem {
                path: site.path.to_path_buf(),
                position: site.position,
                kind: ProblemKind::NoSharedPrompt,
                message: mismatch.to_string(),
            }),
            Err(err) => self.record_error(err)?,
        }
        Ok(())
    }

    /// Records a record error as a problem under `skip_invalid`; anything else fails the load.
    fn record_error(&mut self, err: DataError) -> Result<()> {
        if !(self.options.skip_invalid && err.is_record_error()) {
            return Err(err);
        }
        let (path, position) = match &err {
            DataError::NotUtf8 { path, position, .. }
            | DataError::Json { path, position, .. }
            | DataError::MissingField { path, position, .. }
            | DataError::WrongType { path, position, .. } => (path.clone(), *position),
            _ => unreachable!("is_record_error admits only the variants above"),
        };
        self.loaded.report.problems.push(Problem {
            path,
            position,
            kind: ProblemKind::InvalidRecord,
            message: err.to_string(),
        });
        Ok(())
    }

    fn finish_file(
        &mut self,
        path: &Path,
        sha256: String,
        format: Format,
        records: usize,
    ) -> Result<()> {
        if records == 0 {
            return Err(DataError::Empty {
                path: path.to_path_buf(),
            });
        }
        let report = &mut self.loaded.report;
        report.records_read += records;
        report.inputs.push(InputFile {
            path: path.to_path_buf(),
            format,
            sha256,
            records,
        });
        Ok(())
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// SHA-256 of a file's bytes, hex-encoded.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
