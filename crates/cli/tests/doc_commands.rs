//! The commands the documentation shows must still exist. Every `firstrank
//! <command> ...` invocation (also `target/release/firstrank ...` and
//! `cargo run ... -p firstrank -- <command> ...`) inside a fenced code block of
//! README.md and docs/*.md is checked against the built binary: `firstrank
//! <command> --help` must succeed, and each flag the docs pass to that command
//! must appear in its help text. All problems are reported at once, each with
//! the doc file and line, so a renamed flag is fixed in one pass.
//!
//! The scanner understands enough shell for the docs: `\` line continuations,
//! several commands per block or per line (`|`, `;`, `&&`, `||`, `&`, `(`),
//! quotes, `#` comments, here-documents (skipped), leading `VAR=value`
//! assignments, and optional flags written as `[--flag value]`. Flags after a
//! pipe or `;` belong to the other program and are not checked.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// One `firstrank` invocation found in a doc: where it starts, the words
/// after `firstrank` (subcommands, flags and values, in order).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Invocation {
    file: String,
    line: usize,
    args: Vec<String>,
}

/// A logical shell line of a code block: continuations joined, with the
/// 1-based doc line it starts on.
struct LogicalLine {
    line: usize,
    text: String,
}

/// The logical lines of every fenced code block in `markdown`, here-document
/// bodies left out.
fn code_block_lines(markdown: &str) -> Vec<LogicalLine> {
    let mut out = Vec::new();
    let mut fence: Option<String> = None;
    let mut pending: Option<LogicalLine> = None;
    let mut heredoc_end: Option<String> = None;
    for (i, raw) in markdown.lines().enumerate() {
        let number = i + 1;
        let trimmed = raw.trim_start();
        match &fence {
            None => {
                if let Some(marker) = fence_marker(trimmed) {
                    fence = Some(marker);
                }
                continue;
            }
            Some(marker) => {
                if trimmed.starts_with(marker.as_str())
                    && trimmed
                        .trim_start_matches(marker.chars().next().unwrap_or('`'))
                        .trim()
                        .is_empty()
                {
                    fence = None;
                    if let Some(p) = pending.take() {
                        out.push(p);
                    }
                    heredoc_end = None;
                    continue;
                }
            }
        }
        if let Some(end) = &heredoc_end {
            if raw.trim() == end {
                heredoc_end = None;
            }
            continue;
        }
        let (text, continues) = match raw.strip_suffix('\\') {
            Some(head) => (head, true),
            None => (raw, false),
        };
        let current = match pending.take() {
            Some(mut p) => {
                p.text.push(' ');
                p.text.push_str(text.trim());
                p
            }
            None => LogicalLine {
                line: number,
                text: text.trim().to_string(),
            },
        };
        if continues {
            pending = Some(current);
        } else {
            heredoc_end = heredoc_delimiter(&current.text);
            out.push(current);
        }
    }
    if let Some(p) = pending {
        out.push(p);
    }
    out
}

/// The fence a line opens (three or more backticks or tildes), if it opens one.
fn fence_marker(line: &str) -> Option<String> {
    for c in ['`', '~'] {
        let n = line.chars().take_while(|&x| x == c).count();
        if n >= 3 {
            return Some(std::iter::repeat_n(c, n).collect());
        }
    }
    None
}

/// The end word of a here-document the line opens (`<<EOF`, `<<'EOF'`,
/// `<<-"EOF"`), if any.
fn heredoc_delimiter(line: &str) -> Option<String> {
    let at = line.find("<<")?;
    let rest = line[at + 2..].trim_start_matches('-').trim_start();
    let word: String = rest
        .trim_start_matches(['\'', '"'])
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!word.is_empty()).then_some(word)
}

/// Splits a shell line into simple commands (at `|`, `||`, `&&`, `;`, `&`,
/// `(`, `)`), each a list of words with quotes removed; a `#` that starts a
/// word ends the line.
fn simple_commands(line: &str) -> Vec<Vec<String>> {
    let mut commands = vec![Vec::new()];
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    let end_word = |word: &mut String, in_word: &mut bool, commands: &mut Vec<Vec<String>>| {
        if *in_word {
            commands
                .last_mut()
                .expect("never empty")
                .push(std::mem::take(word));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            } else {
                word.push(c);
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                in_word = true;
            }
            '#' if !in_word => break,
            '|' | ';' | '(' | ')' => {
                end_word(&mut word, &mut in_word, &mut commands);
                commands.push(Vec::new());
            }
            // `2>&1`, `&>`: part of a redirection, not a separator.
            '&' if word.ends_with('>') || chars.peek() == Some(&'>') => {
                word.push(c);
                in_word = true;
            }
            '&' => {
                end_word(&mut word, &mut in_word, &mut commands);
                commands.push(Vec::new());
            }
            c if c.is_whitespace() => end_word(&mut word, &mut in_word, &mut commands),
            _ => {
                word.push(c);
                in_word = true;
            }
        }
    }
    end_word(&mut word, &mut in_word, &mut commands);
    commands.retain(|c| !c.is_empty());
    commands
}

/// The arguments after `firstrank` in a simple command, if it runs firstrank:
/// as `firstrank` or a path ending in `/firstrank` (not as the value of
/// `-p`/`--package`), or as `cargo run ... -p firstrank ... -- ARGS`.
fn firstrank_args(words: &[String]) -> Option<Vec<String>> {
    let words: Vec<&String> = words.iter().skip_while(|w| is_assignment(w)).collect();
    if words.first().map(|w| w.as_str()) == Some("cargo")
        && words.get(1).map(|w| w.as_str()) == Some("run")
    {
        let package = words
            .windows(2)
            .any(|p| matches!(p[0].as_str(), "-p" | "--package" | "--bin") && p[1] == "firstrank")
            || words
                .iter()
                .any(|w| *w == "--package=firstrank" || *w == "--bin=firstrank");
        let sep = words.iter().position(|w| *w == "--")?;
        return package.then(|| words[sep + 1..].iter().map(|w| w.to_string()).collect());
    }
    for (i, w) in words.iter().enumerate() {
        let is_binary = *w == "firstrank" || w.ends_with("/firstrank");
        // `-p firstrank` names a package; `docker build -t firstrank` a tag.
        let is_package_value = i > 0
            && matches!(
                words[i - 1].as_str(),
                "-p" | "--package" | "--bin" | "-t" | "--tag"
            );
        if is_binary && !is_package_value {
            return Some(words[i + 1..].iter().map(|w| w.to_string()).collect());
        }
    }
    None
}

fn is_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit())
        }
        None => false,
    }
}

/// Every firstrank invocation in the code blocks of one markdown file.
fn invocations(file: &str, markdown: &str) -> Vec<Invocation> {
    let mut out = Vec::new();
    for logical in code_block_lines(markdown) {
        for command in simple_commands(&logical.text) {
            if let Some(args) = firstrank_args(&command) {
                out.push(Invocation {
                    file: file.to_string(),
                    line: logical.line,
                    args,
                });
            }
        }
    }
    out
}

/// A flag as the docs write it, normalised: `[--device` -> `--device`,
/// `--top-k=5` -> `--top-k`; `None` for anything that is not a flag.
fn flag_name(word: &str) -> Option<String> {
    let word = word.trim_start_matches('[').trim_end_matches(']');
    let name = word.split_once('=').map_or(word, |(n, _)| n);
    let long = name.strip_prefix("--").is_some_and(|rest| {
        rest.starts_with(|c: char| c.is_ascii_alphabetic())
            && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    let short = name.len() == 2
        && name.starts_with('-')
        && name[1..].chars().all(|c| c.is_ascii_alphabetic());
    (long || short).then(|| name.to_string())
}

/// Whether `flag` is documented in `help` (as `--flag` or `-f` followed by a
/// separator, so `--top` does not match `--top-k`).
fn help_mentions(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(at, _)| {
        let before = help[..at].chars().next_back();
        let after = help[at + flag.len()..].chars().next();
        let starts = before.is_none_or(|c| c.is_whitespace() || c == '[' || c == ',');
        let ends = after.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        starts && ends
    })
}

/// The subcommand names a help text lists under `Commands:`.
fn listed_subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| *w != "help")
        .map(str::to_string)
        .collect()
}

/// `firstrank <subcommands> --help` already run: the help text, or the first
/// line of the error the binary printed.
type HelpCache = HashMap<Vec<String>, Result<String, String>>;

/// `firstrank <path> --help`: the help text, or the error the binary printed.
fn help_for(cache: &mut HelpCache, path: &[String]) -> Result<String, String> {
    cache
        .entry(path.to_vec())
        .or_insert_with(|| {
            let output = Command::cargo_bin("firstrank")
                .expect("the firstrank binary is built for the tests")
                .args(path)
                .arg("--help")
                .env("NO_COLOR", "1")
                .output()
                .expect("running firstrank --help");
            if output.status.success() {
                Ok(String::from_utf8_lossy(&output.stdout).into_owned())
            } else {
                let stderr = String::from_utf8_lossy(&output.stderr);
                Err(stderr.lines().next().unwrap_or("failed").trim().to_string())
            }
        })
        .clone()
}

/// Checks one invocation; returns its problems.
fn check(inv: &Invocation, cache: &mut HelpCache) -> Vec<String> {
    let at = format!("{}:{}", inv.file, inv.line);
    let shown = format!("`firstrank {}`", inv.args.join(" "));
    // Walk down the subcommands: `models`, then `models list`.
    let mut path: Vec<String> = Vec::new();
    let mut rest = inv.args.as_slice();
    loop {
        let help = match help_for(cache, &path) {
            Ok(h) => h,
            Err(e) => {
                return vec![format!(
                    "{at}: {shown}: `firstrank {} --help` fails: {e}",
                    path.join(" ")
                )]
            }
        };
        let subcommands = listed_subcommands(&help);
        match rest.first() {
            Some(word) if !subcommands.is_empty() && !word.starts_with('-') => {
                if !subcommands.contains(word) {
                    let parent = if path.is_empty() {
                        "firstrank".to_string()
                    } else {
                        format!("firstrank {}", path.join(" "))
                    };
                    return vec![format!(
                        "{at}: {shown}: `{word}` is not a subcommand of `{parent}` (it has: {})",
                        subcommands.join(", ")
                    )];
                }
                path.push(word.clone());
                rest = &rest[1..];
            }
            _ => {
                let command = if path.is_empty() {
                    "firstrank".to_string()
                } else {
                    format!("firstrank {}", path.join(" "))
                };
                return rest
                    .iter()
                    .filter_map(|w| flag_name(w))
                    .filter(|flag| !help_mentions(&help, flag))
                    .map(|flag| format!("{at}: {shown}: `{flag}` is not in `{command} --help`"))
                    .collect();
            }
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// README.md and every docs/*.md, as (name relative to the root, text).
fn doc_files() -> Vec<(String, String)> {
    let root = workspace_root();
    let mut names = vec!["README.md".to_string()];
    let docs = root.join("docs");
    let mut pages: Vec<String> = std::fs::read_dir(&docs)
        .unwrap_or_else(|e| panic!("{}: {e}", docs.display()))
        .map(|entry| {
            entry
                .expect("reading docs/")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    pages.sort();
    names.extend(pages);
    names
        .into_iter()
        .map(|name| {
            let path = root.join(&name);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (name, text)
        })
        .collect()
}

#[test]
fn documented_commands_and_flags_exist() {
    let docs = doc_files();
    assert!(docs.len() > 1, "found no docs/*.md pages beside README.md");
    let all: Vec<Invocation> = docs
        .iter()
        .flat_map(|(name, text)| invocations(name, text))
        .collect();
    // The scan must see what is plainly there, or this test would pass on nothing.
    let commands: BTreeMap<&str, usize> =
        all.iter()
            .filter_map(|i| i.args.first())
            .fold(BTreeMap::new(), |mut m, c| {
                *m.entry(c.as_str()).or_default() += 1;
                m
            });
    for expected in ["rerank", "eval", "serve", "train", "label", "pipeline"] {
        assert!(
            commands.contains_key(expected),
            "no `firstrank {expected}` found in the docs' code blocks; found: {commands:?}"
        );
    }
    let mut cache = HashMap::new();
    let problems: Vec<String> = all.iter().flat_map(|inv| check(inv, &mut cache)).collect();
    assert!(
        problems.is_empty(),
        "{} documented command(s) do not match the binary:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn a_stale_flag_and_an_unknown_command_are_both_reported_with_their_lines() {
    let doc = "text\n\n```bash\nfirstrank rerank --input a.json --no-such-flag 3 \\\n  --output b.trec\nfirstrank no-such-command --x\n```\n";
    let found = invocations("docs/example.md", doc);
    let mut cache = HashMap::new();
    let problems: Vec<String> = found
        .iter()
        .flat_map(|inv| check(inv, &mut cache))
        .collect();
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problems[0].starts_with("docs/example.md:4: ")
            && problems[0].contains("`--no-such-flag` is not in `firstrank rerank --help`"),
        "{}",
        problems[0]
    );
    assert!(
        problems[1].starts_with("docs/example.md:6: ")
            && problems[1].contains("`no-such-command` is not a subcommand of `firstrank`"),
        "{}",
        problems[1]
    );
}

#[test]
fn nested_subcommands_are_followed() {
    let doc =
        "```\nfirstrank models list\nfirstrank models fetch smollm2\nfirstrank models lsit\n```\n";
    let found = invocations("README.md", doc);
    let mut cache = HashMap::new();
    let problems: Vec<String> = found
        .iter()
        .flat_map(|inv| check(inv, &mut cache))
        .collect();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].contains("`lsit` is not a subcommand of `firstrank models`"),
        "{}",
        problems[0]
    );
}

#[test]
fn the_scanner_reads_shell_as_the_docs_write_it() {
    let doc = concat!(
        "prose with firstrank rerank --outside-a-block\n",
        "```bash\n",
        "# a comment: firstrank eval --not-a-command\n",
        "FIRSTRANK_API_KEY=secret firstrank serve --model m.gguf --port 9000   # trailing --comment\n",
        "firstrank train --data l.jsonl [--device cuda] | tee log --tee-flag; echo --echo-flag\n",
        "cargo run --release -p firstrank -- rerank --model smollm2 \\\n",
        "    --input x.json\n",
        "cargo build --release -p firstrank\n",
        "cargo run --release -p firstrank-server --example loadtest -- --url u\n",
        "target/release/firstrank models fetch && curl -s localhost -d '{\"a\": \"b | c\"}'\n",
        "cat > c.jsonl <<'EOF'\n",
        "firstrank inside --a-heredoc\n",
        "EOF\n",
        "(cd dir && ./target/release/firstrank bench --windows 2 2>&1) > out.txt\n",
        "```\n",
        "~~~\n",
        "firstrank index --corpus c.jsonl --index i\n",
        "~~~\n",
    );
    let found: Vec<(usize, String)> = invocations("f.md", doc)
        .into_iter()
        .map(|i| (i.line, i.args.join(" ")))
        .collect();
    let expected: Vec<(usize, String)> = vec![
        (4, "serve --model m.gguf --port 9000".into()),
        (5, "train --data l.jsonl [--device cuda]".into()),
        (6, "rerank --model smollm2 --input x.json".into()),
        (10, "models fetch".into()),
        (14, "bench --windows 2 2>&1".into()),
        (17, "index --corpus c.jsonl --index i".into()),
    ];
    assert_eq!(found, expected);
    assert_eq!(flag_name("[--device"), Some("--device".into()));
    assert_eq!(flag_name("--top-k=5"), Some("--top-k".into()));
    assert_eq!(flag_name("-k"), Some("-k".into()));
    assert_eq!(flag_name("2>&1"), None);
    assert_eq!(flag_name("--"), None);
    assert!(help_mentions("  -k, --top-k <N>\n", "--top-k"));
    assert!(!help_mentions("  -k, --top-k <N>\n", "--top"));
    assert!(help_mentions("  -k, --top-k <N>\n", "-k"));
}
