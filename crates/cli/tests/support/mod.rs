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

/// Whether the tests may load the default models (`FIRSTRANK_FETCH_MODELS=1`
/// fetches them on first use); otherwise skips, or fails under
/// FIRSTRANK_REQUIRE_DATA=1.
pub fn require_models(what: &str) -> bool {
    if std::env::var("FIRSTRANK_FETCH_MODELS").as_deref() == Ok("1") {
        return true;
    }
    skip_or_fail(&format!(
        "{what} needs the default models (set FIRSTRANK_FETCH_MODELS=1)"
    ));
    false
}

/// Whether the MiniLM encoder can be loaded: cached, or FIRSTRANK_FETCH_MODELS=1
/// lets the tests download it.
pub fn minilm_available() -> bool {
    if std::env::var("FIRSTRANK_FETCH_MODELS").as_deref() == Ok("1") {
        return true;
    }
    firstrank_models::fetch::default_model("minilm").is_some_and(|m| m.cached_path().exists())
}

/// Runs the `firstrank` binary with `args`.
pub fn firstrank(args: &[&str]) -> Output {
    Command::cargo_bin("firstrank")
        .unwrap()
        .args(args)
        .output()
        .unwrap()
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
