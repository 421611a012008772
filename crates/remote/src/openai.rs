//! The OpenAI-compatible client: request bodies, retries, and reading
//! scores out of vLLM's and llama.cpp's response shapes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use firstrank_core::chat::ChatTemplate;
use firstrank_core::prompt::{self, ListwisePrompt, PromptOptions, PromptTemplate};
use firstrank_core::window::WindowScorer;
use firstrank_core::{Candidate, Query};
use serde_json::{json, Value};

/// How a remote model scores a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteMode {
    /// The first output token's log-probabilities (FIRST).
    First,
    /// A generated permutation `[C] > [A] > ...`.
    Generation,
}

/// Where the server is and how to talk to it.
pub struct RemoteConfig {
    /// The API root, e.g. `http://localhost:8000/v1`.
    pub base_url: String,
    /// The model name the server knows.
    pub model: String,
    /// Sent as `Authorization: Bearer ...` when set.
    pub api_key: Option<String>,
    pub mode: RemoteMode,
    pub template: PromptTemplate,
    pub options: PromptOptions,
    /// Formats the prompt for `/completions` (needed by FIRST, which must
    /// end the prompt with the assistant prefix); without it generation
    /// goes through `/chat/completions` and the server formats.
    pub chat: Option<ChatTemplate>,
    /// Per request.
    pub timeout: Duration,
    /// Retries after the first attempt (429, 5xx, transport errors).
    pub retries: u32,
    /// The first retry's wait; each next one doubles (at most 30 s).
    pub retry_base: Duration,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Log-probabilities asked for (default: the window size).
    pub top_logprobs: Option<usize>,
}

impl RemoteConfig {
    /// Defaults: rank_zephyr_alpha, rank_llm passages, 60 s timeout, 3
    /// retries from 0.5 s, 4 requests at once.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>, mode: RemoteMode) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            mode,
            template: PromptTemplate::rank_zephyr_alpha(),
            options: PromptOptions::rank_llm(),
            chat: None,
            timeout: Duration::from_secs(60),
            retries: 3,
            retry_base: Duration::from_millis(500),
            concurrency: 4,
            top_logprobs: None,
        }
    }
}

#[derive(Default)]
struct Stats {
    windows: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    missing: AtomicU64,
    missing_windows: AtomicU64,
    micros: AtomicU64,
}

/// Scores windows through the server; see the crate docs.
pub struct RemoteScorer {
    config: RemoteConfig,
    agent: ureq::Agent,
    stats: Stats,
    warned_missing: Mutex<bool>,
}

/// The longest response body read (a window's answer is a few kB).
const MAX_BODY_BYTES: u64 = 16 << 20;

impl RemoteScorer {
    pub fn new(config: RemoteConfig) -> Result<Self> {
        let base = &config.base_url;
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--base-url `{base}`: expected an http:// or https:// URL (e.g. http://localhost:8000/v1)");
        }
        if config.mode == RemoteMode::First && config.chat.is_none() {
            bail!(
                "FIRST through a remote server reads the first token after the prompt's `[`, so the prompt is \
                 formatted here: give the model's chat template with --chat-template (`chatml`, the model's \
                 directory, its tokenizer_config.json or a Jinja file)"
            );
        }
        if config.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        let agent = ureq::AgentBuilder::new()
            .timeout(config.timeout)
            .max_idle_connections_per_host(config.concurrency)
            .build();
        Ok(Self {
            config,
            agent,
            stats: Stats::default(),
            warned_missing: Mutex::new(false),
        })
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}/{path}", self.config.base_url.trim_end_matches('/'))
    }

    fn prompt(&self, query: &Query, window: &[Candidate]) -> Result<ListwisePrompt> {
        prompt::build(
            &query.text,
            window,
            &self.config.template,
            &self.config.options,
            None,
        )
    }

    /// The chat-formatted prompt for `/completions` (FIRST's ends with `[`).
    fn completion_prompt(&self, chat: &ChatTemplate, p: &ListwisePrompt) -> Result<String> {
        let mut text = chat.chat_prompt(Some(&p.system), &p.user)?;
        if self.config.mode == RemoteMode::First {
            text.push_str(&p.assistant_prefix);
        }
        Ok(text)
    }

    /// POSTs `body` as JSON with retries; the parsed JSON answer.
    fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let url = self.endpoint(path);
        let text = body.to_string();
        let mut last = String::new();
        for attempt in 0..=self.config.retries {
            if attempt > 0 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let mut request = self
                .agent
                .post(&url)
                .set("Content-Type", "application/json");
            if let Some(key) = &self.config.api_key {
                request = request.set("Authorization", &format!("Bearer {key}"));
            }
            let retry_after = match request.send_string(&text) {
                Ok(response) => {
                    let mut raw = String::new();
                    std::io::Read::read_to_string(
                        &mut std::io::Read::take(response.into_reader(), MAX_BODY_BYTES),
                        &mut raw,
                    )
                    .map_err(|e| anyhow!("{url}: reading the response: {e}"))?;
                    return serde_json::from_str(&raw).map_err(|e| {
                        anyhow!(
                            "{url}: the response is not valid JSON ({e}): {}",
                            snippet(&raw)
                        )
                    });
                }
                Err(ureq::Error::Status(code, response)) => {
                    let retryable = code == 429 || code >= 500;
                    let retry_after = response
                        .header("Retry-After")
                        .and_then(|v| v.trim().parse::<f64>().ok());
                    let body = response.into_string().unwrap_or_default();
                    last = format!("HTTP {code}: {}", snippet(&body));
                    if !retryable {
                        bail!("{url}: {last}");
                    }
                    retry_after
                }
                Err(ureq::Error::Transport(t)) => {
                    last = t.to_string();
                    None
                }
            };
            if attempt < self.config.retries {
                let backoff = self.config.retry_base.as_secs_f64() * 2f64.powi(attempt as i32);
                let wait = retry_after.unwrap_or(backoff).clamp(0.0, 30.0);
                tracing::debug!("{url}: {last}; retrying in {wait:.2}s");
                std::thread::sleep(Duration::from_secs_f64(wait));
            }
        }
        bail!(
            "{url}: no answer after {} attempts: {last}",
            self.config.retries + 1
        )
    }

    fn first_scores(&self, query: &Query, window: &[Candidate]) -> Result<Vec<f32>> {
        let chat = self.config.chat.as_ref().expect("checked in new");
        let p = self.prompt(query, window)?;
        let k = self.config.top_logprobs.unwrap_or(window.len()).max(1);
        let body = json!({
            "model": self.config.model,
            "prompt": self.completion_prompt(chat, &p)?,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": k,
        });
        let answer = self.post("completions", &body)?;
        let Some(top) = first_token_logprobs(&answer) else {
            bail!(
                "{}: the answer has no log-probabilities for the first token (choices[0].logprobs); FIRST \
                 needs a server that returns `logprobs` on /completions (vLLM, llama.cpp's server): {}",
                self.endpoint("completions"),
                snippet(&answer.to_string())
            );
        };
        let (scores, missing) = identifier_scores(&top, &p.identifiers);
        if missing > 0 {
            self.stats
                .missing
                .fetch_add(missing as u64, Ordering::Relaxed);
            self.stats.missing_windows.fetch_add(1, Ordering::Relaxed);
            let mut warned = self
                .warned_missing
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !*warned {
                *warned = true;
                tracing::warn!(
                    "query {}: {missing} of {} identifiers were not among the {k} log-probabilities returned; \
                     they rank last in first-stage order (the run's summary counts them all)",
                    query.qid,
                    window.len()
                );
            }
        }
        Ok(scores)
    }

    fn generation_scores(&self, query: &Query, window: &[Candidate]) -> Result<Vec<f32>> {
        let p = self.prompt(query, window)?;
        let n = window.len();
        // "[T] > " is at most 5 tokens for the usual tokenizers.
        let max_tokens = 5 * n + 8;
        // With a chat template the prompt is formatted here (/completions);
        // otherwise the server formats the messages (/chat/completions).
        let (path, body, answer_at, field) = match &self.config.chat {
            Some(chat) => (
                "completions",
                json!({
                    "model": self.config.model,
                    "prompt": self.completion_prompt(chat, &p)?,
                    "max_tokens": max_tokens,
                    "temperature": 0.0,
                }),
                "/choices/0/text",
                "choices[0].text",
            ),
            None => (
                "chat/completions",
                json!({
                    "model": self.config.model,
                    "messages": [
                        {"role": "system", "content": p.system},
                        {"role": "user", "content": p.user},
                    ],
                    "max_tokens": max_tokens,
                    "temperature": 0.0,
                }),
                "/choices/0/message/content",
                "choices[0].message.content",
            ),
        };
        let answer = self.post(path, &body)?;
        let Some(text) = answer.pointer(answer_at).and_then(Value::as_str) else {
            bail!(
                "{}: the answer has no {field}: {}",
                self.endpoint(path),
                snippet(&answer.to_string())
            );
        };
        let order = prompt::parse_permutation(text, n, self.config.template.identifiers);
        let mut scores = vec![0.0; n];
        for (position, &i) in order.iter().enumerate() {
            scores[i] = (n - position) as f32;
        }
        Ok(scores)
    }

    fn score_one(&self, query: &Query, window: &[Candidate]) -> Result<Vec<f32>> {
        let started = Instant::now();
        let scores = match self.config.mode {
            RemoteMode::First => self.first_scores(query, window),
            RemoteMode::Generation => self.generation_scores(query, window),
        }
        .map_err(|e| e.context(format!("query {}", query.qid)))?;
        self.stats.windows.fetch_add(1, Ordering::Relaxed);
        self.stats
            .micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(scores)
    }
}

impl WindowScorer for RemoteScorer {
    fn score_window(&mut self, query: &Query, window: &[Candidate]) -> Result<Vec<f32>> {
        self.score_one(query, window)
    }

    /// Up to `concurrency` requests in flight; results in input order.
    fn score_windows(&mut self, windows: &[(&Query, &[Candidate])]) -> Result<Vec<Vec<f32>>> {
        if windows.len() < 2 || self.config.concurrency == 1 {
            return windows.iter().map(|(q, w)| self.score_one(q, w)).collect();
        }
        let next = AtomicUsize::new(0);
        let results: Vec<Mutex<Option<Result<Vec<f32>>>>> =
            windows.iter().map(|_| Mutex::new(None)).collect();
        let this = &*self;
        std::thread::scope(|scope| {
            for _ in 0..this.config.concurrency.min(windows.len()) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((q, w)) = windows.get(i) else { break };
                    let r = this.score_one(q, w);
                    *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                });
            }
        });
        results
            .into_iter()
            .map(|m| {
                m.into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .unwrap_or_else(|| Err(anyhow!("a window was not scored")))
            })
            .collect()
    }

    fn stats_summary(&self) -> Option<String> {
        let s = &self.stats;
        let windows = s.windows.load(Ordering::Relaxed);
        let mut line = format!(
            "{windows} windows through {} ({} requests, {} retried)",
            self.config.base_url,
            s.requests.load(Ordering::Relaxed),
            s.retries.load(Ordering::Relaxed)
        );
        if self.config.mode == RemoteMode::First {
            line.push_str(&format!(
                ", {} identifiers missing from the log-probabilities in {} windows",
                s.missing.load(Ordering::Relaxed),
                s.missing_windows.load(Ordering::Relaxed)
            ));
        }
        if windows > 0 {
            line.push_str(&format!(
                ", {:.2}s per window",
                s.micros.load(Ordering::Relaxed) as f64 / 1e6 / windows as f64
            ));
        }
        Some(line)
    }
}

/// The first output token's top log-probabilities as (token, logprob), in
/// either shape: OpenAI's legacy completions / vLLM
/// (`logprobs.top_logprobs[0]` = `{token: logprob}`) or llama.cpp and the
/// chat API (`logprobs.content[0].top_logprobs` = `[{token, logprob}]`).
pub fn first_token_logprobs(answer: &Value) -> Option<Vec<(String, f32)>> {
    let lp = answer.pointer("/choices/0/logprobs")?;
    if let Some(map) = lp.pointer("/top_logprobs/0").and_then(Value::as_object) {
        return Some(
            map.iter()
                .filter_map(|(t, v)| Some((t.clone(), v.as_f64()? as f32)))
                .collect(),
        );
    }
    let list = lp.pointer("/content/0/top_logprobs")?.as_array()?;
    Some(
        list.iter()
            .filter_map(|e| {
                Some((
                    e.get("token")?.as_str()?.to_string(),
                    e.get("logprob")?.as_f64()? as f32,
                ))
            })
            .collect(),
    )
}

/// One score per identifier from the returned tokens (`A`, ` A` and `[A`
/// all count for `A`; the best of them wins), and how many identifiers were
/// missing. A missing identifier scores one below the lowest returned
/// (all the same, so the window's stable sort keeps them in first-stage
/// order).
pub fn identifier_scores(top: &[(String, f32)], identifiers: &[String]) -> (Vec<f32>, usize) {
    let mut found: Vec<Option<f32>> = vec![None; identifiers.len()];
    for (token, logprob) in top {
        if !logprob.is_finite() {
            continue;
        }
        let t = token.trim();
        let t = t.strip_prefix('[').unwrap_or(t).trim();
        if let Some(i) = identifiers.iter().position(|id| id == t) {
            found[i] = Some(found[i].map_or(*logprob, |f: f32| f.max(*logprob)));
        }
    }
    let floor = found
        .iter()
        .flatten()
        .copied()
        .fold(f32::INFINITY, f32::min);
    let floor = if floor.is_finite() {
        floor - 1.0
    } else {
        -100.0
    };
    let missing = found.iter().filter(|f| f.is_none()).count();
    (
        found.into_iter().map(|f| f.unwrap_or(floor)).collect(),
        missing,
    )
}

/// The start of a long text, for error messages.
fn snippet(text: &str) -> String {
    let mut end = text.len().min(300);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() {
        format!("{}...", &text[..end])
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| char::from(b'A' + i as u8).to_string())
            .collect()
    }

    #[test]
    fn both_response_shapes_give_the_first_tokens_logprobs() {
        let vllm = json!({"choices": [{"text": "B", "logprobs": {
            "tokens": ["B"], "token_logprobs": [-0.1],
            "top_logprobs": [{"B": -0.1, "A": -2.5, " C": -3.0}]}}]});
        let mut got = first_token_logprobs(&vllm).unwrap();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got.len(), 3);
        let llama = json!({"choices": [{"text": "B", "logprobs": {"content": [
            {"token": "B", "logprob": -0.1, "top_logprobs": [
                {"token": "B", "logprob": -0.1}, {"token": "A", "logprob": -2.5}]}]}}]});
        assert_eq!(first_token_logprobs(&llama).unwrap().len(), 2);
        assert!(first_token_logprobs(&json!({"choices": [{"text": "B"}]})).is_none());
    }

    #[test]
    fn missing_identifiers_rank_last_in_input_order() {
        let top = vec![
            ("B".to_string(), -0.1),
            (" A".to_string(), -2.0),
            ("[A".to_string(), -1.5),
            ("Z".to_string(), -0.5),
        ];
        let (scores, missing) = identifier_scores(&top, &ids(4));
        assert_eq!(missing, 2);
        assert_eq!(scores, vec![-1.5, -0.1, -2.5, -2.5]);
        let (scores, missing) = identifier_scores(&[], &ids(2));
        assert_eq!((scores, missing), (vec![-100.0, -100.0], 2));
    }
}
