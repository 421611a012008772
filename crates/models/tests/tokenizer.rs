//! The GGUF tokenizers against the fidelity fixtures of the Python reference
//! (shared/fixtures/<model>/tokenization.json and windows.json): ids, decoded text, BOS handling,
//! the exact prompt token ids, and passage truncation.
//!
//! Needs the default model GGUFs: with `FIRSTRANK_FETCH_MODELS=1` they are fetched
//! (fetch::ensure_model), otherwise they are taken from the cache if present; the tests skip
//! with a message when a model or shared/ is missing.

use std::path::PathBuf;
use std::sync::OnceLock;

use firstrank_core::prompt::TokenCounter;
use firstrank_models::fetch;
use firstrank_models::gguf_tokenizer::{tokenizer_from_gguf_file, GgufTokenizer};
use serde_json::Value;

fn shared_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("FIRSTRANK_SHARED") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    };
    dir.join("fixtures").is_dir().then_some(dir)
}

fn model_path(name: &str) -> Option<PathBuf> {
    if std::env::var("FIRSTRANK_FETCH_MODELS").as_deref() == Ok("1") {
        return Some(fetch::ensure_model(name).expect("fetching the model"));
    }
    let p = fetch::default_model(name)?.cached_path();
    p.exists().then_some(p)
}

fn fixture_dir(model: &str) -> &'static str {
    match model {
        "smollm2" => "smollm2-135m",
        "gemma3" => "gemma3-270m",
        _ => unreachable!(),
    }
}

struct Setup {
    tok: GgufTokenizer,
    fixtures: PathBuf,
}

fn setup(model: &'static str) -> Option<&'static Setup> {
    static SMOL: OnceLock<Option<Setup>> = OnceLock::new();
    static GEMMA: OnceLock<Option<Setup>> = OnceLock::new();
    let cell = if model == "smollm2" { &SMOL } else { &GEMMA };
    cell.get_or_init(|| {
        let Some(shared) = shared_dir() else {
            firstrank_core::testing::skip_or_fail(
                "shared/fixtures not found (set FIRSTRANK_SHARED)",
            );
            return None;
        };
        let Some(path) = model_path(model) else {
            firstrank_core::testing::skip_or_fail(&format!(
                "model {model} not in the cache (set FIRSTRANK_FETCH_MODELS=1 to fetch it)"
            ));
            return None;
        };
        let t0 = std::time::Instant::now();
        let tok = tokenizer_from_gguf_file(&path).expect("tokenizer from GGUF");
        eprintln!("{model}: tokenizer built in {:.2?}", t0.elapsed());
        Some(Setup {
            tok,
            fixtures: shared.join("fixtures").join(fixture_dir(model)),
        })
    })
    .as_ref()
}

fn read_json(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn check_tokenization(model: &'static str) {
    let Some(s) = setup(model) else { return };
    let fx = read_json(s.fixtures.join("tokenization.json"));
    let records = fx["strings"].as_array().unwrap();
    assert_eq!(records.len(), 34);
    let mut failures = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let text = r["text"].as_str().unwrap();
        let want = ids_of(&r["ids"]);
        let got = s.tok.encode_raw(text).unwrap();
        if got != want {
            failures.push(format!("#{i} {text:?}: ids {got:?}, expected {want:?}"));
            continue;
        }
        let want_bos = ids_of(&r["ids_with_bos"]);
        let got_bos = s
            .tok
            .tokenizer
            .encode(text, true)
            .unwrap()
            .get_ids()
            .to_vec();
        if got_bos != want_bos {
            failures.push(format!(
                "#{i} {text:?}: ids with BOS {got_bos:?}, expected {want_bos:?}"
            ));
        }
        let decoded = s.tok.decode(&got).unwrap();
        if decoded != r["decoded"].as_str().unwrap() {
            failures.push(format!(
                "#{i} {text:?}: decoded {decoded:?}, expected {:?}",
                r["decoded"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{model}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn check_windows(model: &'static str) {
    let Some(s) = setup(model) else { return };
    let fx = read_json(s.fixtures.join("windows.json"));
    let windows = fx["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 6);
    for w in windows {
        let prompt = w["prompt"].as_str().unwrap();
        let want = ids_of(&w["token_ids"]);
        let got = s.tok.encode_raw(prompt).unwrap();
        assert_eq!(got.len(), w["n_tokens"].as_u64().unwrap() as usize);
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            panic!(
                "{model} qid {} {}: first difference at token {i}: got {:?}, expected {:?}",
                w["qid"],
                w["window"],
                &got[i..(i + 8).min(got.len())],
                &want[i..(i + 8).min(want.len())]
            );
        }
        assert_eq!(got, want, "{model} qid {} {}", w["qid"], w["window"]);
    }
}

/// Passage preprocessing through the TokenCounter impl reproduces `passages_truncated`
/// (`" ".join(text.split())`, then `decode(encode(text)[:100])` when longer than 100 tokens)
/// and the token counts before truncation.
fn check_truncation(model: &'static str) {
    let Some(s) = setup(model) else { return };
    let fx = read_json(s.fixtures.join("windows.json"));
    let mut n_cut = 0;
    for w in fx["windows"].as_array().unwrap() {
        let raws = w["passages_raw"].as_array().unwrap();
        let cuts = w["passages_truncated"].as_array().unwrap();
        let counts = w["passage_token_counts_before_truncation"]
            .as_array()
            .unwrap();
        for ((raw, cut), count) in raws.iter().zip(cuts).zip(counts) {
            let norm = raw
                .as_str()
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let n = s.tok.count_tokens(&norm).unwrap();
            assert_eq!(
                n as u64,
                count.as_u64().unwrap(),
                "{model}: token count of {norm:?}"
            );
            let got = if n > 100 {
                n_cut += 1;
                s.tok.truncate_to_tokens(&norm, 100).unwrap()
            } else {
                norm
            };
            assert_eq!(got, cut.as_str().unwrap(), "{model}: truncated passage");
        }
    }
    assert!(n_cut > 0, "{model}: no passage exercised the truncation");
}

fn check_specials(model: &'static str) {
    let Some(s) = setup(model) else { return };
    let meta = read_json(s.fixtures.join("meta.json"));
    let letters = meta["letters"].as_array().unwrap();
    let want = ids_of(&meta["letter_token_ids"]);
    for (l, id) in letters.iter().zip(&want) {
        assert_eq!(
            s.tok.encode_raw(l.as_str().unwrap()).unwrap(),
            vec![*id],
            "letter {l}"
        );
    }
    let (bos_id, eos_id) = match model {
        "gemma3" => (&meta["special_ids"]["bos"], &meta["special_ids"]["eos"]),
        _ => (
            &meta["special_ids"]["bos"]["id"],
            &meta["special_ids"]["eos"]["id"],
        ),
    };
    assert_eq!(
        s.tok.bos.as_ref().unwrap().1 as u64,
        bos_id.as_u64().unwrap()
    );
    assert_eq!(
        s.tok.eos.as_ref().unwrap().1 as u64,
        eos_id.as_u64().unwrap()
    );
    // SmolLM2's GGUF says add_bos_token=false (the fixture ids_with_bos equal ids); Gemma's true.
    assert_eq!(s.tok.add_bos, model == "gemma3");
    assert_eq!(
        s.tok.chat_template.is_some(),
        meta["gguf_has_chat_template"].as_bool().unwrap()
    );
}

#[test]
fn smollm2_tokenization_fixture() {
    check_tokenization("smollm2");
}

#[test]
fn gemma3_tokenization_fixture() {
    check_tokenization("gemma3");
}

#[test]
fn smollm2_window_prompts() {
    check_windows("smollm2");
}

#[test]
fn gemma3_window_prompts() {
    check_windows("gemma3");
}

#[test]
fn smollm2_passage_truncation() {
    check_truncation("smollm2");
}

#[test]
fn gemma3_passage_truncation() {
    check_truncation("gemma3");
}

#[test]
fn smollm2_special_tokens() {
    check_specials("smollm2");
}

#[test]
fn gemma3_special_tokens() {
    check_specials("gemma3");
}
