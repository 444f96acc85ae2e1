//! Line-by-line JSONL reading (plain or gzip) that names the file and line of every problem.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{DataError, Position, Result};

/// The first two bytes of every gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Opens a file for line reading, decompressing it when it starts with the gzip magic bytes
/// (whatever its extension says). Returns the reader and whether it is gzip.
pub fn open_text(path: &Path) -> Result<(Box<dyn BufRead>, bool)> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut magic = [0u8; 2];
    let read = read_prefix(&mut file, &mut magic).map_err(|e| DataError::io(path, e))?;
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    if read == 2 && magic == GZIP_MAGIC {
        // Multi-member aware: `gzip -c a b > c` and some exporters write several members.
        let decoder = flate2::read::MultiGzDecoder::new(BufReader::new(file));
        Ok((Box::new(BufReader::new(decoder)), true))
    } else {
        Ok((Box::new(BufReader::new(file)), false))
    }
}

fn read_prefix(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Iterates over the JSON objects of a JSONL stream as `(line number, object)`, skipping blank
/// lines. A bad line yields an error naming the file and line and the iteration goes on with the
/// next line; a broken stream (corrupt gzip, I/O failure) yields one error and ends the iteration.
pub struct JsonLines<R> {
    reader: R,
    path: PathBuf,
    gzip: bool,
    line: usize,
    buf: Vec<u8>,
    finished: bool,
}

impl<R: BufRead> JsonLines<R> {
    /// `path` is only used to name the input in errors; `gzip` tells a corrupt stream from a plain
    /// I/O failure.
    pub fn new(reader: R, path: impl Into<PathBuf>, gzip: bool) -> Self {
        JsonLines {
            reader,
            path: path.into(),
            gzip,
            line: 0,
            buf: Vec::new(),
            finished: false,
        }
    }

    fn stream_error(&mut self, source: std::io::Error) -> DataError {
        self.finished = true;
        let corrupt = matches!(
            source.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::InvalidData
                | std::io::ErrorKind::InvalidInput
        );
        if self.gzip && corrupt {
            DataError::Gzip {
                path: self.path.clone(),
                after_line: self.line,
                message: source.to_string(),
            }
        } else {
            DataError::Io {
                path: self.path.clone(),
                source,
            }
        }
    }
}

impl<R: BufRead> Iterator for JsonLines<R> {
    type Item = Result<(usize, Map<String, Value>)>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.finished {
            self.buf.clear();
            match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => self.finished = true,
                Ok(_) => {
                    self.line += 1;
                    let position = Position::Line(self.line);
                    let text = match std::str::from_utf8(&self.buf) {
                        Ok(text) => text,
                        Err(e) => {
                            return Some(Err(DataError::NotUtf8 {
                                path: self.path.clone(),
                                position,
                                message: e.to_string(),
                            }))
                        }
                    };
                    // A byte-order mark on the first line is an editor artefact, not data.
                    let text = if self.line == 1 {
                        text.trim_start_matches('\u{feff}')
                    } else {
                        text
                    };
                    if text.trim().is_empty() {
                        continue;
                    }
                    return Some(parse_object(text, &self.path, position));
                }
                Err(e) => return Some(Err(self.stream_error(e))),
            }
        }
        None
    }
}

fn parse_object(
    text: &str,
    path: &Path,
    position: Position,
) -> Result<(usize, Map<String, Value>)> {
    let line = match position {
        Position::Line(n) | Position::Row(n) => n,
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => Ok((line, object)),
        Ok(other) => Err(DataError::Json {
            path: path.to_path_buf(),
            position,
            message: format!("expected a JSON object, found {}", json_kind(&other)),
        }),
        Err(e) => Err(DataError::Json {
            path: path.to_path_buf(),
            position,
            message: e.to_string(),
        }),
    }
}

/// A JSON value's kind as a user reads it in an error message.
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8]) -> Vec<Result<(usize, Map<String, Value>)>> {
        JsonLines::new(bytes, "in.jsonl", false).collect()
    }

    #[test]
    fn numbers_lines_and_skips_blank_ones() {
        let records = read_all(b"{\"a\":1}\n\n  \n{\"a\":2}");
        let lines: Vec<usize> = records.iter().map(|r| r.as_ref().unwrap().0).collect();
        assert_eq!(lines, vec![1, 4]);
    }

    #[test]
    fn bad_lines_are_reported_and_reading_goes_on() {
        let records = read_all(b"{\"a\":1}\n{oops\n[1]\n\xff\xfe\n{\"a\":5}\n");
        assert!(matches!(
            records[1],
            Err(DataError::Json {
                position: Position::Line(2),
                ..
            })
        ));
        let err = records[2].as_ref().unwrap_err().to_string();
        assert!(
            err.contains("line 3") && err.contains("found an array"),
            "{err}"
        );
        assert!(matches!(
            records[3],
            Err(DataError::NotUtf8 {
                position: Position::Line(4),
                ..
            })
        ));
        assert_eq!(records[4].as_ref().unwrap().0, 5);
    }

    #[test]
    fn leading_byte_order_mark_is_ignored() {
        let records = read_all("\u{feff}{\"a\":1}\n".as_bytes());
        assert_eq!(records.len(), 1);
        assert!(records[0].is_ok());
    }
}
