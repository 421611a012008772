//! firstrank-train: FIRST training on candle. LoRA adapters and full
//! fine-tuning with the ranking (weighted RankNet on first-identifier
//! logits), generation (LM loss on the target permutation) and combined
//! objectives. Inference (`firstrank-models`) never depends on this crate;
//! the adapters it writes are read back there (`firstrank_models::adapter`).
//!
//! - [`example`]: training lists as token sequences.
//! - [`loss`]: the objectives and their closed-form references.
//! - [`step`]: one micro-batch's forward and backward pass.
//! - [`optim`]: AdamW, schedules, clipping.
//! - [`trainer`]: the loop.
//! - [`checkpoint`]: resumable, crash-safe checkpoints.
//! - [`evaluate`]: held-out pairwise accuracy for the learning curve.
//! - [`diagnose`]: layer-wise gradient spectra of data sources.
//! - [`budget`]: fitting a run into a wall-clock budget.

pub mod budget;
pub mod checkpoint;
pub mod diagnose;
pub mod evaluate;
pub mod example;
pub mod loss;
pub mod optim;
pub mod step;
pub mod trainer;

pub use example::{prepare_example, PreparedExample};
pub use loss::Objective;
pub use optim::Schedule;
pub use trainer::{train, AdapterKind, StepReport, TrainOptions, TrainSummary};
