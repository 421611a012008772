//! Hugging Face repo ids resolved through the hf-hub crate, against a local stand-in for the hub
//! (a small HTTP server speaking the hub's endpoints: `/api/models/<repo>/revision/main` and
//! `/<repo>/resolve/main/<file>` with range requests, etag and x-repo-commit headers). The repo
//! served is the tiny Qwen2 checkpoint of `tests/data/tiny-hf/qwen2`, which must load from the
//! downloaded snapshot and give transformers' logits.
#![cfg(feature = "hub")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::Device;
use firstrank_models::hub::{resolve_model_repo, resolve_repo_file, HubAccess};
use firstrank_models::transformer::{CausalLm, KvCache, WeightMode};
use sha2::{Digest, Sha256};

mod transformer_support;
use transformer_support::{max_abs_diff, tiny_expected, tiny_hf_dir};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn tiny_qwen2() -> PathBuf {
    tiny_hf_dir("qwen2")
}

/// One file a fake repo serves, with the etag the hub would give it.
struct Served {
    bytes: Vec<u8>,
    etag: String,
}

fn served(bytes: Vec<u8>) -> Served {
    let etag = hex(&Sha256::digest(&bytes));
    Served { bytes, etag }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

type Repos = BTreeMap<String, BTreeMap<String, Served>>;

/// A fake hub on 127.0.0.1; every request path is logged.
struct FakeHub {
    endpoint: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl FakeHub {
    fn start(repos: Repos) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let repos = Arc::new(repos);
        let thread_log = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = serve(stream, &repos, &thread_log);
            }
        });
        FakeHub { endpoint, log }
    }

    fn requested(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, repos: &Repos, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let mut range_start = None;
    let mut range_end = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            let (a, b) = v.trim().split_once('-').unwrap_or((v.trim(), ""));
            range_start = a.parse::<usize>().ok();
            range_end = b.parse::<usize>().ok();
        }
    }
    log.lock().unwrap().push(path.clone());
    let mut out = stream;
    let respond = |out: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8]| {
        let mut head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        out.write_all(body)?;
        out.flush()
    };
    for (repo, files) in repos {
        if path == format!("/api/models/{repo}/revision/main") {
            let siblings: Vec<_> = files
                .keys()
                .map(|f| serde_json::json!({ "rfilename": f }))
                .collect();
            let body = serde_json::json!({ "sha": COMMIT, "siblings": siblings }).to_string();
            return respond(
                &mut out,
                "200 OK",
                &[("Content-Type".into(), "application/json".into())],
                body.as_bytes(),
            );
        }
        if let Some(file) = path.strip_prefix(&format!("/{repo}/resolve/main/")) {
            let Some(f) = files.get(file) else { break };
            let n = f.bytes.len();
            let start = range_start.unwrap_or(0).min(n);
            let end = range_end.map(|e| e + 1).unwrap_or(n).min(n);
            let headers = [
                ("ETag".to_string(), format!("\"{}\"", f.etag)),
                ("X-Repo-Commit".to_string(), COMMIT.to_string()),
                (
                    "Content-Range".to_string(),
                    format!("bytes {start}-{}/{n}", end.max(1) - 1),
                ),
            ];
            return respond(
                &mut out,
                "206 Partial Content",
                &headers,
                &f.bytes[start..end],
            );
        }
    }
    respond(&mut out, "404 Not Found", &[], b"Repository not found")
}

fn access(cache: &Path, endpoint: &str) -> HubAccess {
    HubAccess {
        cache: Some(cache.to_path_buf()),
        endpoint: endpoint.to_string(),
        token: None,
        offline: false,
        progress: false,
    }
}

/// A port nothing listens on.
fn closed_endpoint() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

fn qwen2_repo() -> BTreeMap<String, Served> {
    let mut files = BTreeMap::new();
    for name in ["config.json", "model.safetensors"] {
        files.insert(
            name.to_string(),
            served(std::fs::read(tiny_qwen2().join(name)).unwrap()),
        );
    }
    // What firstrank must not download: a second copy of the weights, and other files.
    files.insert("consolidated.safetensors".into(), served(vec![7u8; 4096]));
    files.insert("README.md".into(), served(b"# tiny".to_vec()));
    files
}

/// transformers' logits at the last checked position of the tiny model's sequence.
fn check_logits(dir: &Path) {
    let expected = tiny_expected("qwen2");
    let tokens = &expected.tokens;
    let (pos, want) = expected.logits.last().unwrap();
    let pos = *pos;
    let mut model = CausalLm::load_hf_dir(dir, WeightMode::DequantizedF32, &Device::Cpu).unwrap();
    let mut cache = KvCache::new(&model);
    let h = model.forward(&tokens[..=pos], &mut cache, None).unwrap();
    let got = model.full_logits(&h).unwrap();
    let err = max_abs_diff(&got, want);
    assert!(err < 1e-4, "logits differ from transformers' by {err}");
}

#[test]
fn downloads_a_model_repo_into_the_hf_cache_and_then_works_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let mut repos = Repos::new();
    repos.insert("org/tiny-qwen2".into(), qwen2_repo());
    let hub = FakeHub::start(repos);

    let dir = resolve_model_repo("org/tiny-qwen2", &access(&cache, &hub.endpoint)).unwrap();
    assert_eq!(
        dir,
        cache.join(format!("models--org--tiny-qwen2/snapshots/{COMMIT}"))
    );
    let requested = hub.requested();
    assert!(
        requested.iter().any(|p| p.ends_with("/model.safetensors"))
            && !requested
                .iter()
                .any(|p| p.contains("consolidated") || p.contains("README")),
        "{requested:?}"
    );
    for name in ["config.json", "model.safetensors"] {
        assert_eq!(
            std::fs::read(dir.join(name)).unwrap(),
            std::fs::read(tiny_qwen2().join(name)).unwrap()
        );
    }
    check_logits(&dir);

    // Complete in the cache: resolved without the network.
    let again = resolve_model_repo("org/tiny-qwen2", &access(&cache, &closed_endpoint())).unwrap();
    assert_eq!(again, dir);
    let n = hub.requested().len();
    let offline = HubAccess {
        offline: true,
        ..access(&cache, &hub.endpoint)
    };
    assert_eq!(resolve_model_repo("org/tiny-qwen2", &offline).unwrap(), dir);
    assert_eq!(
        hub.requested().len(),
        n,
        "a cached repo must not touch the hub"
    );
}

#[test]
fn downloads_a_sharded_repo_and_a_gguf_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let mut files = BTreeMap::new();
    files.insert("config.json".to_string(), served(b"{}".to_vec()));
    files.insert(
        "model.safetensors.index.json".to_string(),
        served(
            br#"{"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#
                .to_vec(),
        ),
    );
    files.insert(
        "model-00001-of-00002.safetensors".into(),
        served(vec![1; 100]),
    );
    files.insert(
        "model-00002-of-00002.safetensors".into(),
        served(vec![2; 50]),
    );
    files.insert("tokenizer.json".into(), served(b"{}".to_vec()));
    files.insert("pytorch_model.bin".into(), served(vec![3; 10]));
    files.insert(
        "q4/tiny.Q4_0.gguf".into(),
        served(b"GGUF\x03\0\0\0".to_vec()),
    );
    let mut repos = Repos::new();
    repos.insert("org/sharded".into(), files);
    let hub = FakeHub::start(repos);
    let hub_access = access(&cache, &hub.endpoint);

    let dir = resolve_model_repo("org/sharded", &hub_access).unwrap();
    for (name, len) in [
        ("model-00001-of-00002.safetensors", 100),
        ("model-00002-of-00002.safetensors", 50),
        ("tokenizer.json", 2),
    ] {
        assert_eq!(
            std::fs::metadata(dir.join(name)).unwrap().len(),
            len,
            "{name}"
        );
    }
    assert!(!dir.join("pytorch_model.bin").exists());
    assert!(!dir.join("q4").exists());

    let gguf = resolve_repo_file("org/sharded", "q4/tiny.Q4_0.gguf", &hub_access).unwrap();
    assert_eq!(gguf, dir.join("q4/tiny.Q4_0.gguf"));
    assert_eq!(std::fs::read(&gguf).unwrap(), b"GGUF\x03\0\0\0");
}

#[test]
fn hub_failures_are_clear_and_leave_no_corrupt_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");

    // Unreachable hub.
    let err = resolve_model_repo("org/tiny-qwen2", &access(&cache, &closed_endpoint()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`org/tiny-qwen2`")
            && err.contains("unreachable")
            && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );

    // A repo the hub does not have.
    let mut repos = Repos::new();
    let mut bad = qwen2_repo();
    // The hub's etag (sha256) does not match what arrives.
    bad.get_mut("model.safetensors").unwrap().etag = "ab".repeat(32);
    repos.insert("org/corrupt".into(), bad);
    let mut no_weights = BTreeMap::new();
    no_weights.insert("config.json".to_string(), served(b"{}".to_vec()));
    no_weights.insert("pytorch_model.bin".to_string(), served(vec![0; 8]));
    repos.insert("org/bin-only".into(), no_weights);
    let hub = FakeHub::start(repos);
    let hub_access = access(&cache, &hub.endpoint);

    let err = resolve_model_repo("org/missing", &hub_access)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`org/missing`") && err.contains("no such repo"),
        "{err}"
    );

    let err = resolve_model_repo("org/bin-only", &hub_access)
        .unwrap_err()
        .to_string();
    assert!(err.contains("neither model.safetensors"), "{err}");

    let err = resolve_model_repo("org/corrupt", &hub_access)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("corrupt") && err.contains("model.safetensors"),
        "{err}"
    );
    let snapshot = cache.join(format!("models--org--corrupt/snapshots/{COMMIT}"));
    assert!(!snapshot.join("model.safetensors").exists());
    assert!(!cache
        .join("models--org--corrupt/blobs")
        .join("ab".repeat(32))
        .exists());
}
