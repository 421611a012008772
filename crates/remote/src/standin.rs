//! A local stand-in for an OpenAI-compatible server, for tests (here and in
//! the CLI's): a plain HTTP/1.1 listener on loopback whose answers come from
//! a closure, plus a toy "model" that answers FIRST and generation requests
//! in vLLM's or llama.cpp's response shape by counting query words in the
//! prompt's passages. Hand-written (a few dozen lines over std's TCP) so the
//! tests can send exactly the malformed bodies, slow answers and statuses
//! they need.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// One answer of the stand-in.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
    /// Wait this long before answering (a slow server).
    pub delay: Duration,
}

impl Answer {
    pub fn json(value: Value) -> Self {
        Self::raw(200, value.to_string())
    }

    pub fn raw(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Handler = dyn Fn(&str, &Value, usize) -> Answer + Send + Sync;

/// A running stand-in; stops when dropped.
pub struct StandIn {
    /// The API root to give the client (`http://127.0.0.1:PORT/v1`).
    pub base_url: String,
    requests: Arc<Mutex<Vec<(String, Value)>>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
}

impl StandIn {
    /// Serves `handler(path, body, n)`, where `n` counts the requests so far
    /// (0 for the first).
    pub fn start(
        handler: impl Fn(&str, &Value, usize) -> Answer + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let count = Arc::new(AtomicUsize::new(0));
        {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (handler, requests, count) =
                        (handler.clone(), requests.clone(), count.clone());
                    std::thread::spawn(move || {
                        let _ = serve_one(stream, &*handler, &requests, &count);
                    });
                }
            });
        }
        Ok(Self {
            base_url: format!("http://{addr}/v1"),
            requests,
            stop,
            addr,
        })
    }

    /// The requests received so far: (path, JSON body).
    pub fn requests(&self) -> Vec<(String, Value)> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve_one(
    stream: TcpStream,
    handler: &Handler,
    requests: &Mutex<Vec<(String, Value)>>,
    count: &AtomicUsize,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = path
        .split_once("/v1/")
        .map_or(path.clone(), |(_, p)| p.to_string());
    requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((path.clone(), body.clone()));
    let n = count.fetch_add(1, Ordering::SeqCst);
    let answer = handler(&path, &body, n);
    std::thread::sleep(answer.delay);
    let mut out = stream;
    let reason = match answer.status {
        200 => "OK",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        answer.status,
        answer.body.len()
    );
    for (k, v) in &answer.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(answer.body.as_bytes())?;
    out.flush()
}

/// The response shape the toy model answers FIRST requests in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `choices[0].logprobs.top_logprobs[0]` = `{token: logprob}`.
    Vllm,
    /// `choices[0].logprobs.content[0].top_logprobs` = `[{token, logprob}]`.
    LlamaCpp,
}

/// The query and the `[X] passage` lines of a rank_zephyr prompt.
pub fn read_prompt(text: &str) -> (String, Vec<(String, String)>) {
    let query = text
        .rsplit_once("Search Query: ")
        .map(|(_, rest)| rest.split(".\n").next().unwrap_or("").to_string())
        .unwrap_or_default();
    let passages = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix('[')?;
            let (id, passage) = rest.split_once("] ")?;
            (!id.is_empty() && id.len() <= 2 && id.chars().all(|c| c.is_ascii_alphanumeric()))
                .then(|| (id.to_string(), passage.to_string()))
        })
        .collect();
    (query, passages)
}

/// The toy model's relevance: query words found in the passage.
pub fn overlap(query: &str, passage: &str) -> usize {
    let words = |s: &str| -> Vec<String> {
        s.split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.len() > 2)
            .map(str::to_lowercase)
            .collect()
    };
    let p = words(passage);
    let mut q = words(query);
    q.sort();
    q.dedup();
    q.iter().filter(|w| p.contains(w)).count()
}

/// The toy model's identifier log-probabilities for a prompt: overlap minus
/// a tenth of the position (ties to the earlier passage), as a log-softmax;
/// only the best `keep` are returned.
pub fn toy_logprobs(prompt: &str, keep: usize) -> Vec<(String, f64)> {
    let (query, passages) = read_prompt(prompt);
    let logits: Vec<f64> = passages
        .iter()
        .enumerate()
        .map(|(i, (_, p))| overlap(&query, p) as f64 - 0.1 * i as f64)
        .collect();
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln() + max;
    let mut out: Vec<(String, f64)> = passages
        .iter()
        .zip(&logits)
        .map(|((id, _), l)| (id.clone(), l - z))
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out.truncate(keep);
    out
}

/// A FIRST answer of the toy model to a `/completions` body.
pub fn toy_first_answer(body: &Value, shape: Shape) -> Answer {
    let prompt = body["prompt"].as_str().unwrap_or("");
    let keep = body["logprobs"].as_u64().unwrap_or(5) as usize;
    let top = toy_logprobs(prompt, keep);
    let first = top.first().map(|t| t.0.clone()).unwrap_or_default();
    let logprobs = match shape {
        Shape::Vllm => json!({
            "tokens": [first],
            "token_logprobs": [top.first().map(|t| t.1)],
            "top_logprobs": [top.iter().map(|(t, l)| (t.clone(), json!(l))).collect::<serde_json::Map<_, _>>()],
        }),
        Shape::LlamaCpp => json!({
            "content": [{
                "token": first,
                "logprob": top.first().map(|t| t.1),
                "top_logprobs": top.iter().map(|(t, l)| json!({"token": t, "logprob": l})).collect::<Vec<_>>(),
            }],
        }),
    };
    Answer::json(json!({
        "id": "cmpl-standin",
        "object": "text_completion",
        "choices": [{"index": 0, "text": first, "logprobs": logprobs, "finish_reason": "length"}],
    }))
}

/// A generation answer of the toy model to a `/chat/completions` body: the
/// passages by overlap, as `[B] > [A] > ...`.
pub fn toy_chat_answer(body: &Value) -> Answer {
    let user = body["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    let top = toy_logprobs(user, usize::MAX);
    let ranking = top
        .iter()
        .map(|(id, _)| format!("[{id}]"))
        .collect::<Vec<_>>()
        .join(" > ");
    Answer::json(json!({
        "id": "chatcmpl-standin",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ranking}, "finish_reason": "stop"}],
    }))
}

/// The toy model behind every endpoint: FIRST on `/completions` (in
/// `shape`), generation on `/chat/completions`.
pub fn toy_model(shape: Shape) -> impl Fn(&str, &Value, usize) -> Answer + Send + Sync + 'static {
    move |path, body, _| match path {
        "completions" => toy_first_answer(body, shape),
        "chat/completions" => toy_chat_answer(body),
        other => Answer::raw(404, format!("{{\"error\": \"no route {other}\"}}")),
    }
}
