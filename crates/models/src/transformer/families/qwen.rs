//! The Qwen family (GGUF `qwen2`, `qwen3`; `Qwen2ForCausalLM`,
//! `Qwen3ForCausalLM`): the llama block with q/k/v biases (Qwen2, loaded
//! where present) or per-head q/k RMSNorms (Qwen3). Qwen GGUFs keep Hugging
//! Face's q/k row order, so RoPE rotates halves in both formats; sliding
//! windows follow Qwen's `use_sliding_window` / `max_window_layers`.

use super::super::config::RopeStyle;
use super::llama::{gguf_config, hf_config};
use super::Family;

pub(in crate::transformer) static FAMILY: Family = Family {
    name: "qwen",
    gguf_archs: &["qwen2", "qwen3"],
    hf_archs: &["Qwen2ForCausalLM", "Qwen3ForCausalLM"],
    gguf_config: |meta| gguf_config(meta, "qwen", RopeStyle::HalfSplit, meta.arch == "qwen3"),
    hf_config: |cfg, arch, lm_head| {
        hf_config(cfg, arch, lm_head, "qwen", arch == "Qwen3ForCausalLM", true)
    },
    hf_text_config: super::top_level_config,
    hf_block_module: super::llama_block_modules,
    hf_norm_offset: 0.0,
    default_chat_template: None,
};
