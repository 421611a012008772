//! Line-by-line reading with 1-based line numbers, byte offsets and a UTF-8
//! check that says where the bad byte is (std's `read_line` only says
//! "stream did not contain valid UTF-8").

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

pub(crate) struct Lines {
    path: PathBuf,
    reader: BufReader<File>,
    buf: Vec<u8>,
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
            line_no: 0,
            offset: 0,
        })
    }

    /// The next line, `None` at end of file. Invalid UTF-8 is an error naming
    /// the line and the byte offset.
    pub fn next_line(&mut self) -> Result<Option<Line<'_>>> {
        self.buf.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| Error::io(&self.path, e))?;
        if n == 0 {
            return Ok(None);
        }
        self.line_no += 1;
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
