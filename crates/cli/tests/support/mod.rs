//! Helpers shared by the CLI's integration tests: running the binary, reading
//! its output, and finding the shared data.
// Each test crate uses its own subset of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

/// The workspace's skip policy: a SKIP line, or a failure under
/// `FIRSTRANK_REQUIRE_DATA=1` (CI).
pub use firstrank_core::testing::skip_or_fail;

/// `FIRSTRANK_SHARED`, else `../shared` beside the checkout; None (with a
/// message, or a failure under FIRSTRANK_REQUIRE_DATA=1) when the data is not
/// there.
pub fn shared() -> Option<PathBuf> {
    let dir = std::env::var_os("FIRSTRANK_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    if dir.join("data/dl19/qrels.txt").exists() {
        Some(dir)
    } else {
        skip_or_fail(&format!(
            "shared data not found at {} (set FIRSTRANK_SHARED)",
            dir.display()
        ));
        None
    }
}

/// Whether the default model `name` (`smollm2`, `minilm`, ...) can be
/// loaded: cached, or `FIRSTRANK_FETCH_MODELS=1` lets the binary fetch it on
/// first use. When it cannot, skips with a message naming `what` needs it, or
/// fails under FIRSTRANK_REQUIRE_DATA=1.
pub fn model_available(name: &str, what: &str) -> bool {
    if std::env::var("FIRSTRANK_FETCH_MODELS").as_deref() == Ok("1") {
        return true;
    }
    let cached =
        firstrank_models::fetch::default_model(name).is_some_and(|m| m.cached_path().exists());
    if !cached {
        skip_or_fail(&format!(
            "{what} needs the model {name}, not in the cache (set FIRSTRANK_FETCH_MODELS=1 to fetch it)"
        ));
    }
    cached
}

/// Runs the `firstrank` binary with `args`.
pub fn firstrank(args: &[&str]) -> Output {
    Command::cargo_bin("firstrank")
        .unwrap()
        .args(args)
        .output()
        .unwrap()
}

/// Quick mode: `firstrank rerank -q --model MODEL --query QUERY --doc D...
/// --json` plus `extra` flags.
pub fn rerank_docs(model: &Path, query: &str, docs: &[&str], extra: &[&str]) -> Output {
    let mut args = vec![
        "rerank",
        "-q",
        "--model",
        p(model),
        "--query",
        query,
        "--json",
    ];
    for d in docs {
        args.extend(["--doc", d]);
    }
    args.extend_from_slice(extra);
    firstrank(&args)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The `all` value of a metric in trec_eval layout.
pub fn trec_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols.len() == 3 && cols[0].trim() == name && cols[1] == "all")
                .then(|| cols[2].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Kills the server if a test fails half-way.
#[allow(dead_code)]
pub struct Serving(pub std::process::Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns a prepared `firstrank serve` command (with `--port 0`) and waits
/// for the address it logs; the log keeps being drained afterwards.
#[allow(dead_code)]
pub fn spawn_serve(mut cmd: std::process::Command) -> (Serving, std::net::SocketAddr) {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            panic!("serve exited before listening:\n{log}");
        };
        log.push_str(&line);
        log.push('\n');
        if let Some(rest) = line.split("on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Serving(child), addr)
}

/// One HTTP/1.1 request (`head` like `POST /v1/rerank`) with a JSON body on
/// a fresh connection; the whole response, or None when it failed.
#[allow(dead_code)]
pub fn request(addr: std::net::SocketAddr, head: &str, body: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut c =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500)).ok()?;
    c.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .ok()?;
    let req = format!(
        "{head} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).ok()?;
    Some(out)
}
