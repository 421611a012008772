//! Resumable checkpoints of a training run (`<output>/checkpoint/`): the
//! trained tensors, the optimizer state and `state.json`, which records the
//! step, the progress through the data and what identifies the run.
//!
//! Replacing a checkpoint survives a kill at any point: each checkpoint's
//! tensors go to files named by its step (`weights-000040.safetensors`,
//! `optimizer-000040.safetensors`), each written atomically and durably,
//! and only then is `state.json`, which names them, replaced (atomically,
//! durably); files of older checkpoints are removed after that. So
//! `state.json` always names a complete set, the old one until the new one is
//! on disk. Checkpoints of earlier versions (`weights.safetensors`,
//! `optimizer.safetensors`, no run identity) still resume.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use firstrank_core::formats::write_atomically;
use firstrank_models::adapter::save_safetensors;
use serde::{Deserialize, Serialize};

/// The checkpoint's folder inside a run's output directory.
pub const CHECKPOINT_DIR: &str = "checkpoint";
const STATE_FILE: &str = "state.json";
const LEGACY_WEIGHTS: &str = "weights.safetensors";
const LEGACY_OPTIMIZER: &str = "optimizer.safetensors";

/// What must match for `--resume` to continue a run rather than start a
/// different one: everything that decides the updates, except how long the
/// run goes on (`--max-steps`, `--epochs`, `--max-time` may change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunIdentity {
    pub base_model: String,
    pub objective: String,
    pub seed: u64,
    /// The adapter description (LoRA rank, alpha, dropout, targets, layers; or full).
    pub adapter: String,
    pub learning_rate: f64,
    pub schedule: String,
    pub warmup_steps: usize,
    pub grad_accum: usize,
    pub ranking_weight: f64,
    pub passage_loss_weight: f64,
    /// NEFTune alpha, 0 when off.
    pub neftune_alpha: f32,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    /// SHA-256 over the examples' ids and token ids, in order.
    pub data_sha256: String,
    pub examples: usize,
}

impl RunIdentity {
    /// The fields that differ from `other`, as `name: this vs other`.
    pub fn differences(&self, other: &RunIdentity) -> Vec<String> {
        let a = serde_json::to_value(self).unwrap_or_default();
        let b = serde_json::to_value(other).unwrap_or_default();
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
            return vec!["(unreadable run identity)".into()];
        };
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, v)| format!("{k}: {v} in the checkpoint, {} now", b[k.as_str()]))
            .collect()
    }
}

/// `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    pub step: usize,
    pub examples: usize,
    pub seed: u64,
    pub objective: String,
    pub tokens: usize,
    pub first_loss: f64,
    pub elapsed_s: f64,
    /// The files of this checkpoint's tensors (absent: the legacy names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunIdentity>,
}

/// A checkpoint read back.
pub struct Checkpoint {
    pub state: CheckpointState,
    pub weights: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
}

/// Reads `<out_dir>/checkpoint`; errors name the file at fault.
pub fn read_checkpoint(out_dir: &Path) -> Result<Checkpoint> {
    let dir = out_dir.join(CHECKPOINT_DIR);
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path)
        .with_context(|| format!("--resume: cannot read {}", state_path.display()))?;
    let state: CheckpointState = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a firstrank checkpoint", state_path.display()))?;
    let load = |name: &str| -> Result<HashMap<String, Tensor>> {
        let path = dir.join(name);
        candle_core::safetensors::load(&path, &Device::Cpu)
            .with_context(|| format!("--resume: cannot read {}", path.display()))
    };
    let weights = load(state.weights_file.as_deref().unwrap_or(LEGACY_WEIGHTS))?;
    let optimizer = load(state.optimizer_file.as_deref().unwrap_or(LEGACY_OPTIMIZER))?;
    Ok(Checkpoint {
        state,
        weights,
        optimizer,
    })
}

/// Where the process is inside [`write_checkpoint`], for the failure
/// injection of the kill tests: `FIRSTRANK_FAULT=checkpoint:<stage>[:<n>]`
/// aborts the process (as a kill would) when the `n`-th checkpoint of this
/// process (default: the first) reaches `stage` (`weights`, `optimizer` or
/// `state`: after that file is written).
fn fault_point(stage: &str, nth: usize) {
    let Ok(spec) = std::env::var("FIRSTRANK_FAULT") else {
        return;
    };
    let mut parts = spec.split(':');
    if parts.next() != Some("checkpoint") || parts.next() != Some(stage) {
        return;
    }
    let want = parts.next().and_then(|n| n.parse().ok()).unwrap_or(1);
    if nth == want {
        eprintln!("FIRSTRANK_FAULT: aborting at checkpoint {nth}, after {stage}");
        std::process::abort();
    }
}

/// Checkpoints written by this process (for [`fault_point`]).
static CHECKPOINTS_WRITTEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Writes the checkpoint of `state.step` into `<out_dir>/checkpoint`,
/// replacing the previous one without ever leaving it incomplete.
pub fn write_checkpoint(
    out_dir: &Path,
    weights: &HashMap<String, Tensor>,
    optimizer: &HashMap<String, Tensor>,
    state: &CheckpointState,
) -> Result<()> {
    let dir = out_dir.join(CHECKPOINT_DIR);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create checkpoint directory {}", dir.display()))?;
    let nth = CHECKPOINTS_WRITTEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let weights_file = format!("weights-{:06}.safetensors", state.step);
    let optimizer_file = format!("optimizer-{:06}.safetensors", state.step);
    save_safetensors(weights, &dir.join(&weights_file))?;
    fault_point("weights", nth);
    save_safetensors(optimizer, &dir.join(&optimizer_file))?;
    fault_point("optimizer", nth);
    let state = CheckpointState {
        weights_file: Some(weights_file.clone()),
        optimizer_file: Some(optimizer_file.clone()),
        ..state.clone()
    };
    let json = serde_json::to_string_pretty(&state)? + "\n";
    write_atomically(dir.join(STATE_FILE), json.as_bytes())?;
    fault_point("state", nth);
    remove_stale_files(&dir, &[&weights_file, &optimizer_file])
}

/// Removes the tensor files of earlier checkpoints (and temp files a kill
/// left) from `dir`, keeping `keep`.
fn remove_stale_files(dir: &Path, keep: &[&str]) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut stale: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let ours = name.ends_with(".safetensors") || name.ends_with(".tmp");
        if ours && !keep.contains(&name) {
            stale.push(path);
        }
    }
    for path in stale {
        if let Err(e) = std::fs::remove_file(&path) {
            bail!(
                "cannot remove the old checkpoint file {}: {e}",
                path.display()
            );
        }
    }
    Ok(())
}
