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

/// Writes `tensors` as a safetensors file at `path`, atomically (firstrank's
/// [`AtomicWriter`](firstrank_core::formats::AtomicWriter): a temp file renamed
/// into place, removed on an error or an interrupt) and readable like any other
/// output (0644). The file is serialized in memory first: adapters and
/// checkpoints are megabytes; a full fine-tune of a small model, a few hundred.
pub(crate) fn save_safetensors(
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let bytes = safetensors::serialize(tensors, None)
        .with_context(|| format!("cannot serialize {}", path.display()))?;
    firstrank_core::formats::write_atomically(path, &bytes)?;
    Ok(())
}
