//! Line-by-line reading with 1-based line numbers, byte offsets and a UTF-8
//! check that says where the bad byte is (std's `read_line` only says
//! "stream did not contain valid UTF-8"), and a cap on the length of a line
//! ([`MAX_LINE_BYTES`]) so that a file without newlines cannot make a reader
//! buffer all of it.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The longest line any line-based input may have: 64 MiB (a request JSONL
/// line with a thousand long passages is a few MB).
pub const MAX_LINE_BYTES: u64 = 64 << 20;

pub(crate) struct Lines {
    path: PathBuf,
    reader: BufReader<File>,
    buf: Vec<u8>,
    max_line: u64,
    line_no: usize,
    /// Byte offset of the start of the next line.
    offset: u64,
}

/// One line, without its terminator (`\n` or `\r\n`).
pub(crate) struct Line<'a> {
    pub no: usize,
    /// Whether the line ended with `\n` (false only for an unterminated last line).
    pub terminated: bool,
    pub text: &'a str,
}

impl Lines {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 16, file),
            buf: Vec::new(),
            max_line: MAX_LINE_BYTES,
            line_no: 0,
            offset: 0,
        })
    }

    /// Lowers the line-length cap (tests).
    #[cfg(test)]
    fn with_max_line(mut self, max: u64) -> Self {
        self.max_line = max;
        self
    }

    /// The next line, `None` at end of file. Invalid UTF-8, or a line longer
    /// than [`MAX_LINE_BYTES`], is an error naming the line and the byte offset.
    pub fn next_line(&mut self) -> Result<Option<Line<'_>>> {
        self.buf.clear();
        // At most the cap plus its newline: a longer line stops the read.
        let n = (&mut self.reader)
            .take(self.max_line + 1)
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| Error::io(&self.path, e))?;
        if n == 0 {
            return Ok(None);
        }
        self.line_no += 1;
        if n as u64 > self.max_line && self.buf.last() != Some(&b'\n') {
            return Err(Error::input(
                &self.path,
                format!("line {}", self.line_no),
                format!(
                    "the line is longer than {} bytes (starting at byte offset {} in the file); \
                     expected one record per line",
                    self.max_line, self.offset
                ),
            ));
        }
        let start = self.offset;
        self.offset += n as u64;
        let mut bytes: &[u8] = &self.buf;
        let terminated = bytes.last() == Some(&b'\n');
        if terminated {
            bytes = &bytes[..bytes.len() - 1];
            if bytes.last() == Some(&b'\r') {
                bytes = &bytes[..bytes.len() - 1];
            }
        }
        let mut skipped = 0;
        if self.line_no == 1 && bytes.starts_with(b"\xEF\xBB\xBF") {
            bytes = &bytes[3..];
            skipped = 3;
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let in_line = e.valid_up_to() + skipped;
            Error::input(
                &self.path,
                format!("line {}, byte {}", self.line_no, in_line + 1),
                format!(
                    "invalid UTF-8 (byte offset {} in the file); the input must be UTF-8 text",
                    start + in_line as u64
                ),
            )
        })?;
        Ok(Some(Line {
            no: self.line_no,
            terminated,
            text,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_over_the_cap_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("long.jsonl");
        std::fs::write(&p, format!("short\n{}\nafter\n", "x".repeat(100))).unwrap();
        let mut lines = Lines::open(&p).unwrap().with_max_line(64);
        assert_eq!(lines.next_line().unwrap().unwrap().text, "short");
        let e = lines.next_line().err().expect("the long line is refused");
        let e = e.to_string();
        assert!(
            e.contains("long.jsonl") && e.contains("line 2") && e.contains("longer than 64 bytes"),
            "{e}"
        );
        // Exactly at the cap is fine (the newline does not count).
        std::fs::write(&p, format!("{}\n", "y".repeat(64))).unwrap();
        let mut lines = Lines::open(&p).unwrap().with_max_line(64);
        assert_eq!(lines.next_line().unwrap().unwrap().text.len(), 64);
    }
}
