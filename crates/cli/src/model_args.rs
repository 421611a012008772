//! Command-line options shared by every command that loads a model: the
//! `--model` argument itself ([`ModelArg`], one definition for rerank, serve,
//! bench, train and merge) and the LLM options ([`LlmArgs`]), and turning
//! them into a loaded model.

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use firstrank_core::prompt::{PromptOptions, PromptTemplate};
use firstrank_models::reranker::{LlmReranker, RerankerConfig, ScoringMode};
use firstrank_models::transformer::WeightMode;

/// The model every command loads when `--model` is not given: SmolLM2 with
/// the FIRST adapter bundled for it.
pub const DEFAULT_MODEL: &str = "smollm2";

/// `--model`, as every command that loads a model takes it.
#[derive(Args, Debug, Clone)]
pub struct ModelArg {
    /// Model: a default model name (`smollm2`, `gemma3`, `minilm`; fetched on
    /// first use), a GGUF file, a Hugging Face model directory, or a Hugging
    /// Face repo id (`org/name`, or a GGUF in a repo, `org/name/file.gguf`).
    /// Where a command reranks, `minilm` (or a sentence-transformers
    /// directory) scores by bi-encoder cosine similarity, and a
    /// sequence-classification directory (BERT, XLM-RoBERTa) as a
    /// cross-encoder.
    #[arg(long, short, value_name = "MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceKind {
    Cpu,
    /// NVIDIA GPU 0 (needs a build with `--features cuda`).
    Cuda,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum PassagePrep {
    /// rank_llm: titles, ftfy-style repair, `[n]` -> `(n)`, 300 words scaled by 20/n.
    RankLlm,
    /// The shared Python reference: whitespace collapsed, first 100 tokens, nothing else.
    Reference,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Model")]
pub struct LlmArgs {
    /// Scoring mode.
    #[arg(long, value_enum, default_value_t = ScoringMode::First)]
    pub mode: ScoringMode,
    /// Device to run the model on.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// How GGUF weights are held.
    #[arg(long, value_enum, default_value_t = WeightMode::Quantized)]
    pub weights: WeightMode,
    /// Prompt template: `rank_zephyr_alpha` (FIRST's), `rank_zephyr_numeric`, or a TOML file.
    #[arg(long, default_value = "rank_zephyr_alpha", value_name = "NAME|FILE")]
    pub prompt_template: String,
    /// Passage preparation preset.
    #[arg(long, value_enum, default_value_t = PassagePrep::RankLlm)]
    pub passages: PassagePrep,
    /// Words kept per passage for a window of 20 (scaled by 20/n for smaller windows).
    #[arg(long, value_name = "N")]
    pub max_passage_words: Option<usize>,
    /// Also cut each passage to its first N tokens.
    #[arg(long, value_name = "N")]
    pub max_passage_tokens: Option<usize>,
    /// Prompt budget in tokens (default: the model's context length); passages
    /// are shortened with rank_llm's loop until the prompt fits.
    #[arg(long, value_name = "TOKENS")]
    pub context_size: Option<usize>,
    /// CPU threads for the model (default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// A trained adapter directory (`firstrank train` output: a PEFT LoRA
    /// adapter or full projections), merged into the model at load time.
    /// Default: the FIRST adapter bundled with the model, where one ships
    /// (`smollm2`); `none` runs the base model zero-shot.
    #[arg(long, value_name = "DIR|none")]
    pub adapter: Option<std::path::PathBuf>,
    /// Cross-encoders: write the classifier's logit instead of its sigmoid
    /// (the order is the same). The server takes `raw_scores` per request.
    #[arg(long)]
    pub raw_scores: bool,
}

/// An encoder model loaded as a scorer (a bi-encoder or a cross-encoder),
/// with what the server needs to bound requests for it.
pub struct EncoderScorer {
    pub scorer: Box<dyn firstrank_core::window::WindowScorer + Send>,
    pub counter: firstrank_models::bert::EncoderTokenCounter,
    /// The longest input the model reads, in tokens.
    pub max_tokens: usize,
    pub name: String,
}

impl LlmArgs {
    pub fn device(&self) -> Result<candle_core::Device> {
        match self.device {
            DeviceKind::Cpu => Ok(candle_core::Device::Cpu),
            DeviceKind::Cuda => {
                if !candle_core::utils::cuda_is_available() {
                    bail!("--device cuda: this binary was built without CUDA; rebuild with `cargo build --release --features cuda`");
                }
                Ok(candle_core::Device::new_cuda(0)?)
            }
        }
    }

    pub fn config(&self, max_window: usize) -> Result<RerankerConfig> {
        let mut options = match self.passages {
            PassagePrep::RankLlm => PromptOptions::rank_llm(),
            PassagePrep::Reference => PromptOptions::fixture(),
        };
        if let Some(w) = self.max_passage_words {
            if w == 0 {
                bail!("--max-passage-words must be at least 1");
            }
            options.max_words = Some(w);
        }
        if let Some(t) = self.max_passage_tokens {
            if t == 0 {
                bail!("--max-passage-tokens must be at least 1");
            }
            options.max_tokens = Some(t);
        }
        Ok(RerankerConfig {
            mode: self.mode,
            weights: self.weights,
            template: PromptTemplate::resolve(&self.prompt_template)?,
            options,
            context_size: self.context_size,
            max_window,
        })
    }

    /// Loads `model` as a window scorer: an encoder ([`LlmArgs::load_encoder`])
    /// or else an LLM reranker ([`LlmArgs::load`]).
    pub fn load_scorer(
        &self,
        model: &str,
        max_window: usize,
    ) -> Result<Box<dyn firstrank_core::window::WindowScorer + Send>> {
        if let Some(encoder) = self.load_encoder(model, self.raw_scores)? {
            return Ok(encoder.scorer);
        }
        if self.raw_scores {
            bail!(
                "--raw-scores applies to cross-encoders; `{model}` is an LLM, whose FIRST scores are its identifier logits already"
            );
        }
        Ok(Box::new(self.load(model, max_window)?))
    }

    /// `model` as an encoder scorer, or None when it is an LLM: `minilm` (or
    /// a sentence-transformers directory) scores by bi-encoder cosine
    /// similarity, a `*ForSequenceClassification` directory as a
    /// cross-encoder (its logit with `raw_scores`, else the sigmoid).
    pub fn load_encoder(&self, model: &str, raw_scores: bool) -> Result<Option<EncoderScorer>> {
        let path = std::path::Path::new(model);
        let sentence_transformers = path.join("sentence_bert_config.json").is_file();
        if model == "minilm" || sentence_transformers {
            let dir = if model == "minilm" {
                firstrank_models::fetch::ensure_model("minilm")?
            } else {
                path.to_path_buf()
            };
            if raw_scores {
                bail!("--raw-scores applies to cross-encoders; `{model}` is a bi-encoder (its scores are cosines)");
            }
            let encoder = firstrank_models::embed::SentenceEncoder::load(&dir, &self.device()?)?;
            return Ok(Some(EncoderScorer {
                counter: encoder.token_counter()?,
                max_tokens: encoder.max_seq_length(),
                name: model.to_string(),
                scorer: Box::new(firstrank_models::embed::BiEncoderScorer { encoder }),
            }));
        }
        if path.is_dir() && firstrank_models::cross_encoder::is_cross_encoder_dir(path) {
            let mut cross =
                firstrank_models::cross_encoder::CrossEncoder::load(path, &self.device()?)?;
            cross.raw_scores = raw_scores;
            return Ok(Some(EncoderScorer {
                counter: cross.token_counter()?,
                max_tokens: cross.max_len(),
                name: model.to_string(),
                scorer: Box::new(firstrank_models::cross_encoder::CrossEncoderScorer {
                    model: cross,
                }),
            }));
        }
        Ok(None)
    }

    /// The adapter directory to apply to `model`: `--adapter DIR`, nothing
    /// for `--adapter none`, else the adapter bundled with a default model.
    pub fn adapter_dir(&self, model: &str) -> Result<Option<std::path::PathBuf>> {
        match &self.adapter {
            Some(dir) if dir.as_os_str() == "none" => Ok(None),
            Some(dir) => Ok(Some(dir.clone())),
            None => match firstrank_models::bundled::bundled_adapter_for(model) {
                Some(bundled) => {
                    let dir = bundled.ensure_dir()?;
                    tracing::info!(
                        "using the FIRST adapter bundled with {model} ({}; `--adapter none` for the zero-shot base)",
                        bundled.name
                    );
                    Ok(Some(dir))
                }
                None => Ok(None),
            },
        }
    }

    /// Loads the model with its adapter ([`LlmArgs::adapter_dir`]); `max_window`
    /// is the largest window it will see.
    pub fn load(&self, model: &str, max_window: usize) -> Result<LlmReranker> {
        let mut reranker = self.load_base(model, max_window)?;
        if let Some(dir) = self.adapter_dir(model)? {
            let n = reranker.apply_adapter(&dir)?;
            tracing::info!("applied adapter {} ({n} projections)", dir.display());
        }
        Ok(reranker)
    }

    /// Loads the model without any adapter (what training starts from).
    pub fn load_base(&self, model: &str, max_window: usize) -> Result<LlmReranker> {
        if let Some(n) = self.threads {
            // candle's CPU kernels use rayon's global pool; set it before first use.
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
        let config = self.config(max_window)?;
        let device = self.device()?;
        let started = std::time::Instant::now();
        let reranker = LlmReranker::load(model, config, &device)?;
        tracing::info!(
            "loaded {} ({}, {} layers) in {:.1}s",
            reranker.name(),
            reranker.model().config().arch_name,
            reranker.model().config().n_layers,
            started.elapsed().as_secs_f64()
        );
        Ok(reranker)
    }
}
