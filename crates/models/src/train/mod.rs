//! FIRST training on candle: LoRA adapters and full fine-tuning with the
//! ranking (weighted RankNet on first-identifier logits), generation (LM
//! loss on the target permutation) and combined objectives.
//!
//! - [`loss`]: the objectives and their closed-form references.
//! - [`lora`]: adapters, merging, PEFT-compatible files.
//! - [`optim`]: AdamW, schedules, clipping.
//! - [`trainer`]: examples, the loop, checkpoints.
//! - [`merge`]: a base GGUF with an adapter merged in.

pub mod lora;
pub mod loss;
pub mod merge;
pub mod optim;
pub mod trainer;

pub use lora::{LoraConfig, LoraSet, LoraTarget};
pub use loss::Objective;
pub use optim::Schedule;
pub use trainer::{
    prepare_example, train, AdapterKind, PreparedExample, StepReport, TrainOptions, TrainSummary,
};

/// Writes `tensors` as a safetensors file readable like any other output
/// (the safetensors crate writes through a private 0600 temporary file).
pub(crate) fn save_safetensors(
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    use anyhow::Context;
    candle_core::safetensors::save(tensors, path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("cannot set the permissions of {}", path.display()))?;
    }
    Ok(())
}
