//! Hugging Face repo ids given as `--model`: `org/name` (a safetensors model directory) or
//! `org/name/path/to/file.gguf` (one GGUF file of a repo). A repo is looked up in the local
//! Hugging Face cache first (`$HF_HUB_CACHE`, `$HF_HOME/hub` or `~/.cache/huggingface/hub`, the
//! layout `huggingface_hub` and transformers write), and a complete cached snapshot is used
//! without contacting the hub. Otherwise the files are downloaded into that cache through the
//! hf-hub crate (cargo feature `hub`, on by default in the CLI), from `$HF_ENDPOINT` (default
//! `https://huggingface.co`) with `$HF_TOKEN` or the cache's `token` file for gated repos.
//! `HF_HUB_OFFLINE=1` forbids the network, as it does for the Python tools.
//!
//! Only what firstrank reads is downloaded: config.json, the tokenizer and chat-template files,
//! and the safetensors weights (the shards listed by `model.safetensors.index.json`, else
//! `model.safetensors`), so a repo that also carries `consolidated.safetensors` or PyTorch
//! `.bin` weights costs one copy of the model, not three. Each downloaded LFS file is checked
//! against its sha256 (the hub's etag for such files), which hf-hub itself does not do.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// How to reach the Hugging Face hub and where its cache is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubAccess {
    /// The hub cache directory (`.../huggingface/hub`); `None` when no home directory is known.
    pub cache: Option<PathBuf>,
    /// Base URL of the hub, without a trailing slash.
    pub endpoint: String,
    /// Bearer token for gated or private repos (`$HF_TOKEN`; else hf-hub reads `<cache>/../token`).
    pub token: Option<String>,
    /// Never contact the hub (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Show download progress bars (on when stderr is a terminal).
    pub progress: bool,
}

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

impl HubAccess {
    /// From the environment variables the Hugging Face tools use.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let path = |k: &str| var(k).map(PathBuf::from);
        let cache = path("HF_HUB_CACHE")
            .or_else(|| path("HF_HOME").map(|h| h.join("hub")))
            .or_else(|| path("HOME").map(|h| h.join(".cache").join("huggingface").join("hub")));
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        HubAccess {
            cache,
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
                .trim_end_matches('/')
                .to_string(),
            token: var("HF_TOKEN"),
            offline,
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }
}

/// A `--model` argument that names something on the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoRef<'a> {
    /// `org/name`: the repo's safetensors model directory.
    Model { repo: &'a str },
    /// `org/name/path/file.gguf`: one GGUF file in the repo.
    GgufFile { repo: &'a str, file: &'a str },
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Parse `org/name` or `org/name/.../file.gguf`; anything else is not a repo reference.
pub fn parse_repo_ref(arg: &str) -> Option<RepoRef<'_>> {
    let segments: Vec<&str> = arg.split('/').collect();
    if segments.len() < 2 || !segments.iter().all(|s| valid_segment(s)) {
        return None;
    }
    if segments.len() == 2 {
        return Some(RepoRef::Model { repo: arg });
    }
    let repo_len = segments[0].len() + 1 + segments[1].len();
    let file = &arg[repo_len + 1..];
    file.to_ascii_lowercase()
        .ends_with(".gguf")
        .then_some(RepoRef::GgufFile {
            repo: &arg[..repo_len],
            file,
        })
}

/// The snapshot directory `refs/main` points at in the cache, if any.
fn cached_snapshot(cache: &Path, repo: &str) -> Option<PathBuf> {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let commit = std::fs::read_to_string(repo_dir.join("refs").join("main")).ok()?;
    Some(repo_dir.join("snapshots").join(commit.trim()))
}

/// Shard file names listed by a `model.safetensors.index.json` (sorted, deduplicated).
fn index_shards(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", index.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: invalid JSON: {e}", index.display()))?;
    let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) else {
        bail!("{}: no `weight_map` object", index.display());
    };
    let mut shards = Vec::new();
    for (tensor, file) in map {
        let Some(file) = file.as_str() else {
            bail!(
                "{}: weight_map[{tensor:?}] is not a file name",
                index.display()
            );
        };
        shards.push(file.to_string());
    }
    shards.sort();
    shards.dedup();
    Ok(shards)
}

/// A cached snapshot that holds config.json and every weight file it needs.
fn complete_model_snapshot(snapshot: &Path) -> bool {
    if !snapshot.join("config.json").is_file() {
        return false;
    }
    let index = snapshot.join("model.safetensors.index.json");
    if index.is_file() {
        return index_shards(&index)
            .map(|shards| shards.iter().all(|s| snapshot.join(s).is_file()))
            .unwrap_or(false);
    }
    snapshot.join("model.safetensors").is_file()
}

/// The local directory of repo `org/name`: the cached snapshot when complete, else downloaded.
pub fn resolve_model_repo(repo: &str, hub: &HubAccess) -> Result<PathBuf> {
    if let Some(snap) = hub.cache.as_deref().and_then(|c| cached_snapshot(c, repo)) {
        if complete_model_snapshot(&snap) {
            return Ok(snap);
        }
    }
    download::model_repo(repo, hub)
}

/// The local path of `file` in repo `org/name`: from the cache, else downloaded.
pub fn resolve_repo_file(repo: &str, file: &str, hub: &HubAccess) -> Result<PathBuf> {
    if let Some(snap) = hub.cache.as_deref().and_then(|c| cached_snapshot(c, repo)) {
        let path = snap.join(file);
        if path.is_file() {
            return Ok(path);
        }
    }
    download::repo_file(repo, file, hub)
}

/// Why a repo cannot be fetched when the network may not be used.
fn offline_error(what: &str, hub: &HubAccess) -> anyhow::Error {
    let cache = hub
        .cache
        .as_ref()
        .map(|c| format!(" ({})", c.display()))
        .unwrap_or_default();
    let why = if hub.offline {
        "HF_HUB_OFFLINE is set"
    } else {
        "this firstrank was built without the `hub` feature"
    };
    anyhow::anyhow!(
        "cannot download {what}: {why}, and it is not complete in the local Hugging Face cache{cache}; \
         download it where the hub is reachable (e.g. `huggingface-cli download ...`) and pass the \
         directory or file, or copy that cache here"
    )
}

#[cfg(any(feature = "hub", test))]
/// The files of a model repo that firstrank reads, besides the weights.
const MODEL_SIDE_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
];

#[cfg(any(feature = "hub", test))]
/// Which files of a repo to download, given its file list: the side files it has and the
/// safetensors weights (`None` for the shards: they are listed by the index, read after it is
/// downloaded). Errors say what the repo lacks.
fn plan_model_download(repo: &str, files: &[String]) -> Result<(Vec<String>, WeightFiles)> {
    let has = |f: &str| files.iter().any(|x| x == f);
    if !has("config.json") {
        bail!(
            "Hugging Face repo `{repo}` has no config.json, so it is not a model directory firstrank can load{}",
            gguf_hint(repo, files)
        );
    }
    let side = MODEL_SIDE_FILES
        .iter()
        .filter(|f| has(f))
        .map(|f| f.to_string())
        .collect();
    let weights = if has("model.safetensors.index.json") {
        WeightFiles::Sharded
    } else if has("model.safetensors") {
        WeightFiles::Single
    } else {
        bail!(
            "Hugging Face repo `{repo}` has neither model.safetensors nor model.safetensors.index.json \
             (firstrank reads safetensors weights, not PyTorch .bin files){}",
            gguf_hint(repo, files)
        );
    };
    Ok((side, weights))
}

#[cfg(any(feature = "hub", test))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WeightFiles {
    Single,
    Sharded,
}

#[cfg(any(feature = "hub", test))]
fn gguf_hint(repo: &str, files: &[String]) -> String {
    let ggufs: Vec<&str> = files
        .iter()
        .filter(|f| f.to_ascii_lowercase().ends_with(".gguf"))
        .map(|f| f.as_str())
        .collect();
    match ggufs.first() {
        None => String::new(),
        Some(first) => format!(
            "; it has GGUF files ({}): pass one as `{repo}/{first}`",
            ggufs.join(", ")
        ),
    }
}

#[cfg(not(feature = "hub"))]
mod download {
    use super::*;

    pub fn model_repo(repo: &str, hub: &HubAccess) -> Result<PathBuf> {
        Err(offline_error(&format!("Hugging Face repo `{repo}`"), hub))
    }

    pub fn repo_file(repo: &str, file: &str, hub: &HubAccess) -> Result<PathBuf> {
        Err(offline_error(
            &format!("`{file}` of Hugging Face repo `{repo}`"),
            hub,
        ))
    }
}

#[cfg(feature = "hub")]
mod download {
    use super::*;
    use anyhow::Context;
    use hf_hub::api::sync::{Api, ApiBuilder, ApiError, ApiRepo};
    use hf_hub::Cache;

    fn api(hub: &HubAccess) -> Result<Api> {
        let Some(cache) = &hub.cache else {
            bail!("no Hugging Face cache directory: set HF_HUB_CACHE or HF_HOME (or HOME)");
        };
        let mut builder = ApiBuilder::from_cache(Cache::new(cache.clone()))
            .with_endpoint(hub.endpoint.clone())
            .with_progress(hub.progress)
            .with_user_agent("firstrank", env!("CARGO_PKG_VERSION"));
        if hub.token.is_some() {
            builder = builder.with_token(hub.token.clone());
        }
        builder
            .build()
            .context("cannot set up the Hugging Face hub client")
    }

    /// An hf-hub error, with what was being fetched and what the user can do about it.
    fn explain(err: ApiError, what: &str, hub: &HubAccess) -> anyhow::Error {
        let hint = match &err {
            ApiError::RequestError(e) => match e.as_ref() {
                ureq::Error::Status(401 | 403, _) => {
                    " (the repo is gated or private: accept its licence on the hub and set HF_TOKEN)"
                }
                ureq::Error::Status(404, _) => " (no such repo or file on the hub)",
                ureq::Error::Transport(_) => {
                    " (the hub is unreachable: check the network or HF_ENDPOINT; offline, download the \
                     model elsewhere and pass its directory, or set HF_HUB_OFFLINE=1 to use only the cache)"
                }
                _ => "",
            },
            _ => "",
        };
        anyhow::anyhow!("cannot download {what} from {}: {err}{hint}", hub.endpoint)
    }

    /// Check a downloaded LFS file against its sha256: the cache stores it as `blobs/<etag>`,
    /// and the hub's etag of an LFS file is its sha256 (small git files have a sha1 etag,
    /// 40 hex digits, and are not checked).
    fn verify_blob(path: &Path, what: &str) -> Result<()> {
        let Ok(blob) = std::fs::read_link(path) else {
            return Ok(()); // copied, not linked (filesystems without symlinks): nothing to compare
        };
        let Some(etag) = blob.file_name().and_then(|n| n.to_str()) else {
            return Ok(());
        };
        if etag.len() != 64 || !etag.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(());
        }
        let actual = crate::digest::sha256_file(path)?;
        if !actual.eq_ignore_ascii_case(etag) {
            let target = path.parent().unwrap_or(path).join(&blob);
            let _ = std::fs::remove_file(&target);
            let _ = std::fs::remove_file(path);
            bail!("downloaded {what} is corrupt: sha256 {actual}, the hub says {etag}; removed it, run again to retry");
        }
        Ok(())
    }

    fn fetch(api_repo: &ApiRepo, repo: &str, file: &str, hub: &HubAccess) -> Result<PathBuf> {
        let what = format!("`{file}` of Hugging Face repo `{repo}`");
        let cached = hub
            .cache
            .as_deref()
            .and_then(|c| cached_snapshot(c, repo))
            .map(|s| s.join(file))
            .filter(|p| p.is_file());
        if let Some(path) = cached {
            return Ok(path);
        }
        tracing::info!("downloading {what}");
        let path = api_repo.get(file).map_err(|e| explain(e, &what, hub))?;
        verify_blob(&path, &what)?;
        Ok(path)
    }

    pub fn model_repo(repo: &str, hub: &HubAccess) -> Result<PathBuf> {
        if hub.offline {
            return Err(offline_error(&format!("Hugging Face repo `{repo}`"), hub));
        }
        let api_repo = api(hub)?.model(repo.to_string());
        let info = api_repo.info().map_err(|e| {
            explain(
                e,
                &format!("the file list of Hugging Face repo `{repo}`"),
                hub,
            )
        })?;
        let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
        let (side, weights) = plan_model_download(repo, &files)?;
        let mut config = None;
        for file in &side {
            let path = fetch(&api_repo, repo, file, hub)?;
            if file == "config.json" {
                config = Some(path);
            }
        }
        let shards = match weights {
            WeightFiles::Single => vec!["model.safetensors".to_string()],
            WeightFiles::Sharded => {
                let index = fetch(&api_repo, repo, "model.safetensors.index.json", hub)?;
                index_shards(&index)?
            }
        };
        for shard in &shards {
            if !files.contains(shard) {
                bail!("Hugging Face repo `{repo}`: model.safetensors.index.json names `{shard}`, which the repo does not have");
            }
            fetch(&api_repo, repo, shard, hub)?;
        }
        let config = config.expect("config.json is in every plan");
        Ok(config
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")))
    }

    pub fn repo_file(repo: &str, file: &str, hub: &HubAccess) -> Result<PathBuf> {
        let what = format!("`{file}` of Hugging Face repo `{repo}`");
        if hub.offline {
            return Err(offline_error(&what, hub));
        }
        let api_repo = api(hub)?.model(repo.to_string());
        fetch(&api_repo, repo, file, hub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repo_references() {
        assert_eq!(
            parse_repo_ref("castorini/first_mistral"),
            Some(RepoRef::Model {
                repo: "castorini/first_mistral"
            })
        );
        assert_eq!(
            parse_repo_ref("org/name-GGUF/q4/model.Q4_K_M.gguf"),
            Some(RepoRef::GgufFile {
                repo: "org/name-GGUF",
                file: "q4/model.Q4_K_M.gguf"
            })
        );
        for not_a_repo in [
            "smollm2",
            "org/name/config.json",
            "/abs/path",
            "./rel/dir",
            "org//name",
            "../x/y",
            "org/na me",
        ] {
            assert_eq!(parse_repo_ref(not_a_repo), None, "{not_a_repo}");
        }
    }

    #[test]
    fn download_plan_takes_only_what_firstrank_reads() {
        let files = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (side, weights) = plan_model_download(
            "org/m",
            &files(&[
                "config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "consolidated.safetensors",
                "pytorch_model.bin",
                "model.safetensors.index.json",
                "model-00001-of-00002.safetensors",
                "README.md",
            ]),
        )
        .unwrap();
        assert_eq!(
            side,
            ["config.json", "tokenizer.json", "tokenizer_config.json"]
        );
        assert_eq!(weights, WeightFiles::Sharded);

        let err = plan_model_download("org/m", &files(&["config.json", "pytorch_model.bin"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("neither model.safetensors"), "{err}");
        let err = plan_model_download("org/m-GGUF", &files(&["README.md", "m.Q4_0.gguf"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no config.json") && err.contains("`org/m-GGUF/m.Q4_0.gguf`"),
            "{err}"
        );
    }

    #[test]
    fn cached_snapshot_must_be_complete() {
        let tmp = tempfile::tempdir().unwrap();
        let repo_dir = tmp.path().join("models--org--m");
        let snap = repo_dir.join("snapshots").join("abc");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::write(repo_dir.join("refs").join("main"), "abc\n").unwrap();
        assert_eq!(cached_snapshot(tmp.path(), "org/m"), Some(snap.clone()));
        assert!(!complete_model_snapshot(&snap));
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        std::fs::write(
            snap.join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors", "c": "s1.safetensors"}}"#,
        )
        .unwrap();
        std::fs::write(snap.join("s1.safetensors"), "x").unwrap();
        assert!(!complete_model_snapshot(&snap), "a shard is missing");
        std::fs::write(snap.join("s2.safetensors"), "x").unwrap();
        assert!(complete_model_snapshot(&snap));

        let offline = HubAccess {
            cache: Some(tmp.path().to_path_buf()),
            endpoint: DEFAULT_ENDPOINT.into(),
            token: None,
            offline: true,
            progress: false,
        };
        assert_eq!(resolve_model_repo("org/m", &offline).unwrap(), snap);
        let err = resolve_model_repo("org/other", &offline)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`org/other`") && err.contains("HF_HUB_OFFLINE"),
            "{err}"
        );
    }
}
