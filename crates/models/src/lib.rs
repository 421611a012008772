//! firstrank-models: the model side of firstrank, on candle. Loading LLMs
//! (GGUF, Hugging Face safetensors), their tokenizers and chat templates,
//! fetching the default models, and scoring listwise windows with them
//! (FIRST single-token logits, or generated permutations), trained adapters
//! (LoRA, full weights; applying and merging them) and the FIRST adapters that
//! ship with the default models. Training itself is the `firstrank-train`
//! crate, which inference never depends on.

pub mod adapter;
pub mod bert;
pub mod bundled;
/// Chat templates live in the pure core (the remote backend renders them too).
pub use firstrank_core::chat;
pub mod cpu_alloc;
pub mod cross_encoder;
pub mod digest;
pub mod embed;
pub mod fetch;
pub mod first;
pub mod gguf_tokenizer;
pub mod hub;
pub mod reranker;
pub mod transformer;
