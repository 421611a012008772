//! firstrank-data: datasets by name. `dl19` where a command takes a
//! candidates file or qrels resolves, in order, to an existing path of that
//! name (a path always wins), the offline folder `FIRSTRANK_DATA_DIR`
//! (laid out like `../shared/data`: `<dataset>/bm25-top100.json`,
//! `splade-pp-ed-top100.json`, `qrels.txt`), the cache
//! (`<cache>/data/<dataset>/`, cache as for models: `FIRSTRANK_CACHE`, else
//! `$XDG_CACHE_HOME/firstrank`, else `~/.cache/firstrank`), and finally a
//! download into the cache ([`fetch`]).
//!
//! Layout: [`registry`] (the datasets and their pinned files), [`fetch`] (the
//! checked, resumable download); this file resolves names to paths.

pub mod fetch;
pub mod registry;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

pub use registry::{dataset, DataFile, Dataset, Role, DATASETS};

/// The cache's data folder: `<cache>/data`.
pub fn cache_dir() -> PathBuf {
    let base = if let Some(c) = std::env::var_os("FIRSTRANK_CACHE") {
        PathBuf::from(c)
    } else if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(x).join("firstrank")
    } else {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into()))
            .join(".cache")
            .join("firstrank")
    };
    base.join("data")
}

/// Where `file` of `set` is on this machine without downloading: the
/// offline folder, then the cache (complete files only).
pub fn local_path(set: &Dataset, file: &DataFile) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("FIRSTRANK_DATA_DIR") {
        let dir = PathBuf::from(dir);
        for name in std::iter::once(&set.name).chain(set.aliases) {
            let p = dir.join(name).join(file.file);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let cached = cache_dir().join(set.name).join(file.file);
    std::fs::metadata(&cached)
        .is_ok_and(|m| m.len() == file.size)
        .then_some(cached)
}

/// The URL `file` of `set` is downloaded from: the registry's, or
/// `$FIRSTRANK_DATA_URL/<dataset>/<file>` for a mirror.
pub fn url(set: &Dataset, file: &DataFile) -> String {
    match std::env::var("FIRSTRANK_DATA_URL") {
        Ok(base) if !base.is_empty() => {
            format!("{}/{}/{}", base.trim_end_matches('/'), set.name, file.file)
        }
        _ => file.url.to_string(),
    }
}

/// `file` of `set`, downloaded into the cache if it is not on the machine.
pub fn ensure(set: &Dataset, file: &DataFile, progress: fetch::Progress<'_>) -> Result<PathBuf> {
    if let Some(p) = local_path(set, file) {
        return Ok(p);
    }
    let target = cache_dir().join(set.name).join(file.file);
    tracing::info!(
        "fetching {} {} from {}",
        set.name,
        file.file,
        url(set, file)
    );
    fetch::fetch_file(file, &url(set, file), &target, progress)
}

/// What a name stands for where a command takes a file.
fn lookup(name: &str, role: Role) -> Result<(&'static Dataset, &'static DataFile)> {
    let Some(set) = dataset(name) else {
        bail!(
            "{name}: no such file, and not a dataset name (known: {}; `firstrank data list`)",
            registry::names()
        );
    };
    let Some(file) = set.file(role) else {
        match role {
            Role::Qrels => bail!(
                "dataset {name} has no qrels in the registry (its judgments are not pinned yet); give a qrels file"
            ),
            Role::Candidates(stage) => bail!(
                "dataset {name} has no `{stage}` first stage (it has: {})",
                set.first_stages().join(", ")
            ),
        }
    };
    Ok((set, file))
}

/// A candidates argument: an existing path as it is, else a dataset name
/// with the given first stage (`bm25`, `splade`).
pub fn candidates(arg: &Path, first_stage: &str, progress: fetch::Progress<'_>) -> Result<PathBuf> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    let name = arg.to_string_lossy();
    let (set, file) = lookup(&name, Role::Candidates(first_stage_key(first_stage)?))?;
    ensure(set, file, progress)
}

/// A qrels argument: an existing path as it is, else a dataset name.
pub fn qrels(arg: &Path, progress: fetch::Progress<'_>) -> Result<PathBuf> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    let name = arg.to_string_lossy();
    let (set, file) = lookup(&name, Role::Qrels)?;
    ensure(set, file, progress)
}

/// The registry's key for a first stage (`splade++` and `splade-pp-ed` are
/// `splade`).
fn first_stage_key(stage: &str) -> Result<&'static str> {
    match stage.to_ascii_lowercase().as_str() {
        "bm25" => Ok("bm25"),
        "splade" | "splade++" | "splade-pp-ed" => Ok("splade"),
        other => bail!("unknown first stage `{other}`: expected bm25 or splade"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registry_entry_is_well_formed() {
        for set in DATASETS {
            assert!(set.file(Role::Candidates("bm25")).is_some(), "{}", set.name);
            for f in set.files {
                assert!(f.url.starts_with("https://"), "{}", f.url);
                assert!(f.size > 0);
                match f.checksum {
                    registry::Checksum::Sha256(h) => assert_eq!(h.len(), 64, "{}", f.url),
                    registry::Checksum::Md5(h) => assert_eq!(h.len(), 32, "{}", f.url),
                }
            }
        }
        assert_eq!(dataset("trec-covid").map(|d| d.name), Some("covid"));
        assert!(first_stage_key("SPLADE++").is_ok());
        assert!(first_stage_key("dense").is_err());
    }
}
