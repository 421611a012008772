//! Bounded load test for `firstrank serve`: N concurrent clients send rerank
//! requests for a fixed time, then stop; reports throughput, latency
//! percentiles, status counts and the server's peak RSS (with `--pid`).
//!
//! ```text
//! cargo run --release -p firstrank-server --example loadtest -- \
//!     --url http://127.0.0.1:8080 --clients 32 --duration 30 --docs 20 --pid $(pgrep -n firstrank)
//! ```
//!
//! Documents are synthetic (seeded pseudo-random words from a small
//! vocabulary, `--words` per document), so runs are repeatable. A client that
//! gets a 429 waits `--backoff-ms` (default 100) before its next request, as a
//! well-behaved client would; 429s are counted, not hidden.

use std::time::{Duration, Instant};

use serde_json::json;

const VOCAB: &[&str] = &[
    "river", "capital", "france", "paris", "energy", "solar", "protein", "cell", "history", "war",
    "music", "piano", "market", "stock", "price", "climate", "ocean", "forest", "city", "engine",
    "car", "battery", "disease", "vaccine", "school", "teacher", "law", "court", "planet", "star",
    "galaxy", "coffee", "tea", "bread", "wheat", "computer", "network", "language", "grammar",
    "mountain", "snow", "election", "vote", "museum", "painting",
];

struct Opts {
    url: String,
    path: String,
    clients: usize,
    duration: Duration,
    docs: usize,
    words: usize,
    pid: Option<u32>,
    api_key: Option<String>,
    timeout: Duration,
    backoff: Duration,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        url: "http://127.0.0.1:8080".into(),
        path: "/v1/rerank".into(),
        clients: 32,
        duration: Duration::from_secs(30),
        docs: 20,
        words: 60,
        pid: None,
        api_key: std::env::var("FIRSTRANK_API_KEY").ok(),
        timeout: Duration::from_secs(180),
        backoff: Duration::from_millis(100),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        if flag == "--help" || flag == "-h" {
            return Err("usage: loadtest [--url URL] [--path /v1/rerank] [--clients 32] [--duration SECS] [--docs 20] [--words 60] [--pid PID] [--api-key KEY] [--timeout SECS] [--backoff-ms 100]".into());
        }
        let value = args
            .get(i + 1)
            .ok_or_else(|| format!("{flag} needs a value"))?
            .clone();
        let num = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag {
            "--url" => o.url = value.trim_end_matches('/').to_string(),
            "--path" => o.path = value,
            "--clients" => o.clients = num(&value)? as usize,
            "--duration" => o.duration = Duration::from_secs_f64(num(&value)?),
            "--docs" => o.docs = num(&value)? as usize,
            "--words" => o.words = num(&value)? as usize,
            "--pid" => o.pid = Some(num(&value)? as u32),
            "--api-key" => o.api_key = Some(value),
            "--timeout" => o.timeout = Duration::from_secs_f64(num(&value)?),
            "--backoff-ms" => o.backoff = Duration::from_millis(num(&value)? as u64),
            _ => return Err(format!("unknown option {flag}")),
        }
        i += 2;
    }
    if o.clients == 0 || o.docs == 0 {
        return Err("--clients and --docs must be at least 1".into());
    }
    Ok(o)
}

/// xorshift64*: repeatable pseudo-random words without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn word(&mut self) -> &'static str {
        VOCAB[(self.next() % VOCAB.len() as u64) as usize]
    }
}

fn body(rng: &mut Rng, docs: usize, words: usize) -> serde_json::Value {
    let query: Vec<&str> = (0..4).map(|_| rng.word()).collect();
    let documents: Vec<String> = (0..docs)
        .map(|_| (0..words).map(|_| rng.word()).collect::<Vec<_>>().join(" "))
        .collect();
    json!({"query": query.join(" "), "documents": documents, "top_n": 5, "model": "loadtest"})
}

#[derive(Default)]
struct Tally {
    latencies_ok: Vec<f64>,
    latencies_all: Vec<f64>,
    ok: u64,
    too_many: u64,
    other_4xx: u64,
    server_5xx: u64,
    transport: u64,
}

fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let client = reqwest::Client::builder()
        .timeout(o.timeout)
        .pool_max_idle_per_host(o.clients)
        .build()
        .expect("http client");
    let url = format!("{}{}", o.url, o.path);
    let started = Instant::now();
    let deadline = started + o.duration;

    let sampler = o.pid.map(|pid| {
        tokio::spawn(async move {
            let mut peak = 0u64;
            while Instant::now() < deadline + Duration::from_secs(1) {
                if let Some(v) = rss_kib(pid, "VmRSS:") {
                    peak = peak.max(v);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    });
    let rss_before = o.pid.and_then(|p| rss_kib(p, "VmRSS:"));

    let mut tasks = Vec::new();
    for c in 0..o.clients {
        let client = client.clone();
        let url = url.clone();
        let key = o.api_key.clone();
        let (docs, words, backoff) = (o.docs, o.words, o.backoff);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1).wrapping_mul(0x1000_0001));
            let mut t = Tally::default();
            while Instant::now() < deadline {
                let b = body(&mut rng, docs, words);
                let mut req = client.post(&url).json(&b);
                if let Some(k) = &key {
                    req = req.bearer_auth(k);
                }
                let sent = Instant::now();
                let result = req.send().await;
                let status = match result {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let _ = r.bytes().await;
                        Some(s)
                    }
                    Err(_) => None,
                };
                let secs = sent.elapsed().as_secs_f64();
                t.latencies_all.push(secs);
                match status {
                    Some(200..=299) => {
                        t.ok += 1;
                        t.latencies_ok.push(secs);
                    }
                    Some(429) => {
                        t.too_many += 1;
                        tokio::time::sleep(backoff).await;
                    }
                    Some(400..=499) => t.other_4xx += 1,
                    Some(_) => t.server_5xx += 1,
                    None => t.transport += 1,
                }
            }
            t
        }));
    }
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await.expect("client task");
        all.latencies_ok.extend(t.latencies_ok);
        all.latencies_all.extend(t.latencies_all);
        all.ok += t.ok;
        all.too_many += t.too_many;
        all.other_4xx += t.other_4xx;
        all.server_5xx += t.server_5xx;
        all.transport += t.transport;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let peak_sampled = match sampler {
        Some(s) => Some(s.await.unwrap_or(0)),
        None => None,
    };
    let hwm = o.pid.and_then(|p| rss_kib(p, "VmHWM:"));
    all.latencies_ok.sort_by(f64::total_cmp);
    all.latencies_all.sort_by(f64::total_cmp);
    let total = all.latencies_all.len() as u64;
    println!("url                 {url}");
    println!("clients             {}", o.clients);
    println!("documents/request   {} ({} words each)", o.docs, o.words);
    println!(
        "duration            {elapsed:.1} s (requests stop at {:.0} s; in-flight ones finish)",
        o.duration.as_secs_f64()
    );
    println!("requests            {total}");
    println!("  2xx               {}", all.ok);
    println!("  429               {}", all.too_many);
    println!("  other 4xx         {}", all.other_4xx);
    println!("  5xx               {}", all.server_5xx);
    println!(
        "  transport errors  {} (incl. client timeouts of {:.0} s)",
        all.transport,
        o.timeout.as_secs_f64()
    );
    println!(
        "throughput          {:.1} ok/s, {:.1} requests/s",
        all.ok as f64 / elapsed,
        total as f64 / elapsed
    );
    let ms = |v: f64| v * 1000.0;
    println!(
        "latency 2xx (ms)    p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}",
        ms(pct(&all.latencies_ok, 50.0)),
        ms(pct(&all.latencies_ok, 95.0)),
        ms(pct(&all.latencies_ok, 99.0)),
        ms(all.latencies_ok.last().copied().unwrap_or(f64::NAN))
    );
    println!(
        "latency all (ms)    p50 {:.1}  p95 {:.1}  p99 {:.1}",
        ms(pct(&all.latencies_all, 50.0)),
        ms(pct(&all.latencies_all, 95.0)),
        ms(pct(&all.latencies_all, 99.0))
    );
    if let Some(pid) = o.pid {
        let mib =
            |k: Option<u64>| k.map_or("?".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        println!(
            "server RSS (pid {pid}) before {}, peak sampled {}, VmHWM {}",
            mib(rss_before),
            mib(peak_sampled),
            mib(hwm)
        );
    }
    if all.server_5xx > 0 {
        std::process::exit(1);
    }
}
