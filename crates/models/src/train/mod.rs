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
