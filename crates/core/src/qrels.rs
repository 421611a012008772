//! Relevance judgments (TREC qrels): reading `qid iter docid grade` files and
//! looking grades up. Hand-written: the format is four whitespace-separated
//! fields, and the crates that read it pull in a whole evaluation stack.
//!
//! Conventions, checked against trec_eval's `get_qrels.c` / `form_res_rels.c`:
//! * exactly four fields per line, separated by any whitespace; `iter` is ignored;
//! * a line whose first character is `#` is a comment (trec_eval skips those too);
//! * blank lines are skipped (trec_eval rejects them; skipping is harmless);
//! * the grade must be an integer (trec_eval's `atol` would silently read `x` as 0:
//!   we report it instead); negative grades are kept and mean "judged, not relevant,
//!   no gain", as in trec_eval;
//! * a second line for the same (qid, docid) is an error, naming both lines:
//!   trec_eval also stops on duplicate judgments ("duplicate docs").

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};

/// Graded judgments: qid -> docid -> grade.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Qrels {
    judgments: BTreeMap<String, BTreeMap<String, i32>>,
}

const LINE_SHAPE: &str = "`qid iter docid grade`";

/// Qrels being read, with the line of each (qid, docid)'s first judgment for
/// the duplicate message.
#[derive(Default)]
struct QrelsReader {
    qrels: Qrels,
    first_line: BTreeMap<(String, String), usize>,
}

impl QrelsReader {
    fn line(&mut self, line: &str, lineno: usize, path: &Path) -> Result<()> {
        if line.starts_with('#') || line.trim().is_empty() {
            return Ok(());
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() != 4 {
            return Err(Error::input(
                path,
                format!("line {lineno}"),
                format!(
                    "expected 4 whitespace-separated fields {LINE_SHAPE}, found {}",
                    fields.len()
                ),
            ));
        }
        let (qid, docid, grade_text) = (fields[0], fields[2], fields[3]);
        let grade: i32 = grade_text.parse().map_err(|_| {
            Error::input(
                path,
                format!("line {lineno}, field `grade`"),
                format!("expected an integer relevance grade (line shape {LINE_SHAPE}), found `{grade_text}`"),
            )
        })?;
        let key = (qid.to_string(), docid.to_string());
        if let Some(first) = self.first_line.get(&key) {
            return Err(Error::input(
                path,
                format!("line {lineno}"),
                format!(
                    "duplicate judgment for query `{qid}`, docid `{docid}` (first at line {first}); \
                     expected one line per (qid, docid), as trec_eval requires"
                ),
            ));
        }
        self.first_line.insert(key, lineno);
        self.qrels.insert(qid, docid, grade);
        Ok(())
    }
}

impl Qrels {
    /// An empty set of judgments (fill it with [`Qrels::insert`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a qrels file, line by line (lines are capped in length, and
    /// invalid UTF-8 is reported with its line and byte offset).
    pub fn load(path: &Path) -> Result<Self> {
        let mut lines = crate::formats::lines::Lines::open(path)?;
        let mut reader = QrelsReader::default();
        while let Some(line) = lines.next_line()? {
            reader.line(line.text, line.no, path)?;
        }
        Ok(reader.qrels)
    }

    /// Parses qrels text; `path` is only used to name the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut reader = QrelsReader::default();
        for (index, line) in text.lines().enumerate() {
            reader.line(line, index + 1, path)?;
        }
        Ok(reader.qrels)
    }

    /// Sets the grade of `docid` for `qid`; returns the previous grade, if any.
    pub fn insert(&mut self, qid: &str, docid: &str, grade: i32) -> Option<i32> {
        self.judgments
            .entry(qid.to_string())
            .or_default()
            .insert(docid.to_string(), grade)
    }

    /// The queries with at least one judgment, in string order.
    pub fn judged_qids(&self) -> impl Iterator<Item = &str> + '_ {
        self.judgments.keys().map(String::as_str)
    }

    /// The grade of `docid` for `qid`, or `None` when unjudged.
    pub fn grade(&self, qid: &str, docid: &str) -> Option<i32> {
        self.judgments.get(qid)?.get(docid).copied()
    }

    /// All judgments of one query (docid -> grade), or `None` for an unjudged query.
    pub fn query(&self, qid: &str) -> Option<&BTreeMap<String, i32>> {
        self.judgments.get(qid)
    }

    /// Number of judged queries.
    pub fn num_queries(&self) -> usize {
        self.judgments.len()
    }

    /// Total number of (qid, docid) judgments.
    pub fn num_judgments(&self) -> usize {
        self.judgments.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.judgments.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Qrels> {
        Qrels::parse(text, Path::new("judg.txt"))
    }

    #[test]
    fn parses_grades_comments_and_blank_lines() {
        let q = parse("# header\n1 0 d1 2\n\n1 Q0 d2 0\n2\tQ0\td1\t-1\n").unwrap();
        assert_eq!(q.grade("1", "d1"), Some(2));
        assert_eq!(q.grade("1", "d2"), Some(0));
        assert_eq!(q.grade("2", "d1"), Some(-1));
        assert_eq!(q.grade("2", "d2"), None);
        assert_eq!(q.grade("3", "d1"), None);
        assert_eq!(q.judged_qids().collect::<Vec<_>>(), vec!["1", "2"]);
        assert_eq!(q.num_queries(), 2);
        assert_eq!(q.num_judgments(), 3);
    }

    #[test]
    fn wrong_column_count_names_file_line_and_shape() {
        let err = parse("1 0 d1 2\n1 0 d2\n").unwrap_err().to_string();
        assert!(err.contains("judg.txt"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("qid iter docid grade"), "{err}");
        assert!(err.contains("found 3"), "{err}");
        let err = parse("1 0 d1 2 extra\n").unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("found 5"), "{err}");
    }

    #[test]
    fn non_integer_grade_names_field() {
        let err = parse("1 0 d1 2\n1 0 d2 1.5\n").unwrap_err().to_string();
        assert!(err.contains("judg.txt"), "{err}");
        assert!(err.contains("line 2, field `grade`"), "{err}");
        assert!(err.contains("`1.5`"), "{err}");
        assert!(err.contains("integer"), "{err}");
    }

    #[test]
    fn duplicate_judgment_is_an_error_naming_both_lines() {
        let err = parse("1 0 d1 2\n1 0 d2 0\n1 0 d1 2\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("first at line 1"), "{err}");
        assert!(err.contains("`d1`"), "{err}");
        // The same docid under another query is not a duplicate.
        assert!(parse("1 0 d1 2\n2 0 d1 2\n").is_ok());
    }

    #[test]
    fn load_reads_a_file_and_names_invalid_utf8_by_line_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("qrels.txt");
        std::fs::write(&p, b"1 0 d1 2\n1 0 d2 1\n").unwrap();
        assert_eq!(Qrels::load(&p).unwrap().grade("1", "d2"), Some(1));
        std::fs::write(&p, b"1 0 d1 2\n1 0 d\xff2 1\n").unwrap();
        let err = Qrels::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("qrels.txt")
                && err.contains("line 2, byte 6")
                && err.contains("offset 14"),
            "{err}"
        );
    }

    #[test]
    fn load_reports_missing_file() {
        let err = Qrels::load(Path::new("/nonexistent/qrels.txt")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/qrels.txt"));
    }
}
