//! firstrank-remote: a [`WindowScorer`](firstrank_core::window::WindowScorer)
//! that asks an OpenAI-compatible server (vLLM, llama.cpp's `llama-server`,
//! any `/v1/completions` + `/v1/chat/completions` endpoint) instead of
//! running a model here. The window's prompt is core's listwise prompt, so
//! a remote model ranks exactly what a local one would be shown.
//!
//! - **FIRST** (`RemoteMode::First`): the prompt, chat-formatted here with
//!   the model's template and ending in the assistant prefix `[`, goes to
//!   `/completions` with `max_tokens: 1` and `logprobs: K`; the first
//!   output token's top log-probabilities are the identifiers' scores.
//!   Identifiers the server did not return rank below the ones it did, in
//!   first-stage order, and are counted.
//! - **Generation**: the permutation is generated (`/chat/completions`, or
//!   `/completions` when a chat template is given) and parsed with
//!   rank_llm's repair.
//!
//! Requests run `concurrency` at a time (the windows of a `--batch-queries`
//! batch), each with a timeout, retried with exponential backoff (or the
//! server's `Retry-After`) on 429, 5xx and transport errors; other statuses
//! and malformed bodies fail at once with the endpoint in the message.
//! [`standin`] is a local stand-in server speaking vLLM's and llama.cpp's
//! response shapes, for tests.

pub mod openai;
#[doc(hidden)]
pub mod standin;

pub use openai::{RemoteConfig, RemoteMode, RemoteScorer};
