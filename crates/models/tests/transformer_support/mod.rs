//! Shared helpers of the transformer/FIRST integration tests: locating the
//! shared fixtures and the default model files, loading models once per test
//! binary, and small comparison functions.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use candle_core::Device;
use firstrank_models::transformer::{CausalLm, WeightMode};
use serde_json::Value;

pub struct ModelCase {
    pub fixture_dir: &'static str,
    pub file: &'static str,
}

pub const SMOLLM2: ModelCase = ModelCase {
    fixture_dir: "smollm2-135m",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
};
pub const GEMMA3: ModelCase = ModelCase {
    fixture_dir: "gemma3-270m",
    file: "gemma-3-270m-q4_k_m.gguf",
};

/// `FIRSTRANK_SHARED`, else `<workspace>/../shared`.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("FIRSTRANK_SHARED") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    }
}

/// The model file under `FIRSTRANK_CACHE` (itself or its `models/`), else
/// `~/.cache/firstrank/models/`.
pub fn model_path(file: &str) -> Option<PathBuf> {
    if std::env::var("FIRSTRANK_FETCH_MODELS").as_deref() == Ok("1") {
        let name = firstrank_models::fetch::default_models()
            .iter()
            .find(|m| m.file == file)
            .map(|m| m.name)
            .expect("a default model file");
        return Some(firstrank_models::fetch::ensure_model(name).expect("fetching the model"));
    }
    let mut candidates = Vec::new();
    if let Some(c) = std::env::var_os("FIRSTRANK_CACHE") {
        let c = PathBuf::from(c);
        candidates.push(c.join("models").join(file));
        candidates.push(c.join(file));
    }
    if let Some(h) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(h).join(".cache/firstrank/models").join(file));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// Fixture JSON, or `None` (with a message) when /work/shared is missing.
pub fn fixture(case: &ModelCase, name: &str) -> Option<Value> {
    let p = shared_dir()
        .join("fixtures")
        .join(case.fixture_dir)
        .join(name);
    match std::fs::read_to_string(&p) {
        Ok(s) => Some(serde_json::from_str(&s).expect("fixture JSON parses")),
        Err(_) => {
            firstrank_core::testing::skip_or_fail(&format!("fixture {} not found", p.display()));
            None
        }
    }
}

type Shared = &'static Mutex<CausalLm>;

/// The model loaded once per (case, mode) and test binary, or `None` (with a
/// message) when the file is missing.
pub fn model(case: &ModelCase, mode: WeightMode) -> Option<Shared> {
    static CELLS: [OnceLock<Option<Mutex<CausalLm>>>; 4] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    let idx = (case.file == GEMMA3.file) as usize * 2 + (mode == WeightMode::Quantized) as usize;
    CELLS[idx]
        .get_or_init(|| {
            let Some(path) = model_path(case.file) else {
                firstrank_core::testing::skip_or_fail(&format!(
                    "model file {} not found",
                    case.file
                ));
                return None;
            };
            let t = std::time::Instant::now();
            let m = CausalLm::load(&path, mode, &Device::Cpu).expect("model loads");
            eprintln!(
                "loaded {} ({mode}) in {:.2}s",
                case.file,
                t.elapsed().as_secs_f64()
            );
            Some(Mutex::new(m))
        })
        .as_ref()
}

/// `tests/data/tiny-hf/<name>`: a tiny random checkpoint in transformers'
/// layout with transformers' logits (`scripts/make-tiny-hf-models.py`).
pub fn tiny_hf_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tiny-hf")
        .join(name)
}

/// A tiny checkpoint's `expected.json`: its token sequence and
/// transformers' full logits at a few positions.
pub struct TinyExpected {
    pub tokens: Vec<u32>,
    /// (position, full logits there), ascending positions.
    pub logits: Vec<(usize, Vec<f32>)>,
}

pub fn tiny_expected(name: &str) -> TinyExpected {
    let text = std::fs::read_to_string(tiny_hf_dir(name).join("expected.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let mut logits: Vec<(usize, Vec<f32>)> = v["logits"]
        .as_object()
        .expect("logits by position")
        .iter()
        .map(|(p, l)| (p.parse().expect("position"), f32s(l)))
        .collect();
    logits.sort_by_key(|(p, _)| *p);
    TinyExpected {
        tokens: u32s(&v["tokens"]),
        logits,
    }
}

pub fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("int") as u32)
        .collect()
}

pub fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn l2(a: &[f32]) -> f64 {
    a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt()
}

/// Kendall's tau-b between two score lists.
pub fn kendall_tau(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut conc, mut disc, mut ties_a, mut ties_b) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..a.len() {
        for j in i + 1..a.len() {
            let da = (a[i] - a[j]).signum() as i64 * ((a[i] != a[j]) as i64);
            let db = (b[i] - b[j]).signum() as i64 * ((b[i] != b[j]) as i64);
            match (da, db) {
                (0, 0) => {}
                (0, _) => ties_a += 1,
                (_, 0) => ties_b += 1,
                _ if da == db => conc += 1,
                _ => disc += 1,
            }
        }
    }
    let n0 = (conc + disc + ties_a) as f64;
    let n1 = (conc + disc + ties_b) as f64;
    (conc - disc) as f64 / (n0 * n1).sqrt()
}

/// A fixture window (`windows.json` record) as a query and its candidates
/// (raw passages, in input order, scores falling from 100).
pub fn window_request(w: &Value) -> (firstrank_core::Query, Vec<firstrank_core::Candidate>) {
    let query = firstrank_core::Query {
        qid: w["qid"].to_string(),
        text: w["query"].as_str().unwrap().to_string(),
        instruction: None,
    };
    let cands = w["docids"]
        .as_array()
        .unwrap()
        .iter()
        .zip(w["passages_raw"].as_array().unwrap())
        .enumerate()
        .map(|(i, (d, p))| firstrank_core::Candidate {
            docid: d.as_str().unwrap().to_string(),
            score: (100 - i) as f64,
            title: None,
            text: p.as_str().unwrap().to_string(),
        })
        .collect();
    (query, cands)
}
