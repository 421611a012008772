//! The model families the transformer runs, one file each: how a family's
//! GGUF metadata and Hugging Face `config.json` become a [`ModelConfig`], how
//! its safetensors names and norm weights differ from the llama layout, and
//! its chat-template quirks. The forward pass itself is family-agnostic: a
//! family only sets the switches of [`ModelConfig`] (q/k norms, sandwich
//! norms, activation, RoPE style, sliding windows, soft-caps).
//!
//! Adding a family is one new file here with a `pub(super) static FAMILY`
//! and one line in [`FAMILIES`] (CONTRIBUTING.md has the recipe).

mod gemma3;
mod llama;
mod qwen;

use anyhow::Result;

use super::config::{HfConfig, Meta, ModelConfig};

/// What the loaders need to know about one model family.
pub struct Family {
    /// Short name, as [`ModelConfig::family`] reports it.
    pub name: &'static str,
    /// `general.architecture` values of this family's GGUF files.
    pub gguf_archs: &'static [&'static str],
    /// `architectures` values of its Hugging Face `config.json`.
    pub hf_archs: &'static [&'static str],
    /// Hyper-parameters from GGUF metadata.
    pub(super) gguf_config: fn(&Meta<'_>) -> Result<ModelConfig>,
    /// Hyper-parameters from `config.json` (its text-model object), given the
    /// `architectures` value and whether the checkpoint has an `lm_head`.
    pub(super) hf_config: fn(&HfConfig<'_>, &str, bool) -> Result<ModelConfig>,
    /// For an `architectures` value whose settings sit in a nested object
    /// (multimodal checkpoints' `text_config`), that object's key.
    pub(super) hf_text_config: fn(&str) -> Option<&'static str>,
    /// The Hugging Face module of a GGUF block tensor stem (`ffn_norm`, ...)
    /// where this family's layout differs from llama's; None: llama's name.
    pub(super) hf_block_module: fn(&str) -> Option<&'static str>,
    /// Added to RMSNorm weights read from safetensors (Gemma stores `w - 1`;
    /// its GGUFs store `w`).
    pub(super) hf_norm_offset: f64,
    /// The chat template for checkpoints of this family that carry none.
    pub default_chat_template: Option<&'static str>,
}

/// Every family, looked up by GGUF architecture or `architectures` value.
pub static FAMILIES: &[&Family] = &[&llama::FAMILY, &qwen::FAMILY, &gemma3::FAMILY];

/// The family of a GGUF `general.architecture` value.
pub fn by_gguf_arch(arch: &str) -> Option<&'static Family> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.gguf_archs.contains(&arch))
}

/// The family of a `config.json` `architectures` value.
pub fn by_hf_arch(arch: &str) -> Option<&'static Family> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.hf_archs.contains(&arch))
}

/// The family called `name` ([`ModelConfig::family`]).
pub fn by_name(name: &str) -> Option<&'static Family> {
    FAMILIES.iter().copied().find(|f| f.name == name)
}

/// The GGUF architectures the transformer runs, for error messages.
pub fn supported_gguf_archs() -> Vec<&'static str> {
    FAMILIES
        .iter()
        .flat_map(|f| f.gguf_archs.iter().copied())
        .collect()
}

/// The `architectures` values the Hugging Face loader accepts.
pub fn supported_hf_archs() -> Vec<&'static str> {
    FAMILIES
        .iter()
        .flat_map(|f| f.hf_archs.iter().copied())
        .collect()
}

/// No nested text config (most families).
fn top_level_config(_arch: &str) -> Option<&'static str> {
    None
}

/// The llama layout's tensor names (most families).
fn llama_block_modules(_stem: &str) -> Option<&'static str> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_architecture_belongs_to_one_family() {
        let gguf = supported_gguf_archs();
        let hf = supported_hf_archs();
        for arch in &gguf {
            assert_eq!(
                FAMILIES
                    .iter()
                    .filter(|f| f.gguf_archs.contains(arch))
                    .count(),
                1
            );
        }
        for arch in &hf {
            assert_eq!(
                FAMILIES
                    .iter()
                    .filter(|f| f.hf_archs.contains(arch))
                    .count(),
                1
            );
        }
        assert_eq!(by_gguf_arch("qwen3").unwrap().name, "qwen");
        assert_eq!(by_hf_arch("MistralForCausalLM").unwrap().name, "llama");
        assert!(by_gguf_arch("bert").is_none());
        for f in FAMILIES {
            assert_eq!(by_name(f.name).unwrap().name, f.name);
        }
    }
}
