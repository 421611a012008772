//! The index's copy of the corpus, addressed by ordinal (0-based corpus
//! order), shared by the BM25 and dense indexes: `docs.jsonl` (one
//! `{"docid", "title"?, "text"}` per line) and `docs.offsets` (N+1
//! little-endian u64 byte offsets into it).

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use firstrank_core::Candidate;
use serde::{Deserialize, Serialize};

use crate::corpus::Document;

pub const DOCS_FILE: &str = "docs.jsonl";
pub const OFFSETS_FILE: &str = "docs.offsets";

#[derive(Serialize, Deserialize)]
struct StoredDoc {
    docid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    text: String,
}

pub struct DocStoreWriter {
    docs: BufWriter<File>,
    offsets: BufWriter<File>,
    pos: u64,
    count: u64,
    dir: PathBuf,
}

impl DocStoreWriter {
    pub fn create(dir: &Path) -> Result<Self> {
        let open = |name: &str| -> Result<BufWriter<File>> {
            let p = dir.join(name);
            Ok(BufWriter::with_capacity(
                1 << 20,
                File::create(&p).with_context(|| format!("creating {}", p.display()))?,
            ))
        };
        let mut w = Self {
            docs: open(DOCS_FILE)?,
            offsets: open(OFFSETS_FILE)?,
            pos: 0,
            count: 0,
            dir: dir.to_path_buf(),
        };
        w.offsets.write_all(&0u64.to_le_bytes())?;
        Ok(w)
    }

    /// Appends `doc`; returns its ordinal.
    pub fn add(&mut self, doc: &Document) -> Result<u64> {
        let mut line = serde_json::to_vec(&StoredDoc {
            docid: doc.docid.clone(),
            title: doc.title.clone(),
            text: doc.text.clone(),
        })?;
        line.push(b'\n');
        self.docs
            .write_all(&line)
            .with_context(|| format!("writing {}", self.dir.join(DOCS_FILE).display()))?;
        self.pos += line.len() as u64;
        self.offsets.write_all(&self.pos.to_le_bytes())?;
        self.count += 1;
        Ok(self.count - 1)
    }

    pub fn finish(mut self) -> Result<u64> {
        self.docs.flush()?;
        self.offsets.flush()?;
        self.docs.get_ref().sync_all()?;
        self.offsets.get_ref().sync_all()?;
        Ok(self.count)
    }
}

/// Random access to the stored documents.
pub struct DocStore {
    path: PathBuf,
    file: Mutex<File>,
    offsets: Vec<u64>,
}

impl DocStore {
    /// Opens the store and checks it against the manifest's document count.
    pub fn open(dir: &Path, expected_docs: u64) -> Result<Self> {
        let path = dir.join(DOCS_FILE);
        let off_path = dir.join(OFFSETS_FILE);
        let raw =
            std::fs::read(&off_path).with_context(|| format!("reading {}", off_path.display()))?;
        if raw.len() as u64 != (expected_docs + 1) * 8 {
            bail!(
                "{}: {} bytes, expected {} for {expected_docs} documents; the index is corrupted, rebuild it",
                off_path.display(),
                raw.len(),
                (expected_docs + 1) * 8
            );
        }
        let offsets: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let len = file.metadata()?.len();
        if offsets.last() != Some(&len) || offsets.windows(2).any(|w| w[0] > w[1]) {
            bail!(
                "{}: size {len} does not match {}; the index is corrupted, rebuild it",
                path.display(),
                off_path.display()
            );
        }
        Ok(Self {
            path,
            file: Mutex::new(file),
            offsets,
        })
    }

    pub fn len(&self) -> u64 {
        self.offsets.len() as u64 - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The document with ordinal `ord`.
    pub fn get(&self, ord: u64) -> Result<Document> {
        if ord >= self.len() {
            bail!(
                "{}: no document number {ord} (the store holds {})",
                self.path.display(),
                self.len()
            );
        }
        let (start, end) = (self.offsets[ord as usize], self.offsets[ord as usize + 1]);
        let mut buf = vec![0u8; (end - start) as usize];
        {
            let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
            f.seek(SeekFrom::Start(start))?;
            f.read_exact(&mut buf)
                .with_context(|| format!("reading {}", self.path.display()))?;
        }
        let d: StoredDoc = serde_json::from_slice(&buf).with_context(|| {
            format!(
                "{}: document {ord} (bytes {start}..{end}) is not valid JSON; the index is corrupted, rebuild it",
                self.path.display()
            )
        })?;
        Ok(d.into())
    }

    /// The document with ordinal `ord` as a reranking candidate with
    /// first-stage score `score`.
    pub fn candidate(&self, ord: u64, score: f64) -> Result<Candidate> {
        let d = self.get(ord)?;
        Ok(Candidate {
            docid: d.docid,
            score,
            title: d.title,
            text: d.text,
        })
    }

    /// Every document in ordinal order, read sequentially.
    pub fn iter(&self) -> Result<impl Iterator<Item = Result<Document>> + '_> {
        let file =
            File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        let reader = std::io::BufReader::with_capacity(1 << 20, file);
        use std::io::BufRead;
        Ok(reader.lines().map(move |line| {
            let line = line.with_context(|| format!("reading {}", self.path.display()))?;
            let d: StoredDoc = serde_json::from_str(&line).with_context(|| {
                format!(
                    "{}: invalid line; the index is corrupted, rebuild it",
                    self.path.display()
                )
            })?;
            Ok(d.into())
        }))
    }
}

impl From<StoredDoc> for Document {
    fn from(d: StoredDoc) -> Self {
        Document {
            docid: d.docid,
            title: d.title,
            text: d.text,
        }
    }
}
