//! The LLM listwise reranker: turns a window of candidates into a prompt
//! (core's prompt builder + the model's chat template + tokenizer), runs the
//! model and returns one score per candidate through core's `WindowScorer`
//! seam. Two modes:
//!
//! * **FIRST** (default): one forward pass over the prompt followed by `[`;
//!   the scores are the next-token logits of the window's identifier tokens.
//!   Exactly one `forward` call per window (checked by a test).
//! * **Generation** (RankZephyr-style baseline): greedy decoding of
//!   `[X] > [Y] > ...` with a KV cache, parsed with rank_llm's repair; the
//!   scores are `n - position` in the parsed permutation.
//! * **Pointwise** (Qwen3-Reranker style): one prompt per (query, document)
//!   from a pointwise template (core's `pointwise`); the score is p(yes)
//!   from the logits of the template's two answer tokens at the last
//!   position. Documents of a window share the prompt up to the document,
//!   which the KV cache reuses; on CUDA they go through one padded pass.
//!
//! Identifiers are verified once at load time: each must be exactly one token
//! after `[`, or FIRST could not read its logit.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use firstrank_core::pointwise::{yes_probability, PointwiseTemplate};
use firstrank_core::prompt::{self, ListwisePrompt, PromptOptions, PromptTemplate, TokenCounter};
use firstrank_core::window::WindowScorer;
use firstrank_core::{Candidate, Query};
use serde::Serialize;

use crate::chat::ChatTemplate;
use crate::fetch::{resolve_model_arg, ModelLocation};
use crate::first::first_logits;
use crate::gguf_tokenizer::{tokenizer_from_gguf_file, tokenizer_from_hf_dir, GgufTokenizer};
use crate::transformer::{argmax, CausalLm, KvCache, WeightMode, EXACT_MIN_TOKENS};

/// How a window is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum ScoringMode {
    /// FIRST: rank by the logits of the first identifier (one forward pass per window).
    #[default]
    First,
    /// Generate the whole permutation `[C] > [A] > ...` greedily (RankZephyr-style baseline).
    #[cfg_attr(feature = "clap", value(alias = "generation"))]
    Generate,
    /// One prompt per document answered yes/no; the score is p(yes)
    /// (Qwen3-Reranker; `--pointwise-template`, `--instruction`).
    Pointwise,
}

impl std::fmt::Display for ScoringMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ScoringMode::First => "first",
            ScoringMode::Generate => "generate",
            ScoringMode::Pointwise => "pointwise",
        })
    }
}

/// Everything that decides how windows become model inputs.
#[derive(Debug, Clone)]
pub struct RerankerConfig {
    pub mode: ScoringMode,
    pub weights: WeightMode,
    pub template: PromptTemplate,
    pub options: PromptOptions,
    /// Prompt budget in tokens; default: the model's context length.
    pub context_size: Option<usize>,
    /// The largest window that will be scored (identifiers are checked for it).
    pub max_window: usize,
    /// The pointwise mode's prompt.
    pub pointwise: PointwiseTemplate,
    /// The pointwise mode's instruction (default: the template's).
    pub instruction: Option<String>,
}

impl Default for RerankerConfig {
    fn default() -> Self {
        Self {
            mode: ScoringMode::First,
            weights: WeightMode::Quantized,
            template: PromptTemplate::rank_zephyr_alpha(),
            options: PromptOptions::rank_llm(),
            context_size: None,
            max_window: 20,
            pointwise: PointwiseTemplate::resolve("qwen3_reranker")
                .expect("built-in template is valid"),
            instruction: None,
        }
    }
}

/// Counters over the windows scored so far.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScoringStats {
    pub windows: u64,
    pub forward_calls: u64,
    /// Prompt tokens of all windows (cached ones included).
    pub prompt_tokens: u64,
    /// Prompt tokens served from the KV cache of the previous window.
    pub cached_prompt_tokens: u64,
    pub generated_tokens: u64,
    /// Windows whose prompt had to be shortened to fit the context.
    pub shrunk_windows: u64,
    pub seconds: f64,
}

/// A loaded LLM ready to score listwise windows.
pub struct LlmReranker {
    model: CausalLm,
    tokenizer: GgufTokenizer,
    chat: ChatTemplate,
    config: RerankerConfig,
    /// Token id of each identifier (`A`, `B`, ...) as predicted after `[`
    /// (empty in pointwise mode).
    identifier_ids: Vec<u32>,
    /// Pointwise mode: the (yes, no) answer tokens.
    answer_ids: Option<[u32; 2]>,
    stop_ids: Vec<u32>,
    cache: KvCache,
    /// Reuse the KV cache of the prompt prefix shared with the previous window.
    prefix_cache: bool,
    /// Score independent FIRST windows in one padded forward pass.
    batch_windows: bool,
    stats: ScoringStats,
    name: String,
    /// PEFT's `base_model_name_or_path` for adapters trained on this model
    /// ([`crate::fetch::ModelLocation::base_model_id`]; the name when assembled by hand).
    base_model_id: String,
}

impl LlmReranker {
    /// Loads a model named by a default-model name (`smollm2`, `gemma3`,
    /// fetched on first use), a GGUF path or a model directory.
    pub fn load(model: &str, config: RerankerConfig, device: &Device) -> Result<Self> {
        let location = resolve_model_arg(model)?;
        let (path, tokenizer) = match &location {
            ModelLocation::Gguf { path, .. } => (path.clone(), tokenizer_from_gguf_file(path)?),
            ModelLocation::HfDir { dir, .. } => (dir.clone(), tokenizer_from_hf_dir(dir)?),
        };
        let model_lm = match &location {
            ModelLocation::Gguf { .. } => CausalLm::load(&path, config.weights, device)?,
            ModelLocation::HfDir { .. } => CausalLm::load_hf_dir(&path, config.weights, device)?,
        };
        // The checkpoint's own template, else its family's standard one.
        let template_source = tokenizer.chat_template.clone().or_else(|| {
            model_lm
                .family()
                .and_then(|f| f.default_chat_template)
                .map(str::to_string)
        });
        let bos = tokenizer
            .bos
            .as_ref()
            .map(|(t, _)| t.as_str())
            .unwrap_or("");
        let eos = tokenizer
            .eos
            .as_ref()
            .map(|(t, _)| t.as_str())
            .unwrap_or("");
        let chat = ChatTemplate::from_optional(template_source.as_deref(), bos, eos)
            .with_context(|| format!("{}: chat template", path.display()))?;
        if chat.is_fallback() {
            tracing::warn!(
                "{}: no chat template; using the plain fallback (system and user text joined by a blank line)",
                path.display()
            );
        }
        let mut reranker = Self::assemble(
            model_lm,
            tokenizer,
            chat,
            config,
            display_name(model, &path),
        )?;
        reranker.base_model_id = location.base_model_id(model);
        Ok(reranker)
    }

    /// Builds a reranker from parts already loaded (tests, benchmarks).
    pub fn assemble(
        model: CausalLm,
        tokenizer: GgufTokenizer,
        chat: ChatTemplate,
        config: RerankerConfig,
        name: String,
    ) -> Result<Self> {
        let (identifier_ids, answer_ids) = if config.mode == ScoringMode::Pointwise {
            let ids = answer_token_ids(&tokenizer, &chat, &config.pointwise)
                .with_context(|| format!("model {name}"))?;
            (Vec::new(), Some(ids))
        } else {
            let ids = window_identifier_ids(&tokenizer, &config)
                .with_context(|| format!("model {name}"))?;
            (ids, None)
        };
        let mut stop_ids: Vec<u32> = tokenizer.eos.iter().map(|(_, id)| *id).collect();
        for t in [
            "<end_of_turn>",
            "<|im_end|>",
            "<|eot_id|>",
            "<|endoftext|>",
            "</s>",
        ] {
            if let Some(id) = tokenizer.token_id(t) {
                stop_ids.push(id);
            }
        }
        let cache = KvCache::new(&model);
        let batch_windows = !model.device().is_cpu();
        Ok(Self {
            model,
            tokenizer,
            chat,
            config,
            identifier_ids,
            answer_ids,
            stop_ids,
            cache,
            prefix_cache: true,
            batch_windows,
            stats: ScoringStats::default(),
            base_model_id: name.clone(),
            name,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The base model as adapters trained on it name it (PEFT's
    /// `base_model_name_or_path`), e.g. `HuggingFaceTB/SmolLM2-135M-Instruct`
    /// for `smollm2`.
    pub fn base_model_id(&self) -> &str {
        &self.base_model_id
    }

    pub fn model(&self) -> &CausalLm {
        &self.model
    }

    pub fn stats(&self) -> &ScoringStats {
        &self.stats
    }

    pub fn identifier_ids(&self) -> &[u32] {
        &self.identifier_ids
    }

    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    /// Switches between FIRST and generation (the model stays loaded).
    /// Fails when the tokenizer cannot serve the new mode (identifiers or
    /// answer tokens that are not single tokens).
    pub fn set_mode(&mut self, mode: ScoringMode) -> Result<()> {
        if mode == ScoringMode::Pointwise && self.answer_ids.is_none() {
            self.answer_ids = Some(answer_token_ids(
                &self.tokenizer,
                &self.chat,
                &self.config.pointwise,
            )?);
        }
        if mode != ScoringMode::Pointwise && self.identifier_ids.is_empty() {
            self.identifier_ids = window_identifier_ids(&self.tokenizer, &self.config)?;
        }
        self.config.mode = mode;
        self.cache.clear();
        Ok(())
    }

    /// Turns the prefix KV cache on or off (on by default; off recomputes
    /// every prompt from its first token, for measuring what the cache saves).
    pub fn set_prefix_cache(&mut self, enabled: bool) {
        self.prefix_cache = enabled;
        self.cache.clear();
    }

    /// Turns batching of independent FIRST windows on or off (default: on
    /// for CUDA, off on the CPU).
    pub fn set_batch_windows(&mut self, enabled: bool) {
        self.batch_windows = enabled;
    }

    /// Zeroes the counters.
    pub fn reset_stats(&mut self) {
        self.stats = ScoringStats::default();
    }

    pub fn chat(&self) -> &ChatTemplate {
        &self.chat
    }

    pub fn config(&self) -> &RerankerConfig {
        &self.config
    }

    /// End-of-turn tokens that stop generation.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// The model, for training (which swaps projection weights).
    pub fn model_mut(&mut self) -> &mut CausalLm {
        self.cache.clear();
        &mut self.model
    }

    /// Applies a trained adapter directory to the model: a LoRA adapter
    /// (`adapter_config.json`, merged into the projections) or a full
    /// fine-tuning output (`projections.safetensors`). Returns how many
    /// projections changed.
    pub fn apply_adapter(&mut self, dir: &Path) -> Result<usize> {
        self.cache.clear();
        crate::adapter::apply_adapter(&mut self.model, dir)
    }

    fn context_budget(&self, n: usize) -> Result<usize> {
        let context = self
            .config
            .context_size
            .unwrap_or(self.model.config().context_length);
        let reserve = match self.config.mode {
            // The prompt's last position predicts the first identifier (or the answer).
            ScoringMode::First | ScoringMode::Pointwise => 1,
            ScoringMode::Generate => self.max_new_tokens(n)?,
        };
        Ok(context.saturating_sub(reserve))
    }

    /// Tokens a complete permutation of `n` identifiers takes, plus the end token.
    fn max_new_tokens(&self, n: usize) -> Result<usize> {
        let ids = self.config.template.identifiers.identifiers(n)?;
        let text = ids
            .iter()
            .map(|i| format!("[{i}]"))
            .collect::<Vec<_>>()
            .join(" > ");
        Ok(self.tokenizer.encode_raw(&text)?.len() + 2)
    }

    /// The chat-formatted prompt text of a window (FIRST's ends with `[`).
    fn chat_text(&self, prompt: &ListwisePrompt) -> Result<String> {
        let mut text = self.chat.chat_prompt(Some(&prompt.system), &prompt.user)?;
        if self.config.mode == ScoringMode::First {
            text.push_str(&prompt.assistant_prefix);
        }
        Ok(text)
    }

    /// Builds a window's prompt, fitted to the context, and its token ids.
    pub fn window_input(
        &mut self,
        query: &Query,
        window: &[Candidate],
    ) -> Result<(String, Vec<u32>)> {
        if window.len() > self.identifier_ids.len() {
            bail!(
                "a window of {} candidates exceeds the {} identifiers checked at load time",
                window.len(),
                self.identifier_ids.len()
            );
        }
        let budget = self.context_budget(window.len())?;
        let counter: &dyn TokenCounter = &self.tokenizer;
        let fitted = prompt::build_fitting(
            &query.text,
            window,
            &self.config.template,
            &self.config.options,
            Some(counter),
            budget,
            |p| Ok(self.tokenizer.encode_raw(&self.chat_text(p)?)?.len()),
        )
        .with_context(|| format!("query {}: building the prompt", query.qid))?;
        if fitted.rounds > 1 {
            self.stats.shrunk_windows += 1;
        }
        let text = self.chat_text(&fitted.prompt)?;
        let ids = self.tokenizer.encode_raw(&text)?;
        Ok((text, ids))
    }

    /// The token ids of one document's pointwise prompt, the document cut
    /// to `--max-passage-tokens` and to what the context leaves.
    /// Also says whether the document had to be cut to fit.
    pub fn pointwise_input(&self, query: &Query, doc: &Candidate) -> Result<(Vec<u32>, bool)> {
        let counter: &dyn TokenCounter = &self.tokenizer;
        let mut text = crate::embed::candidate_text(doc);
        if let Some(max) = self.config.options.max_tokens {
            if counter.count_tokens(&text)? > max {
                text = counter.truncate_to_tokens(&text, max)?;
            }
        }
        let budget = self.context_budget(1)?;
        let render = |doc_text: &str| -> Result<Vec<u32>> {
            let prompt = pointwise_text(
                &self.chat,
                &self.config.pointwise,
                query
                    .instruction
                    .as_deref()
                    .or(self.config.instruction.as_deref()),
                &query.text,
                doc_text,
            )?;
            self.tokenizer.encode_raw(&prompt)
        };
        let ids = render(&text)?;
        if ids.len() <= budget {
            return Ok((ids, false));
        }
        let doc_tokens = counter.count_tokens(&text)?;
        let over = ids.len() - budget;
        if over >= doc_tokens {
            bail!(
                "query {}: the pointwise prompt without its document is already {} tokens, over the context \
                 budget of {budget}",
                query.qid,
                ids.len().saturating_sub(doc_tokens)
            );
        }
        // Cutting can merge tokens at the seam: leave a little slack.
        let keep = doc_tokens - over;
        let cut = counter.truncate_to_tokens(&text, keep - 2.min(keep - 1))?;
        Ok((render(&cut)?, true))
    }

    /// p(yes) for each document of a window: prompts one by one with the
    /// KV cache of the shared prefix, or one padded pass when batching.
    fn pointwise_scores(&mut self, query: &Query, window: &[Candidate]) -> Result<Vec<f32>> {
        let answers = self
            .answer_ids
            .context("the reranker was loaded for another mode; reload it with --mode pointwise")?;
        let mut inputs = Vec::with_capacity(window.len());
        for doc in window {
            let (ids, cut) = self.pointwise_input(query, doc)?;
            self.stats.shrunk_windows += u64::from(cut);
            inputs.push(ids);
        }
        let before = self.model.forward_calls();
        let logits: Vec<Vec<f32>> = if self.batch_windows && inputs.len() > 1 {
            let refs: Vec<&[u32]> = inputs.iter().map(|v| v.as_slice()).collect();
            let hidden = self.model.forward_batch_last(&refs)?;
            hidden
                .iter()
                .map(|h| self.model.logits_for(h, &answers))
                .collect::<Result<_>>()?
        } else {
            let mut out = Vec::with_capacity(inputs.len());
            for ids in &inputs {
                let cached = self
                    .cache
                    .common_prefix_len(ids)
                    .min(ids.len().saturating_sub(1));
                self.stats.cached_prompt_tokens += cached as u64;
                out.push(first_logits(
                    &mut self.model,
                    &mut self.cache,
                    ids,
                    &answers,
                )?);
            }
            out
        };
        self.stats.forward_calls += self.model.forward_calls() - before;
        self.stats.prompt_tokens += inputs.iter().map(|v| v.len() as u64).sum::<u64>();
        Ok(logits.iter().map(|l| yes_probability(l[0], l[1])).collect())
    }

    /// FIRST scores of a tokenized prompt (ending with `[`): one forward pass.
    pub fn first_scores(&mut self, prompt_ids: &[u32], n: usize) -> Result<Vec<f32>> {
        let cached = self
            .cache
            .common_prefix_len(prompt_ids)
            .min(prompt_ids.len().saturating_sub(1));
        let before = self.model.forward_calls();
        let scores = first_logits(
            &mut self.model,
            &mut self.cache,
            prompt_ids,
            &self.identifier_ids[..n],
        )?;
        self.stats.forward_calls += self.model.forward_calls() - before;
        self.stats.prompt_tokens += prompt_ids.len() as u64;
        self.stats.cached_prompt_tokens += cached as u64;
        Ok(scores)
    }

    /// Greedy generation after a tokenized prompt; returns the generated text
    /// and the number of generated tokens.
    pub fn generate(
        &mut self,
        prompt_ids: &[u32],
        max_new_tokens: usize,
    ) -> Result<(String, usize)> {
        let cached = self
            .cache
            .reuse_prefix_leaving(prompt_ids, EXACT_MIN_TOKENS);
        let before = self.model.forward_calls();
        let mut hidden = self
            .model
            .forward(&prompt_ids[cached..], &mut self.cache, None)?;
        let mut out = Vec::new();
        while out.len() < max_new_tokens {
            let logits = self.model.full_logits(&hidden)?;
            let next = argmax(&logits).context("empty vocabulary")? as u32;
            if self.stop_ids.contains(&next) {
                break;
            }
            out.push(next);
            hidden = self.model.forward(&[next], &mut self.cache, None)?;
        }
        self.stats.forward_calls += self.model.forward_calls() - before;
        self.stats.prompt_tokens += prompt_ids.len() as u64;
        self.stats.cached_prompt_tokens += cached as u64;
        self.stats.generated_tokens += out.len() as u64;
        Ok((self.tokenizer.decode(&out)?, out.len()))
    }
}

/// Tokens per chunk when a long document is cut for an LLM that has no
/// `--max-passage-tokens`: about the 300 words rank_llm shows of a passage in
/// a window of 20, so a chunk is seldom cut again by the word cap.
pub const DEFAULT_LLM_CHUNK_TOKENS: usize = 300;

impl WindowScorer for LlmReranker {
    /// A passage gets `--max-passage-tokens` of the prompt, or
    /// [`DEFAULT_LLM_CHUNK_TOKENS`].
    fn passage_budget(&self) -> Option<(&dyn TokenCounter, firstrank_core::chunk::PassageBudget)> {
        Some((
            &self.tokenizer,
            firstrank_core::chunk::PassageBudget {
                tokens: self
                    .config
                    .options
                    .max_tokens
                    .unwrap_or(DEFAULT_LLM_CHUNK_TOKENS),
                shared_with_query: false,
            },
        ))
    }

    fn stats_summary(&self) -> Option<String> {
        let s = &self.stats;
        let mut line = format!(
            "{} windows, {} forward passes, {} prompt tokens ({} from the prefix cache)",
            s.windows, s.forward_calls, s.prompt_tokens, s.cached_prompt_tokens
        );
        if s.generated_tokens > 0 {
            line.push_str(&format!(", {} generated tokens", s.generated_tokens));
        }
        if s.shrunk_windows > 0 {
            line.push_str(&format!(", {} prompts shortened to fit", s.shrunk_windows));
        }
        if s.seconds > 0.0 {
            line.push_str(&format!(
                ", {:.2}s per window, {:.0} prompt tokens/s",
                s.seconds / s.windows.max(1) as f64,
                (s.prompt_tokens - s.cached_prompt_tokens) as f64 / s.seconds
            ));
        }
        Some(line)
    }

    /// FIRST windows of different queries go through one padded forward
    /// pass when batching is on (the default on CUDA, where it pays; on the
    /// CPU the work is compute-bound and the prefix cache would be lost).
    /// Generation, and single windows, go one by one.
    fn score_scale(&self) -> firstrank_core::window::ScoreScale {
        match self.config.mode {
            ScoringMode::Pointwise => firstrank_core::window::ScoreScale::Probability,
            _ => firstrank_core::window::ScoreScale::WithinWindow,
        }
    }

    fn score_windows(&mut self, windows: &[(&Query, &[Candidate])]) -> Result<Vec<Vec<f32>>> {
        if windows.len() < 2 || !self.batch_windows || self.config.mode != ScoringMode::First {
            return windows
                .iter()
                .map(|(q, w)| self.score_window(q, w))
                .collect();
        }
        let started = Instant::now();
        let mut inputs = Vec::with_capacity(windows.len());
        for (q, w) in windows {
            inputs.push(self.window_input(q, w)?.1);
        }
        let refs: Vec<&[u32]> = inputs.iter().map(|v| v.as_slice()).collect();
        let before = self.model.forward_calls();
        let hidden = self.model.forward_batch_last(&refs)?;
        let mut out = Vec::with_capacity(windows.len());
        for (h, (_, w)) in hidden.iter().zip(windows) {
            out.push(self.model.logits_for(h, &self.identifier_ids[..w.len()])?);
        }
        self.stats.forward_calls += self.model.forward_calls() - before;
        self.stats.prompt_tokens += inputs.iter().map(|v| v.len() as u64).sum::<u64>();
        self.stats.windows += windows.len() as u64;
        self.stats.seconds += started.elapsed().as_secs_f64();
        Ok(out)
    }

    fn score_window(&mut self, query: &Query, window: &[Candidate]) -> Result<Vec<f32>> {
        let started = Instant::now();
        if !self.prefix_cache {
            self.cache.clear();
        }
        if self.config.mode == ScoringMode::Pointwise {
            let scores = self.pointwise_scores(query, window)?;
            self.stats.windows += 1;
            self.stats.seconds += started.elapsed().as_secs_f64();
            return Ok(scores);
        }
        let (_, ids) = self.window_input(query, window)?;
        let n = window.len();
        let scores = match self.config.mode {
            ScoringMode::First => self.first_scores(&ids, n)?,
            ScoringMode::Generate => {
                let budget = self.max_new_tokens(n)?;
                let (text, _) = self.generate(&ids, budget)?;
                let order = prompt::parse_permutation(&text, n, self.config.template.identifiers);
                let mut scores = vec![0.0f32; n];
                for (pos, &i) in order.iter().enumerate() {
                    scores[i] = (n - pos) as f32;
                }
                scores
            }
            ScoringMode::Pointwise => unreachable!("scored above"),
        };
        self.stats.windows += 1;
        self.stats.seconds += started.elapsed().as_secs_f64();
        Ok(scores)
    }
}

/// A pointwise prompt, chat-formatted unless the template is raw.
fn pointwise_text(
    chat: &ChatTemplate,
    template: &PointwiseTemplate,
    instruction: Option<&str>,
    query: &str,
    document: &str,
) -> Result<String> {
    let p = template.prompt(instruction, query, document);
    if template.raw {
        return Ok(p.text);
    }
    let system = (!p.system.is_empty()).then_some(p.system.as_str());
    chat.chat_prompt(system, &p.text)
}

/// The identifier tokens of the listwise template for windows up to
/// `config.max_window`.
fn window_identifier_ids(tokenizer: &GgufTokenizer, config: &RerankerConfig) -> Result<Vec<u32>> {
    let identifiers = config.template.identifiers.identifiers(config.max_window)?;
    identifier_token_ids(tokenizer, &config.template.assistant_prefix, &identifiers)
}

/// The (yes, no) tokens whose logits a pointwise template compares: the one
/// token each answer adds after a probe prompt of the template, or else
/// (when the prompt's last token merges differently with the answer
/// appended, as a trailing newline can) the answer's own single token, which
/// is how Qwen3-Reranker's card looks them up (`convert_tokens_to_ids("yes")`).
fn answer_token_ids(
    tokenizer: &GgufTokenizer,
    chat: &ChatTemplate,
    template: &PointwiseTemplate,
) -> Result<[u32; 2]> {
    let probe = pointwise_text(chat, template, None, "query", "document")?;
    let base = tokenizer.encode_raw(&probe)?;
    let mut ids = [0u32; 2];
    for (slot, answer) in ids.iter_mut().zip([&template.yes, &template.no]) {
        let with = tokenizer.encode_raw(&format!("{probe}{answer}"))?;
        if with.len() == base.len() + 1 && with.starts_with(&base) {
            *slot = with[base.len()];
            continue;
        }
        match tokenizer.encode_raw(answer)?.as_slice() {
            [one] => *slot = *one,
            pieces => bail!(
                "pointwise template `{}`: the answer `{answer}` is {} tokens with this tokenizer, after the \
                 prompt and alone; the score reads one logit per answer, so the template's `yes` / `no` must \
                 be single tokens",
                template.name,
                pieces.len()
            ),
        }
    }
    if ids[0] == ids[1] {
        bail!(
            "pointwise template `{}`: `yes` and `no` are the same token",
            template.name
        );
    }
    Ok(ids)
}

/// The token FIRST reads for each identifier: `prefix + id` must tokenize as
/// `prefix`'s tokens followed by exactly one more token.
pub fn identifier_token_ids(
    tokenizer: &GgufTokenizer,
    prefix: &str,
    identifiers: &[String],
) -> Result<Vec<u32>> {
    let base = tokenizer.encode_raw(prefix)?;
    let mut ids = Vec::with_capacity(identifiers.len());
    for ident in identifiers {
        let with = tokenizer.encode_raw(&format!("{prefix}{ident}"))?;
        let single = with.len() == base.len() + 1 && with.starts_with(&base);
        if !single {
            let pieces: Vec<String> = with
                .iter()
                .map(|&t| tokenizer.decode(&[t]).unwrap_or_else(|_| format!("<{t}>")))
                .collect();
            bail!(
                "identifier `{ident}` is not a single token after `{prefix}` with this tokenizer \
                 (`{prefix}{ident}` -> {pieces:?}); FIRST reads one logit per identifier, so it needs \
                 single-token identifiers: use the alphabetical template or a smaller window"
            );
        }
        ids.push(with[base.len()]);
    }
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != ids.len() {
        bail!("two identifiers map to the same token; FIRST could not tell them apart");
    }
    Ok(ids)
}

fn display_name(arg: &str, path: &Path) -> String {
    if Path::new(arg).exists() {
        path.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| arg.to_string())
    } else {
        arg.to_string()
    }
}
