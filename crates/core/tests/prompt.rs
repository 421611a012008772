//! Tests of listwise prompts (`firstrank_core::prompt`) and passage text repair
//! (`firstrank_core::textfix`). Tests that read /work/shared skip with a message
//! when it is absent.

use std::path::PathBuf;

use firstrank_core::prompt::{
    self, IdentifierStyle, ListwisePrompt, PromptOptions, PromptTemplate, TokenCounter,
};
use firstrank_core::{textfix, Candidate};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `FIRSTRANK_SHARED`, else `<workspace root>/../shared`; `None` (and a
/// message) when absent.
fn shared_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("FIRSTRANK_SHARED") {
        Some(d) => PathBuf::from(d),
        None => manifest_dir().join("../../../shared"),
    };
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: shared data not found at {} (set FIRSTRANK_SHARED)",
            dir.display()
        );
        None
    }
}

#[derive(serde::Deserialize)]
struct FixCase {
    source: String,
    input: String,
    expected: String,
}

fn read_cases(path: &std::path::Path) -> Vec<FixCase> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{} line {}: {e}", path.display(), i + 1))
        })
        .collect()
}

fn check_cases(cases: &[FixCase]) -> Vec<String> {
    cases
        .iter()
        .filter_map(|c| {
            let got = textfix::fix_text(&c.input);
            (got != c.expected).then(|| {
                format!(
                    "{}\n  input:    {:?}\n  expected: {:?}\n  got:      {:?}",
                    c.source, c.input, c.expected, got
                )
            })
        })
        .collect()
}

/// Inputs of the table where textfix knowingly differs from ftfy (outside the
/// documented subset).
const KNOWN_FTFY_MISMATCHES: &[(&str, &str)] = &[(
    "ГўВЂВњquotesГўВЂВќ in cp1251 mojibake",
    "Windows-1251 mojibake is not repaired (only Latin-1 / Windows-1252)",
)];

/// Every case of the committed table (generated with the real ftfy by
/// tests/data/prompt/gen_ftfy_cases.py) matches, except the known ones, which
/// must still differ (so the list stays true).
#[test]
fn textfix_matches_ftfy_table() {
    let cases = read_cases(&manifest_dir().join("tests/data/prompt/ftfy_cases.jsonl"));
    assert!(cases.len() >= 50, "table too small: {}", cases.len());
    assert!(cases.iter().filter(|c| c.input != c.expected).count() >= 40);
    let (known, checked): (Vec<FixCase>, Vec<FixCase>) = cases
        .into_iter()
        .partition(|c| KNOWN_FTFY_MISMATCHES.iter().any(|(i, _)| *i == c.input));
    assert_eq!(
        known.len(),
        KNOWN_FTFY_MISMATCHES.len(),
        "a known mismatch is missing from the table"
    );
    let failures = check_cases(&checked);
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from ftfy:\n{}",
        failures.len(),
        checked.len(),
        failures.join("\n")
    );
    for c in &known {
        assert_ne!(
            textfix::fix_text(&c.input),
            c.expected,
            "now matches ftfy, drop it from KNOWN_FTFY_MISMATCHES: {:?}",
            c.input
        );
    }
}

/// All DL19/DL20 passages against ftfy: run gen_ftfy_cases.py with `--full FILE`
/// and `FIRSTRANK_FTFY_FULL=FILE cargo test -p firstrank-core --test prompt -- --ignored`.
#[test]
#[ignore]
fn textfix_matches_ftfy_full() {
    let Some(path) = std::env::var_os("FIRSTRANK_FTFY_FULL") else {
        eprintln!("skipping: FIRSTRANK_FTFY_FULL not set");
        return;
    };
    let cases = read_cases(std::path::Path::new(&path));
    let changed = cases.iter().filter(|c| c.input != c.expected).count();
    let failures = check_cases(&cases);
    let failed_changed = cases
        .iter()
        .filter(|c| c.input != c.expected && textfix::fix_text(&c.input) != c.expected)
        .count();
    eprintln!(
        "{} passages, ftfy changes {changed}; we match {} of those and {} of all",
        cases.len(),
        changed - failed_changed,
        cases.len() - failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} differ:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ---------------------------------------------------------------------------
// Prompts

fn cand(docid: &str, title: Option<&str>, text: &str) -> Candidate {
    Candidate {
        docid: docid.to_string(),
        score: 0.0,
        title: title.map(str::to_string),
        text: text.to_string(),
    }
}

const SYSTEM: &str = "You are RankLLM, an intelligent assistant that can rank passages based on their relevancy to the query";

/// The rank_zephyr_alpha template, written out by hand.
#[test]
fn alpha_user_message_exact() {
    let window = [
        cand("d1", None, "Fleas live up to a year."),
        cand("d2", None, "  The flea   life cycle\nhas four stages. "),
        cand("d3", None, "Cats get fleas."),
    ];
    let p = prompt::build(
        "how long do fleas live",
        &window,
        &PromptTemplate::rank_zephyr_alpha(),
        &PromptOptions::rank_llm(),
        None,
    )
    .unwrap();
    let expected = "I will provide you with 3 passages, each indicated by an alphabetical identifier []. Rank the passages based on their relevance to the search query: how long do fleas live.\n\
[A] Fleas live up to a year.\n\
[B] The flea life cycle has four stages.\n\
[C] Cats get fleas.\n\
Search Query: how long do fleas live.\n\
Rank the 3 passages above based on their relevance to the search query. All the passages should be included and listed using identifiers, in descending order of relevance. The output format should be [] > [], e.g., [B] > [A], Answer concisely and directly and only respond with the ranking results, do not say any word or explain.";
    assert_eq!(p.user, expected);
    assert_eq!(p.system, SYSTEM);
    assert_eq!(p.identifiers, ["A", "B", "C"]);
    assert_eq!(p.assistant_prefix, "[");
    // rank_llm's cap for a window of 3: int(300 * (20 / 3)) = 2000.
    assert_eq!(p.word_cap, Some(2000));
}

#[test]
fn numeric_user_message_exact() {
    let window = [cand("d1", None, "alpha"), cand("d2", None, "beta")];
    let p = prompt::build(
        "q",
        &window,
        &PromptTemplate::rank_zephyr_numeric(),
        &PromptOptions::rank_llm(),
        None,
    )
    .unwrap();
    let expected = "I will provide you with 2 passages, each indicated by a numerical identifier []. Rank the passages based on their relevance to the search query: q.\n\
[1] alpha\n[2] beta\n\
Search Query: q.\n\
Rank the 2 passages above based on their relevance to the search query. All the passages should be included and listed using identifiers, in descending order of relevance. The output format should be [] > [], e.g., [2] > [1], Answer concisely and directly and only respond with the ranking results, do not say any word or explain.";
    assert_eq!(p.user, expected);
    assert_eq!(p.identifiers, ["1", "2"]);
    assert_eq!(
        PromptTemplate::builtin("rank_zephyr_numeric").unwrap(),
        PromptTemplate::rank_zephyr_numeric()
    );
    assert_eq!(
        PromptTemplate::resolve("rank_zephyr_alpha")
            .unwrap()
            .identifiers,
        IdentifierStyle::Alpha
    );
}

#[test]
fn bracket_numbers_become_parentheses() {
    let window = [cand("d1", None, "see [1] and [23], not [a1] or [ 2] or []")];
    let alpha = PromptTemplate::rank_zephyr_alpha();
    let p = prompt::build(
        "what is [12]?",
        &window,
        &alpha,
        &PromptOptions::rank_llm(),
        None,
    )
    .unwrap();
    assert_eq!(p.passages[0], "see (1) and (23), not [a1] or [ 2] or []");
    assert!(
        p.user.contains("search query: what is (12)?.\n"),
        "{}",
        p.user
    );
    // The query is repaired too (rank_llm runs ftfy over the whole prompt).
    let p = prompt::build(
        "donâ\u{80}\u{99}t [1]",
        &window,
        &alpha,
        &PromptOptions::rank_llm(),
        None,
    )
    .unwrap();
    assert!(p.user.contains("search query: don't (1).\n"), "{}", p.user);
    let mut opts = PromptOptions::rank_llm();
    opts.replace_bracket_numbers = false;
    let p = prompt::build("what is [12]?", &window, &alpha, &opts, None).unwrap();
    assert_eq!(p.passages[0], "see [1] and [23], not [a1] or [ 2] or []");
    assert!(p.user.contains("query: what is [12]?."));
}

#[test]
fn titles_and_text_repair() {
    let opts = PromptOptions::rank_llm();
    let c = cand("d", Some("Fleas"), " itâ\u{80}\u{99}s a flea ");
    assert_eq!(
        prompt::prepare_passage(&c, &opts, None, None).unwrap(),
        "Title: Fleas Content: it's a flea"
    );
    let c = cand("d", Some(""), "x");
    assert_eq!(prompt::prepare_passage(&c, &opts, None, None).unwrap(), "x");
    let mut no_title = opts;
    no_title.use_title = false;
    no_title.fix_text = false;
    let c = cand("d", Some("Fleas"), "itâ\u{80}\u{99}s");
    assert_eq!(
        prompt::prepare_passage(&c, &no_title, None, None).unwrap(),
        "itâ\u{80}\u{99}s"
    );
}

#[test]
fn word_cap() {
    let text: String = (0..500).map(|i| format!("w{i} ")).collect();
    let window: Vec<Candidate> = (0..20).map(|i| cand(&i.to_string(), None, &text)).collect();
    let p = prompt::build(
        "q",
        &window,
        &PromptTemplate::rank_zephyr_alpha(),
        &PromptOptions::rank_llm(),
        None,
    )
    .unwrap();
    assert_eq!(p.word_cap, Some(300));
    assert!(p
        .passages
        .iter()
        .all(|x| x.split(' ').count() == 300 && x.ends_with("w299")));
    // Window of 7: 300 * (20 / 7) = 857.14...
    let p = prompt::build(
        "q",
        &window[..7],
        &PromptTemplate::rank_zephyr_alpha(),
        &PromptOptions::rank_llm(),
        None,
    )
    .unwrap();
    assert_eq!(p.word_cap, Some(857));
    assert_eq!(p.passages[0].split(' ').count(), 500);
    let opts = PromptOptions {
        max_words: Some(5),
        max_words_reference_window: None,
        ..PromptOptions::rank_llm()
    };
    let p = prompt::build(
        "q",
        &window[..2],
        &PromptTemplate::rank_zephyr_alpha(),
        &opts,
        None,
    )
    .unwrap();
    assert_eq!(p.passages[0], "w0 w1 w2 w3 w4");
}

fn words_in(p: &ListwisePrompt) -> usize {
    p.passages
        .iter()
        .map(|x| x.split_whitespace().count())
        .sum()
}

/// rank_llm's loop by hand: 2 passages of 10 words, cap 10, fake count
/// = 4 + words. Budget 15: 24 tokens → step max(1, 9 // 8) = 1 → cap 9 (22)
/// → 1 → 8 (20) → 1 → 7 (18) → 1 → 6 (16) → 1 → 5 (14) fits: 6 rounds.
/// Budget 6: 24 → step 19 // 8 = 2 → cap 8 (20) → 1 → 7, 6, 5, 4, 3, 2,
/// 1 (6 tokens) fits: 9 rounds. Budget 5: the cap would drop to 0 → error.
#[test]
fn shrink_loop_follows_rank_llm() {
    let text = "a b c d e f g h i j";
    let window = [cand("1", None, text), cand("2", None, text)];
    let opts = PromptOptions {
        max_words: Some(10),
        max_words_reference_window: None,
        ..PromptOptions::rank_llm()
    };
    let alpha = PromptTemplate::rank_zephyr_alpha();
    let count = |p: &ListwisePrompt| Ok(4 + words_in(p));
    let fit = prompt::build_fitting("q", &window, &alpha, &opts, None, 15, count).unwrap();
    assert_eq!(
        (fit.rounds, fit.tokens, fit.prompt.word_cap),
        (6, 14, Some(5))
    );
    assert_eq!(fit.prompt.passages[0], "a b c d e");
    let fit = prompt::build_fitting("q", &window, &alpha, &opts, None, 6, count).unwrap();
    assert_eq!(
        (fit.rounds, fit.tokens, fit.prompt.word_cap),
        (9, 6, Some(1))
    );
    let err = prompt::build_fitting("q", &window, &alpha, &opts, None, 5, count).unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
    // Fits at once: one round, rank_llm's initial cap.
    let fit = prompt::build_fitting(
        "q",
        &window,
        &alpha,
        &PromptOptions::rank_llm(),
        None,
        100,
        count,
    )
    .unwrap();
    assert_eq!((fit.rounds, fit.prompt.word_cap), (1, Some(3000)));
}

/// The float cap keeps its fraction as in Python: 857.14 - 5 → int 852.
#[test]
fn shrink_loop_keeps_float_cap() {
    let text: String = (0..1000).map(|i| format!("w{i} ")).collect();
    let window: Vec<Candidate> = (0..7).map(|i| cand(&i.to_string(), None, &text)).collect();
    // 857 words each: 5999 tokens; budget 5860 → step (139) // 28 = 4, then
    // 853 * 7 = 5971 → (111) // 28 = 3 → 850 (5950) → 90 // 28 = 3 → 847
    // (5929) → 69 // 28 = 2 → 845 (5915) → 55 // 28 = 1 → 844 (5908) → 1 →
    // 843 (5901) → 1 → ... → 837 (5859) fits.
    let count = |p: &ListwisePrompt| Ok(words_in(p));
    let fit = prompt::build_fitting(
        "q",
        &window,
        &PromptTemplate::rank_zephyr_alpha(),
        &PromptOptions::rank_llm(),
        None,
        5860,
        count,
    )
    .unwrap();
    assert_eq!(fit.prompt.word_cap, Some(837));
    assert_eq!(fit.tokens, 837 * 7);
    assert_eq!(fit.rounds, 1 + 5 + 7);
}

/// A token counter that answers from a table and fails on unknown text.
struct TableCounter(std::collections::HashMap<String, (usize, String)>);

impl TokenCounter for TableCounter {
    fn count_tokens(&self, text: &str) -> anyhow::Result<usize> {
        self.0
            .get(text)
            .map(|e| e.0)
            .ok_or_else(|| anyhow::anyhow!("unexpected text {text:?}"))
    }
    fn truncate_to_tokens(&self, text: &str, max_tokens: usize) -> anyhow::Result<String> {
        anyhow::ensure!(max_tokens == 100, "fixture cut is 100 tokens");
        self.0
            .get(text)
            .map(|e| e.1.clone())
            .ok_or_else(|| anyhow::anyhow!("unexpected text {text:?}"))
    }
}

#[derive(serde::Deserialize)]
struct FixtureWindow {
    qid: String,
    query: String,
    passages_raw: Vec<String>,
    passages_truncated: Vec<String>,
    passage_token_counts_before_truncation: Vec<usize>,
    prompt: String,
}

/// The shared fixtures' prompts (SmolLM2's ChatML): our user message equals
/// theirs byte for byte, from the truncated passages (render) and from the
/// raw passages through the fixture pipeline with the fixture's token counts.
#[test]
fn fixture_prompts_reproduced() {
    let Some(shared) = shared_dir() else { return };
    let path = shared.join("fixtures/smollm2-135m/windows.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("skipping: {} absent", path.display());
        return;
    };
    #[derive(serde::Deserialize)]
    struct File {
        windows: Vec<FixtureWindow>,
    }
    let file: File = serde_json::from_str(&text).unwrap();
    assert_eq!(file.windows.len(), 6);
    let alpha = PromptTemplate::rank_zephyr_alpha();
    let opts = PromptOptions::fixture();
    for w in &file.windows {
        let system = w
            .prompt
            .strip_prefix("<|im_start|>system\n")
            .unwrap()
            .split("<|im_end|>")
            .next()
            .unwrap();
        let user_start = w.prompt.find("<|im_start|>user\n").unwrap() + "<|im_start|>user\n".len();
        let tail = "<|im_end|>\n<|im_start|>assistant\n[";
        assert!(w.prompt.ends_with(tail));
        let user = &w.prompt[user_start..w.prompt.len() - tail.len()];

        let p = prompt::render(&w.query, &w.passages_truncated, &alpha, &opts).unwrap();
        assert_eq!(p.user, user, "qid {}", w.qid);
        assert_eq!(p.system, system);
        assert_eq!(p.assistant_prefix, "[");
        assert_eq!(p.identifiers.len(), 20);

        let mut table = std::collections::HashMap::new();
        for ((raw, cut), n) in w
            .passages_raw
            .iter()
            .zip(&w.passages_truncated)
            .zip(&w.passage_token_counts_before_truncation)
        {
            let normalized = raw.split_whitespace().collect::<Vec<_>>().join(" ");
            table.insert(normalized, (*n, cut.clone()));
        }
        let counter = TableCounter(table);
        let window: Vec<Candidate> = w
            .passages_raw
            .iter()
            .enumerate()
            .map(|(i, t)| cand(&i.to_string(), None, t))
            .collect();
        let p = prompt::build(&w.query, &window, &alpha, &opts, Some(&counter)).unwrap();
        assert_eq!(p.user, user, "qid {} via the passage pipeline", w.qid);
    }
}

#[test]
fn token_cap_needs_a_counter() {
    let err = prompt::build(
        "q",
        &[cand("1", None, "x")],
        &PromptTemplate::rank_zephyr_alpha(),
        &PromptOptions::fixture(),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("TokenCounter"), "{err}");
}

#[test]
fn permutation_parsing_repairs_like_rank_llm() {
    use IdentifierStyle::{Alpha, Numeric};
    assert_eq!(
        prompt::parse_permutation("[C] > [A] > [B]", 3, Alpha),
        [2, 0, 1]
    );
    // Repeats dropped, missing appended in window order.
    assert_eq!(
        prompt::parse_permutation("[B] > [B] > [D]", 4, Alpha),
        [1, 3, 0, 2]
    );
    // Unknown identifiers (beyond the window, lowercase) dropped.
    assert_eq!(
        prompt::parse_permutation("[Z] > [c] > [B]", 3, Alpha),
        [1, 0, 2]
    );
    assert_eq!(prompt::parse_permutation("", 3, Alpha), [0, 1, 2]);
    assert_eq!(
        prompt::parse_permutation("I cannot rank these.", 2, Alpha),
        [0, 1]
    );
    // Only what follows </think>; adjacent letters run together as in
    // rank_llm ("AB" is 12, i.e. L).
    assert_eq!(
        prompt::parse_permutation("<think>[A] first</think> [B] > [A]", 2, Alpha),
        [1, 0]
    );
    assert_eq!(
        prompt::parse_permutation("AB > [C]", 12, Alpha),
        [11, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9, 10]
    );
    assert_eq!(
        prompt::parse_permutation("[3] > [1] > [22] > [0]", 3, Numeric),
        [2, 0, 1]
    );
    assert_eq!(
        prompt::parse_permutation("[３] > [①] > [2]", 3, Numeric),
        [2, 0, 1]
    );
    assert_eq!(
        prompt::parse_permutation("[99999999999999999999999] > [2]", 2, Numeric),
        [1, 0]
    );
}

#[test]
fn identifiers() {
    let ids = IdentifierStyle::Alpha.identifiers(20).unwrap();
    assert_eq!(ids.first().unwrap(), "A");
    assert_eq!(ids.last().unwrap(), "T");
    assert_eq!(IdentifierStyle::Alpha.identifier(25).unwrap(), "Z");
    assert!(IdentifierStyle::Alpha.identifier(26).is_err());
    assert_eq!(IdentifierStyle::Numeric.identifier(19).unwrap(), "20");
    let window: Vec<Candidate> = (0..27).map(|i| cand(&i.to_string(), None, "x")).collect();
    assert!(prompt::build(
        "q",
        &window,
        &PromptTemplate::rank_zephyr_alpha(),
        &PromptOptions::rank_llm(),
        None
    )
    .is_err());
    assert!(prompt::build(
        "q",
        &window,
        &PromptTemplate::rank_zephyr_numeric(),
        &PromptOptions::rank_llm(),
        None
    )
    .is_ok());
}

#[test]
fn templates_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let good = write(
        "t.toml",
        "identifiers = \"numeric\"\nsystem = \"sys\"\nprefix = \"Q {{json}}: {query} ({num})\\n\"\npassage = \"<{id}> {passage}\\n\"\nsuffix = \"end\"\n",
    );
    let t = PromptTemplate::load(&good).unwrap();
    assert_eq!(t.assistant_prefix, "[");
    // The query's own braces stay literal.
    let p = prompt::render(
        "a {passage} b",
        &["x".to_string()],
        &t,
        &PromptOptions::rank_llm(),
    )
    .unwrap();
    assert_eq!(p.user, "Q {json}: a {passage} b (1)\n<1> x\nend");
    assert_eq!(PromptTemplate::resolve(good.to_str().unwrap()).unwrap(), t);

    let bad = write("bad.toml", "identifiers = \"alpha\"\nsystem = \"s\"\nprefix = \"{query}\"\npassage = \"[{id}] {text}\"\nsuffix = \"\"\n");
    let err = PromptTemplate::load(&bad).unwrap_err().to_string();
    assert!(
        err.contains("bad.toml") && err.contains("field `passage`") && err.contains("{text}"),
        "{err}"
    );
    let missing = write("m.toml", "identifiers = \"alpha\"\nsystem = \"s\"\nprefix = \"{query}\"\npassage = \"[{id}]\"\nsuffix = \"\"\n");
    let err = PromptTemplate::load(&missing).unwrap_err().to_string();
    assert!(err.contains("missing placeholder {passage}"), "{err}");
    let syntax = write("s.toml", "identifiers = \"alpha\"\nsystem = \n");
    let err = PromptTemplate::load(&syntax).unwrap_err().to_string();
    assert!(err.contains("s.toml") && err.contains("line 2"), "{err}");
    let unknown = write("u.toml", "identifiers = \"greek\"\nsystem = \"s\"\nprefix = \"{query}\"\npassage = \"{id}{passage}\"\nsuffix = \"\"\n");
    let err = PromptTemplate::load(&unknown).unwrap_err().to_string();
    assert!(err.contains("line 1") && err.contains("greek"), "{err}");
    let err = PromptTemplate::load(dir.path().join("absent.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent.toml"), "{err}");
}
