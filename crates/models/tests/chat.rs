//! Chat templates against the fidelity fixtures: for both default models, the FIRST prompt
//! rendered from (system message, user message) reproduces every window's `prompt` of
//! shared/fixtures/<model>/windows.json byte for byte. SmolLM2 uses the GGUF's own
//! `tokenizer.chat_template`, Gemma the registry's override (its GGUF has none).
//!
//! The user message is rebuilt independently from the window's parts (meta.json's prefix/post
//! prompt with the query, and `[A] passage\n` lines of the truncated passages), not cut out of
//! the expected prompt.

use std::path::PathBuf;

use candle_core::Device;
use firstrank_models::chat::ChatTemplate;
use firstrank_models::fetch;
use firstrank_models::gguf_tokenizer::tokenizer_from_gguf_file;
use firstrank_models::transformer::{CausalLm, WeightMode};
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

fn read_json(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check(model: &str, fixture: &str) {
    let Some(shared) = shared_dir() else {
        firstrank_core::testing::skip_or_fail("shared/fixtures not found (set FIRSTRANK_SHARED)");
        return;
    };
    let Some(path) = model_path(model) else {
        firstrank_core::testing::skip_or_fail(&format!(
            "model {model} not in the cache (set FIRSTRANK_FETCH_MODELS=1 to fetch it)"
        ));
        return;
    };
    let dir = shared.join("fixtures").join(fixture);
    let meta = read_json(dir.join("meta.json"));
    let windows = read_json(dir.join("windows.json"));

    let tok = tokenizer_from_gguf_file(&path).unwrap();
    // The GGUF's own template, else the family's (Gemma 3's base GGUF has none).
    let family = CausalLm::load(&path, WeightMode::Quantized, &Device::Cpu)
        .unwrap()
        .family()
        .unwrap();
    let source = match &tok.chat_template {
        Some(t) => t.clone(),
        None => family
            .default_chat_template
            .expect("the family's chat template")
            .to_string(),
    };
    assert_eq!(
        source,
        meta["chat_template_used"].as_str().unwrap(),
        "{model}: template source"
    );
    let bos = tok.bos.as_ref().map(|b| b.0.as_str()).unwrap_or("");
    let eos = tok.eos.as_ref().map(|b| b.0.as_str()).unwrap_or("");
    let template = ChatTemplate::new(&source, bos, eos).unwrap();

    let system = meta["system_message"].as_str().unwrap();
    let prefix = meta["prefix_prompt_example"].as_str().unwrap();
    let post = meta["post_prompt_example"].as_str().unwrap();
    let letters: Vec<&str> = meta["letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let windows = windows["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 6);
    for w in windows {
        let query = w["query"].as_str().unwrap();
        let passages = w["passages_truncated"].as_array().unwrap();
        assert_eq!(
            passages.len(),
            20,
            "the example prompts are for 20 passages"
        );
        let mut user = prefix.replace("QUERY", query);
        for (l, p) in letters.iter().zip(passages) {
            user.push_str(&format!("[{l}] {}\n", p.as_str().unwrap()));
        }
        user.push_str(&post.replace("QUERY", query));
        let got = template.first_prompt(Some(system), &user).unwrap();
        let want = w["prompt"].as_str().unwrap();
        if got != want {
            let i = got
                .bytes()
                .zip(want.bytes())
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(want.len()));
            let lo = i.saturating_sub(40);
            panic!(
                "{model} qid {} {}: prompts differ at byte {i}:\n got: {:?}\nwant: {:?}",
                w["qid"],
                w["window"],
                got.get(lo..(i + 40).min(got.len())).unwrap_or(""),
                want.get(lo..(i + 40).min(want.len())).unwrap_or("")
            );
        }
    }
}

#[test]
fn smollm2_first_prompts_match_fixture() {
    check("smollm2", "smollm2-135m");
}

#[test]
fn gemma3_first_prompts_match_fixture() {
    check("gemma3", "gemma3-270m");
}

/// The registry's Gemma 3 template (its GGUF has none) renders the turns as Gemma's own.
#[test]
fn gemma3_template_shape() {
    let gemma = firstrank_models::transformer::families::by_name("gemma3").unwrap();
    let source = gemma.default_chat_template.unwrap();
    let t = ChatTemplate::new(source, "<bos>", "<eos>").unwrap();
    assert_eq!(
        t.first_prompt(Some("SYS"), "  hello \n").unwrap(),
        "<bos><start_of_turn>user\nSYS\n\nhello<end_of_turn>\n<start_of_turn>model\n["
    );
    assert_eq!(
        t.render(
            &[
                firstrank_models::chat::ChatMessage::user("a"),
                firstrank_models::chat::ChatMessage::assistant("b")
            ],
            false
        )
        .unwrap(),
        "<bos><start_of_turn>user\na<end_of_turn>\n<start_of_turn>model\nb<end_of_turn>\n"
    );
}
