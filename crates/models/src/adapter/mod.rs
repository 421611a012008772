//! Trained updates of a model's weights, apart from how they were trained:
//! LoRA adapters in PEFT's layout (`lora`), full fine-tuning outputs
//! (`full`), and merging an adapter into a loaded model or a GGUF file
//! (`merge`). Inference applies an adapter directory with [`apply_adapter`];
//! the training crate creates and saves them.

pub mod full;
pub mod lora;
pub mod merge;

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

use crate::transformer::CausalLm;
pub use full::FULL_WEIGHTS;
pub use lora::{LoraConfig, LoraSet, ADAPTER_CONFIG, ADAPTER_WEIGHTS};

/// Applies a trained adapter directory to `model`: a LoRA adapter
/// ([`ADAPTER_CONFIG`], merged into the projections) or a full fine-tuning
/// output ([`FULL_WEIGHTS`]). Returns how many projections changed.
pub fn apply_adapter(model: &mut CausalLm, dir: &Path) -> Result<usize> {
    if dir.join(ADAPTER_CONFIG).is_file() {
        let set = LoraSet::load(dir, model)?;
        merge::merge_into_model(model, &set)
    } else if dir.join(FULL_WEIGHTS).is_file() {
        full::load_full_weights(model, &dir.join(FULL_WEIGHTS))
    } else if dir.is_dir() {
        bail!(
            "{}: not an adapter directory (no {ADAPTER_CONFIG} or {FULL_WEIGHTS})",
            dir.display()
        )
    } else {
        bail!("{}: adapter directory not found", dir.display())
    }
}

/// Writes `tensors` as a safetensors file at `path`, atomically (firstrank's
/// [`AtomicWriter`](firstrank_core::formats::AtomicWriter): a temp file renamed
/// into place, removed on an error or an interrupt) and readable like any other
/// output (0644). The file is serialized in memory first: adapters and
/// checkpoints are megabytes; a full fine-tune of a small model, a few hundred.
pub fn save_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let bytes = safetensors::serialize(tensors, None)
        .with_context(|| format!("cannot serialize {}", path.display()))?;
    firstrank_core::formats::write_atomically(path, &bytes)?;
    Ok(())
}
