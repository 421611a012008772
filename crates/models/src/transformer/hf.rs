//! Hugging Face model directories (`config.json` + `*.safetensors`) for the
//! architectures whose GGUF form this crate runs: Llama and Mistral
//! (`LlamaForCausalLM`, `MistralForCausalLM`; FIRST's released reranker is a
//! Mistral), Qwen2 and Qwen3 (`Qwen2ForCausalLM`, `Qwen3ForCausalLM`: the
//! llama block plus q/k/v biases, resp. per-head q/k RMSNorms) and Gemma 3
//! (`Gemma3ForCausalLM`, or the text part of `Gemma3ForConditionalGeneration`).
//! The hyper-parameters come from `config.json`, in the layout of either
//! transformers 4 (`rope_theta`, `rope_scaling`) or 5 (`rope_parameters`, flat
//! or per layer type); tensors are served under the GGUF names the model
//! builder asks for. What differs from the GGUF layout is handled here:
//! - q/k rows are in Hugging Face order, so RoPE rotates the two halves of
//!   each head (llama GGUFs permute those rows for interleaved RoPE);
//! - Gemma's RMSNorm weights are stored without the `+1` that GGUF folds in
//!   (Qwen3's q/k norms are plain weights);
//! - f16, bf16 and f32 tensors are read as f32; in quantized mode the
//!   projections and embeddings become Q8_0 blocks (a quarter of f32's
//!   memory, the GGUF kernels), in f32 mode they stay dense; biases stay f32.
//!
//! Refused with a message: MLP biases, Qwen's optional sliding-window layers,
//! RoPE scaling other than linear.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::weights::{Linear, RowMatrix, WeightMode, WeightSource};
use super::{Activation, Arch, LayerSpec, ModelConfig, RopeStyle};

/// The `architectures` values of `config.json` this module loads.
pub const SUPPORTED_HF_ARCHS: &[&str] = &[
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Gemma3ForCausalLM",
    "Gemma3ForConditionalGeneration",
];

/// A Hugging Face model directory opened for reading tensors.
pub(crate) struct HfDirReader {
    config_path: PathBuf,
    tensors: MmapedSafetensors,
    /// `""` or `"language_model."` (multimodal Gemma 3 checkpoints).
    prefix: String,
    arch: Arch,
    device: Device,
}

/// `config.json` fields, with errors that name the file and the field.
struct HfConfig<'a> {
    path: &'a Path,
    v: &'a Value,
}

impl HfConfig<'_> {
    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x.as_u64().map(|n| Some(n as usize)).with_context(|| {
                format!(
                    "{}: field `{key}` is {x}, expected a non-negative integer",
                    self.path.display()
                )
            }),
        }
    }

    fn req_usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .with_context(|| format!("{}: field `{key}` is missing", self.path.display()))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x.as_f64().map(Some).with_context(|| {
                format!(
                    "{}: field `{key}` is {x}, expected a number",
                    self.path.display()
                )
            }),
        }
    }

    fn opt_bool(&self, key: &str) -> Option<bool> {
        self.v.get(key).and_then(Value::as_bool)
    }

    /// The RoPE settings of layers of `layer_type` (`full_attention`,
    /// `sliding_attention`) under transformers 5's `rope_parameters`, which is
    /// either one object for all layers or one per layer type.
    fn rope_parameters(&self, layer_type: &str) -> Option<&Value> {
        let p = self.v.get("rope_parameters").filter(|p| p.is_object())?;
        match p.get(layer_type) {
            Some(per_type) if per_type.is_object() => Some(per_type),
            _ if p.get("rope_theta").is_some() || p.get("rope_type").is_some() => Some(p),
            _ => None,
        }
    }

    /// RoPE base of `layer_type` layers: `rope_parameters`, else the
    /// transformers 4 field `legacy_key`, else `default`.
    fn rope_theta(&self, layer_type: &str, legacy_key: &str, default: f64) -> Result<f32> {
        if let Some(t) = self
            .rope_parameters(layer_type)
            .and_then(|p| p.get("rope_theta"))
        {
            return t.as_f64().map(|t| t as f32).with_context(|| {
                format!(
                    "{}: `rope_parameters.rope_theta` is {t}, expected a number",
                    self.path.display()
                )
            });
        }
        Ok(self.opt_f64(legacy_key)?.unwrap_or(default) as f32)
    }

    /// The linear RoPE scaling factor of `layer_type` layers (1 when there is
    /// none), from `rope_parameters` or transformers 4's `rope_scaling`; other
    /// scaling types are refused.
    fn linear_rope_scale(&self, layer_type: &str) -> Result<f32> {
        let (s, field) = match self.rope_parameters(layer_type) {
            Some(p) => (p, "rope_parameters"),
            None => match self.v.get("rope_scaling").filter(|s| !s.is_null()) {
                Some(s) => (s, "rope_scaling"),
                None => return Ok(1.0),
            },
        };
        let kind = s
            .get("rope_type")
            .or_else(|| s.get("type"))
            .and_then(Value::as_str)
            .unwrap_or(if field == "rope_scaling" {
                "linear"
            } else {
                "default"
            });
        match kind {
            "default" => Ok(1.0),
            "linear" => Ok(s.get("factor").and_then(Value::as_f64).unwrap_or(1.0) as f32),
            other => bail!(
                "{}: `{field}` type `{other}` is not supported (only linear RoPE scaling)",
                self.path.display()
            ),
        }
    }

    /// The `layer_types` list (transformers 5), checked against the layer count.
    fn layer_types(&self, n_layers: usize) -> Result<Option<Vec<&str>>> {
        let Some(list) = self.v.get("layer_types").filter(|t| !t.is_null()) else {
            return Ok(None);
        };
        let types: Vec<&str> = list
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if types.len() != n_layers {
            bail!(
                "{}: `layer_types` must list {n_layers} strings, one per layer; found {list}",
                self.path.display()
            );
        }
        Ok(Some(types))
    }
}

/// Opens `dir`: reads `config.json`, maps every `*.safetensors` file, and
/// returns the reader and the model's hyper-parameters.
pub(crate) fn open(dir: &Path, device: &Device) -> Result<(HfDirReader, ModelConfig)> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).with_context(|| {
        format!(
            "{}: not a Hugging Face model directory (cannot read config.json)",
            dir.display()
        )
    })?;
    let root: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", config_path.display()))?;
    let arch_name = root
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .with_context(|| {
            format!(
                "{}: field `architectures` is missing (expected e.g. [\"LlamaForCausalLM\"])",
                config_path.display()
            )
        })?
        .to_string();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no *.safetensors files", dir.display());
    }
    // SAFETY: the files are mapped read-only for the lifetime of the
    // reader; firstrank does not write them, and changing a model file
    // while it is being loaded is outside what any loader can guard against.
    let tensors = unsafe { MmapedSafetensors::multi(&files) }
        .with_context(|| format!("{}: cannot read the safetensors files", dir.display()))?;
    let (arch, cfg_value) = match arch_name.as_str() {
        "LlamaForCausalLM" | "MistralForCausalLM" | "Qwen2ForCausalLM" | "Qwen3ForCausalLM" => {
            (Arch::Llama, &root)
        }
        "Gemma3ForCausalLM" => (Arch::Gemma3, &root),
        "Gemma3ForConditionalGeneration" => (
            Arch::Gemma3,
            root.get("text_config").with_context(|| {
                format!("{}: field `text_config` is missing", config_path.display())
            })?,
        ),
        other => bail!(
            "{}: unsupported architecture `{other}` (config.json `architectures`); supported: {}",
            config_path.display(),
            SUPPORTED_HF_ARCHS.join(", ")
        ),
    };
    let prefix = if tensors.get("model.embed_tokens.weight").is_ok() {
        String::new()
    } else if tensors
        .get("language_model.model.embed_tokens.weight")
        .is_ok()
    {
        "language_model.".to_string()
    } else {
        bail!(
            "{}: tensor `model.embed_tokens.weight` is missing from the safetensors files",
            dir.display()
        );
    };
    let cfg = HfConfig {
        path: &config_path,
        v: cfg_value,
    };
    let reader = HfDirReader {
        config_path: config_path.clone(),
        tensors,
        prefix,
        arch,
        device: device.clone(),
    };
    let has_lm_head = reader.has_tensor("output.weight");
    let config = match arch {
        Arch::Llama => llama_config(&cfg, &arch_name, has_lm_head)?,
        Arch::Gemma3 => gemma3_config(&cfg, &arch_name, has_lm_head)?,
    };
    Ok((reader, config))
}

/// Llama, Mistral, Qwen2 and Qwen3: the llama block; Qwen3 adds q/k norms.
fn llama_config(cfg: &HfConfig<'_>, arch_name: &str, has_lm_head: bool) -> Result<ModelConfig> {
    let hidden = cfg.req_usize("hidden_size")?;
    let n_heads = cfg.req_usize("num_attention_heads")?;
    let head_dim = match cfg.opt_usize("head_dim")? {
        Some(d) => d,
        None if n_heads > 0 && hidden % n_heads == 0 => hidden / n_heads,
        None => bail!(
            "{}: hidden_size {hidden} is not a multiple of num_attention_heads {n_heads} \
             (and `head_dim` is not given)",
            cfg.path.display()
        ),
    };
    if cfg.opt_bool("mlp_bias") == Some(true) {
        bail!(
            "{}: `mlp_bias` is true; MLP biases are not supported",
            cfg.path.display()
        );
    }
    let n_layers = cfg.req_usize("num_hidden_layers")?;
    let qwen = arch_name.starts_with("Qwen");
    let window = cfg.opt_usize("sliding_window")?;
    let types = cfg.layer_types(n_layers)?;
    let mut layers = Vec::with_capacity(n_layers);
    for i in 0..n_layers {
        // Which layers slide: `layer_types` (transformers 5); else Qwen's
        // `use_sliding_window` from layer `max_window_layers` on; else
        // Mistral's `sliding_window` on every layer.
        let sliding = match &types {
            Some(t) => t[i] == "sliding_attention",
            None if qwen => {
                cfg.opt_bool("use_sliding_window") == Some(true)
                    && i >= cfg.opt_usize("max_window_layers")?.unwrap_or(0)
            }
            None => window.is_some(),
        };
        let layer_type = if sliding {
            "sliding_attention"
        } else {
            "full_attention"
        };
        let sliding_window = match sliding {
            true => Some(window.with_context(|| {
                format!(
                    "{}: layer {i} uses sliding-window attention but `sliding_window` is not set",
                    cfg.path.display()
                )
            })?),
            false => None,
        };
        layers.push(LayerSpec {
            sliding_window,
            rope_theta: cfg.rope_theta(layer_type, "rope_theta", 10_000.0)?,
            rope_scale: cfg.linear_rope_scale(layer_type)?,
        });
    }
    Ok(ModelConfig {
        arch: Arch::Llama,
        arch_name: arch_name.to_string(),
        n_layers,
        hidden,
        intermediate: cfg.req_usize("intermediate_size")?,
        n_heads,
        n_kv_heads: cfg.opt_usize("num_key_value_heads")?.unwrap_or(n_heads),
        head_dim,
        vocab: cfg.req_usize("vocab_size")?,
        context_length: cfg.opt_usize("max_position_embeddings")?.unwrap_or(4096),
        rms_eps: cfg.opt_f64("rms_norm_eps")?.unwrap_or(1e-5),
        rope_style: RopeStyle::HalfSplit,
        rope_theta: cfg.rope_theta("full_attention", "rope_theta", 10_000.0)?,
        rope_theta_local: None,
        sliding_window: layers.iter().find_map(|l| l.sliding_window),
        layers,
        attn_scale: 1.0 / (head_dim as f64).sqrt(),
        embed_scale: None,
        activation: Activation::Silu,
        qk_norm: arch_name == "Qwen3ForCausalLM",
        sandwich_norms: false,
        final_logit_softcap: None,
        attn_logit_softcap: None,
        tied_embeddings: cfg.opt_bool("tie_word_embeddings").unwrap_or(false) || !has_lm_head,
    })
}

fn gemma3_config(cfg: &HfConfig<'_>, arch_name: &str, has_lm_head: bool) -> Result<ModelConfig> {
    let hidden = cfg.req_usize("hidden_size")?;
    let n_heads = cfg.req_usize("num_attention_heads")?;
    let n_layers = cfg.req_usize("num_hidden_layers")?;
    let head_dim = cfg.opt_usize("head_dim")?.unwrap_or(256);
    let window = cfg.opt_usize("sliding_window")?.unwrap_or(512);
    let rope_theta = cfg.rope_theta("full_attention", "rope_theta", 1_000_000.0)?;
    let rope_local = cfg.rope_theta("sliding_attention", "rope_local_base_freq", 10_000.0)?;
    let global_scale = cfg.linear_rope_scale("full_attention")?;
    let local_scale = match cfg.rope_parameters("sliding_attention") {
        // transformers 4 applied `rope_scaling` to the global layers only.
        Some(_) => cfg.linear_rope_scale("sliding_attention")?,
        None => 1.0,
    };
    // Which layers slide: `layer_types` when given, else every layer but each
    // `sliding_window_pattern`-th (6).
    let pattern = cfg.opt_usize("sliding_window_pattern")?.unwrap_or(6).max(1);
    let types = cfg.layer_types(n_layers)?;
    let layers = (0..n_layers)
        .map(|i| {
            let sliding = match &types {
                Some(t) => t[i] == "sliding_attention",
                None => (i + 1) % pattern != 0,
            };
            if sliding {
                LayerSpec {
                    sliding_window: Some(window),
                    rope_theta: rope_local,
                    rope_scale: local_scale,
                }
            } else {
                LayerSpec {
                    sliding_window: None,
                    rope_theta,
                    rope_scale: global_scale,
                }
            }
        })
        .collect();
    let query_pre_attn_scalar = cfg
        .opt_f64("query_pre_attn_scalar")?
        .unwrap_or(head_dim as f64);
    Ok(ModelConfig {
        arch: Arch::Gemma3,
        arch_name: arch_name.to_string(),
        n_layers,
        hidden,
        intermediate: cfg.req_usize("intermediate_size")?,
        n_heads,
        n_kv_heads: cfg.opt_usize("num_key_value_heads")?.unwrap_or(n_heads),
        head_dim,
        vocab: cfg.req_usize("vocab_size")?,
        context_length: cfg.opt_usize("max_position_embeddings")?.unwrap_or(32_768),
        rms_eps: cfg.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
        rope_style: RopeStyle::HalfSplit,
        rope_theta,
        rope_theta_local: Some(rope_local),
        sliding_window: Some(window),
        layers,
        attn_scale: 1.0 / query_pre_attn_scalar.sqrt(),
        embed_scale: Some((hidden as f64).sqrt() as f32),
        activation: Activation::GeluTanh,
        qk_norm: true,
        sandwich_norms: true,
        final_logit_softcap: cfg.opt_f64("final_logit_softcapping")?,
        attn_logit_softcap: cfg.opt_f64("attn_logit_softcapping")?,
        tied_embeddings: cfg.opt_bool("tie_word_embeddings").unwrap_or(true) || !has_lm_head,
    })
}

impl HfDirReader {
    /// The Hugging Face name of a GGUF tensor name, for this architecture.
    fn hf_name(&self, gguf: &str) -> Option<String> {
        let p = &self.prefix;
        match gguf {
            "token_embd.weight" => return Some(format!("{p}model.embed_tokens.weight")),
            "output.weight" => return Some(format!("{p}lm_head.weight")),
            "output_norm.weight" => return Some(format!("{p}model.norm.weight")),
            _ => {}
        }
        let rest = gguf.strip_prefix("blk.")?;
        let (layer, name) = rest.split_once('.')?;
        let (name, kind) = match name.strip_suffix(".weight") {
            Some(n) => (n, "weight"),
            None => (name.strip_suffix(".bias")?, "bias"),
        };
        let module = match (name, self.arch) {
            ("attn_norm", _) => "input_layernorm",
            ("attn_q", _) => "self_attn.q_proj",
            ("attn_k", _) => "self_attn.k_proj",
            ("attn_v", _) => "self_attn.v_proj",
            ("attn_output", _) => "self_attn.o_proj",
            ("attn_q_norm", _) => "self_attn.q_norm",
            ("attn_k_norm", _) => "self_attn.k_norm",
            ("ffn_gate", _) => "mlp.gate_proj",
            ("ffn_up", _) => "mlp.up_proj",
            ("ffn_down", _) => "mlp.down_proj",
            // Llama's norm before the MLP is called post_attention_layernorm;
            // Gemma 3 has both a post-attention and a pre-MLP norm.
            ("ffn_norm", Arch::Llama) => "post_attention_layernorm",
            ("ffn_norm", Arch::Gemma3) => "pre_feedforward_layernorm",
            ("post_attention_norm", Arch::Gemma3) => "post_attention_layernorm",
            ("post_ffw_norm", Arch::Gemma3) => "post_feedforward_layernorm",
            _ => return None,
        };
        Some(format!("{p}model.layers.{layer}.{module}.{kind}"))
    }

    /// A tensor as f32 on the CPU, shape-checked; Gemma's norms get `+1`.
    fn load(&self, gguf: &str, shape: &[usize]) -> Result<Tensor> {
        let name = self.hf_name(gguf).with_context(|| {
            format!(
                "{}: no Hugging Face tensor corresponds to `{gguf}`",
                self.config_path.display()
            )
        })?;
        let t = self.tensors.load(&name, &Device::Cpu).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot read tensor `{name}` from the safetensors files: {e}",
                self.config_path.display()
            )
        })?;
        if t.dims() != shape {
            bail!(
                "{}: tensor `{name}` has shape {:?}, expected {shape:?} from config.json",
                self.config_path.display(),
                t.dims()
            );
        }
        let t = t.to_dtype(DType::F32)?;
        let is_norm = gguf.ends_with("norm.weight");
        Ok(if self.arch == Arch::Gemma3 && is_norm {
            (t + 1.0)?
        } else {
            t
        })
    }
}

impl WeightSource for HfDirReader {
    fn path(&self) -> &Path {
        &self.config_path
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.hf_name(name)
            .is_some_and(|n| self.tensors.get(&n).is_ok())
    }

    fn dense(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(self.load(name, shape)?.to_device(&self.device)?)
    }

    fn linear(&mut self, name: &str, out: usize, inp: usize, mode: WeightMode) -> Result<Linear> {
        let w = self.load(name, &[out, inp])?.to_device(&self.device)?;
        Linear::from_f32(w, mode)
    }

    fn rows(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        mode: WeightMode,
    ) -> Result<RowMatrix> {
        let w = self.load(name, &[rows, cols])?.to_device(&self.device)?;
        RowMatrix::from_f32(w, mode)
    }
}
