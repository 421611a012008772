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
    /// `--mode pointwise`: the prompt template (`qwen3_reranker`, `yes_no`
    /// for any chat model, or a TOML file).
    #[arg(long, default_value = "qwen3_reranker", value_name = "NAME|FILE")]
    pub pointwise_template: String,
    /// `--mode pointwise`: the task instruction in the prompt (default: the
    /// template's).
    #[arg(long, value_name = "TEXT")]
    pub instruction: Option<String>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// The model runs here (CPU, or CUDA with `--device cuda`).
    Local,
    /// An OpenAI-compatible server (vLLM, llama.cpp's server) runs it;
    /// `--model` is the name it serves the model under.
    Openai,
}

/// Where the model runs, and how to reach a remote one.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Remote backend")]
pub struct RemoteArgs {
    /// Run the model here (`local`) or ask an OpenAI-compatible server
    /// (`openai`: FIRST through /completions log-probabilities, generation
    /// through /chat/completions).
    #[arg(long, value_enum, default_value_t = Backend::Local)]
    pub backend: Backend,
    /// The server's API root, e.g. `http://localhost:8000/v1`.
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// Environment variable holding the API key (sent as a bearer token
    /// when it is set).
    #[arg(long, value_name = "VAR", default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
    /// The served model's chat template, to format prompts here for
    /// /completions: `chatml`, the model's directory, its
    /// tokenizer_config.json or a Jinja file. FIRST needs it; generation
    /// without it goes through /chat/completions.
    #[arg(long, value_name = "chatml|DIR|FILE")]
    pub chat_template: Option<String>,
    /// Seconds to wait for one answer.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub remote_timeout: f64,
    /// Retries of a request that got 429, 5xx or no answer (exponential
    /// backoff from 0.5 s, or the server's Retry-After).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub remote_retries: u32,
    /// Requests in flight at once (the windows of a `--batch-queries` batch).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub remote_concurrency: usize,
    /// Log-probabilities to ask for per FIRST window (default: the window
    /// size; identifiers not returned rank last).
    #[arg(long, value_name = "K")]
    pub top_logprobs: Option<usize>,
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
            pointwise: firstrank_core::pointwise::PointwiseTemplate::resolve(
                &self.pointwise_template,
            )?,
            instruction: self.instruction.clone(),
        })
    }

    /// Loads `model` as a window scorer: an encoder ([`LlmArgs::load_encoder`])
    /// or else an LLM reranker ([`LlmArgs::load`]).
    pub fn load_scorer(
        &self,
        model: &str,
        max_window: usize,
    ) -> Result<Box<dyn firstrank_core::window::WindowScorer + Send>> {
        if self.remote.backend == Backend::Openai {
            return Ok(Box::new(self.load_remote(model, max_window)?));
        }
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
            // The bundled adapters are trained for FIRST's listwise task.
            None if self.mode == ScoringMode::Pointwise => Ok(None),
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

    /// `model` served by the OpenAI-compatible server of `--base-url`.
    pub fn load_remote(
        &self,
        model: &str,
        max_window: usize,
    ) -> Result<firstrank_remote::RemoteScorer> {
        use firstrank_remote::{RemoteConfig, RemoteMode, RemoteScorer};
        let Some(base_url) = &self.remote.base_url else {
            bail!("--backend openai needs --base-url (e.g. http://localhost:8000/v1)");
        };
        if self.max_passage_tokens.is_some() || self.context_size.is_some() {
            bail!(
                "--backend openai has no tokenizer here: cut passages by words (--max-passage-words) \
                 instead of --max-passage-tokens / --context-size"
            );
        }
        if self.raw_scores {
            bail!("--raw-scores applies to cross-encoders, not to a remote LLM");
        }
        if self.adapter.is_some() {
            bail!("--adapter applies to a local model; a remote server serves its own weights");
        }
        let config = self.config(max_window)?;
        let mode = match self.mode {
            ScoringMode::First => RemoteMode::First,
            ScoringMode::Generate => RemoteMode::Generation,
            ScoringMode::Pointwise => {
                bail!("--mode pointwise needs the answer logits of every document: run the model here (--backend local)")
            }
        };
        let mut remote = RemoteConfig::new(base_url.clone(), model, mode);
        remote.template = config.template;
        remote.options = config.options;
        remote.api_key = std::env::var(&self.remote.api_key_env)
            .ok()
            .filter(|k| !k.is_empty());
        remote.chat = self
            .remote
            .chat_template
            .as_deref()
            .map(firstrank_core::chat::ChatTemplate::load)
            .transpose()?;
        if !(self.remote.remote_timeout.is_finite() && self.remote.remote_timeout > 0.0) {
            bail!("--remote-timeout must be a positive number of seconds");
        }
        remote.timeout = std::time::Duration::from_secs_f64(self.remote.remote_timeout);
        remote.retries = self.remote.remote_retries;
        remote.concurrency = self.remote.remote_concurrency;
        remote.top_logprobs = self.remote.top_logprobs;
        RemoteScorer::new(remote)
    }

    /// Loads the model without any adapter (what training starts from).
    pub fn load_base(&self, model: &str, max_window: usize) -> Result<LlmReranker> {
        if self.remote.backend == Backend::Openai {
            bail!(
                "--backend openai scores through a remote server; this command needs the model here \
                 (leave --backend at local)"
            );
        }
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
