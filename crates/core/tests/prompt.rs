//! Tests of listwise prompts (`firstrank_core::prompt`) and passage text repair
//! (`firstrank_core::textfix`). Tests that read /work/shared skip with a message
//! when it is absent.

use std::path::PathBuf;

use firstrank_core::textfix;

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

/// Every case of the committed table (generated with the real ftfy by
/// tests/data/prompt/gen_ftfy_cases.py) matches.
#[test]
fn textfix_matches_ftfy_table() {
    let cases = read_cases(&manifest_dir().join("tests/data/prompt/ftfy_cases.jsonl"));
    assert!(cases.len() >= 50, "table too small: {}", cases.len());
    assert!(cases.iter().filter(|c| c.input != c.expected).count() >= 40);
    let failures = check_cases(&cases);
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from ftfy:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
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
