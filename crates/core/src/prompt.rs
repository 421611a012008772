//! Listwise prompts: the rank_zephyr templates (alphabetical identifiers as in
//! FIRST, or numeric), passage preparation exactly as rank_llm does it, the
//! shrink loop that fits a window into the model's context, and parsing of a
//! generated permutation (`[C] > [A] > ...`) with rank_llm's repair.
//!
//! Templates are data ([`PromptTemplate`], TOML files under `templates/`,
//! built in with `include_str!` or loaded from a user path). Chat-template
//! rendering belongs to the model crate: a [`ListwisePrompt`] only holds the
//! system message, the user message, the identifiers and the assistant-turn
//! prefix FIRST appends (`[`).
//!
//! Passage preparation ([`prepare_passage`]), in rank_llm's order
//! (`convert_doc_to_prompt_content`): `Title: {title} Content: {text}` when a
//! title exists; strip; `ftfy.fix_text` ([`crate::textfix`]); whitespace
//! collapsed and cut to the first `max_words` words (300, or rank_llm's
//! `300 * (20 / n)` for a window of n); optionally cut to the first N tokens
//! (`decode(encode(text)[:N])`, via [`TokenCounter`]); `[digits]` →
//! `(digits)` so passages cannot fake identifiers (also in the query).
//! [`PromptOptions::fixture`] is the mode of the shared Python reference
//! (`ref/first_ref.py`): whitespace collapsed, 100-token cut, no ftfy, no
//! `[digits]` rewrite.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{textfix, Candidate, Error, Result};

/// The built-in rank_zephyr template with identifiers `[A]`..`[Z]` (FIRST).
pub const RANK_ZEPHYR_ALPHA_TOML: &str = include_str!("../templates/rank_zephyr_alpha.toml");
/// The built-in rank_zephyr template with identifiers `[1]`, `[2]`, ...
pub const RANK_ZEPHYR_NUMERIC_TOML: &str = include_str!("../templates/rank_zephyr_numeric.toml");

/// Counts and cuts tokens with a model's tokenizer; implemented by the model
/// crate. Neither method adds special tokens.
pub trait TokenCounter {
    fn count_tokens(&self, text: &str) -> anyhow::Result<usize>;
    /// `decode(encode(text)[..max_tokens])`. Only called for texts longer
    /// than `max_tokens` tokens.
    fn truncate_to_tokens(&self, text: &str, max_tokens: usize) -> anyhow::Result<String>;
    /// Each token's `[start, end)` byte range in `text`, in order (for cutting
    /// long documents into chunks on token boundaries, the `chunk` module).
    fn token_spans(&self, text: &str) -> anyhow::Result<Vec<(usize, usize)>> {
        let _ = text;
        anyhow::bail!(
            "this tokenizer reports no token offsets, which cutting documents into chunks needs"
        )
    }
}

/// How passages are labelled in the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentifierStyle {
    /// `A`, `B`, ..., `Z` (rank_llm's `chr(ord('A') + i)`; at most 26).
    Alpha,
    /// `1`, `2`, ...
    Numeric,
}

impl IdentifierStyle {
    /// Most passages one prompt can label (`None`: unbounded).
    pub fn max_passages(self) -> Option<usize> {
        match self {
            IdentifierStyle::Alpha => Some(26),
            IdentifierStyle::Numeric => None,
        }
    }

    /// The identifier text of the passage at 0-based `index` (`A` / `1`).
    pub fn identifier(self, index: usize) -> Result<String> {
        match self {
            IdentifierStyle::Alpha if index < 26 => Ok(char::from(b'A' + index as u8).to_string()),
            IdentifierStyle::Alpha => Err(Error::Invalid(format!(
                "alphabetical identifiers stop at Z (26 passages); passage index {index} has none"
            ))),
            IdentifierStyle::Numeric => Ok((index + 1).to_string()),
        }
    }

    /// The identifiers of the first `n` passages (FIRST scores the tokens of these).
    pub fn identifiers(self, n: usize) -> Result<Vec<String>> {
        (0..n).map(|i| self.identifier(i)).collect()
    }
}

fn default_assistant_prefix() -> String {
    "[".to_string()
}

/// A listwise prompt template; see `templates/rank_zephyr_alpha.toml` for the
/// fields and placeholders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptTemplate {
    #[serde(default)]
    pub name: String,
    pub identifiers: IdentifierStyle,
    pub system: String,
    /// Start of the user message; placeholders `{num}`, `{query}`.
    pub prefix: String,
    /// One per passage; placeholders `{id}`, `{passage}` (both required).
    pub passage: String,
    /// End of the user message; placeholders `{num}`, `{query}`.
    pub suffix: String,
    /// Appended by FIRST after the chat template's generation prompt.
    #[serde(default = "default_assistant_prefix")]
    pub assistant_prefix: String,
}

const BUILTIN: &[(&str, &str)] = &[
    ("rank_zephyr_alpha", RANK_ZEPHYR_ALPHA_TOML),
    ("rank_zephyr_numeric", RANK_ZEPHYR_NUMERIC_TOML),
];

impl PromptTemplate {
    /// FIRST's template: rank_zephyr with `[A]`..`[T]`.
    pub fn rank_zephyr_alpha() -> Self {
        Self::from_toml_str(RANK_ZEPHYR_ALPHA_TOML, "<built-in rank_zephyr_alpha>")
            .expect("built-in template is valid")
    }

    /// rank_zephyr with `[1]`..`[20]`.
    pub fn rank_zephyr_numeric() -> Self {
        Self::from_toml_str(RANK_ZEPHYR_NUMERIC_TOML, "<built-in rank_zephyr_numeric>")
            .expect("built-in template is valid")
    }

    /// Names of the built-in templates.
    pub fn builtin_names() -> Vec<&'static str> {
        BUILTIN.iter().map(|(n, _)| *n).collect()
    }

    /// A built-in template by name (`rank_zephyr_alpha`, `rank_zephyr_numeric`).
    pub fn builtin(name: &str) -> Option<Self> {
        BUILTIN.iter().find(|(n, _)| *n == name).map(|(n, text)| {
            Self::from_toml_str(text, format!("<built-in {n}>"))
                .expect("built-in template is valid")
        })
    }

    /// A built-in name, or else a path to a TOML template file.
    pub fn resolve(name_or_path: &str) -> Result<Self> {
        match Self::builtin(name_or_path) {
            Some(t) => Ok(t),
            None => Self::load(name_or_path),
        }
    }

    /// Reads a template from a TOML file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text, path)
    }

    /// Parses and validates a template; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: impl AsRef<Path>) -> Result<Self> {
        let origin = origin.as_ref();
        let template: PromptTemplate = toml::from_str(text).map_err(|e| {
            let location = match e.span() {
                Some(span) => {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                    format!("line {line}, column {column}")
                }
                None => "template".to_string(),
            };
            Error::input(origin, location, e.message().trim().to_string())
        })?;
        template.validate(origin)?;
        Ok(template)
    }

    fn validate(&self, origin: &Path) -> Result<()> {
        let fields: [(&str, &str, &[&str], &[&str]); 4] = [
            ("system", &self.system, &[], &[]),
            ("prefix", &self.prefix, &["num", "query"], &[]),
            (
                "passage",
                &self.passage,
                &["id", "passage"],
                &["id", "passage"],
            ),
            ("suffix", &self.suffix, &["num", "query"], &[]),
        ];
        for (field, text, allowed, required) in fields {
            let used = placeholders(text)
                .map_err(|m| Error::input(origin, format!("field `{field}`"), m))?;
            if let Some(bad) = used.iter().find(|u| !allowed.contains(&u.as_str())) {
                return Err(Error::input(
                    origin,
                    format!("field `{field}`"),
                    format!(
                        "unknown placeholder {{{bad}}}; expected one of: {} (write {{{{ and }}}} for literal braces)",
                        if allowed.is_empty() {
                            "none".to_string()
                        } else {
                            allowed.iter().map(|a| format!("{{{a}}}")).collect::<Vec<_>>().join(", ")
                        }
                    ),
                ));
            }
            if let Some(missing) = required.iter().find(|r| !used.iter().any(|u| u == *r)) {
                return Err(Error::input(
                    origin,
                    format!("field `{field}`"),
                    format!("missing placeholder {{{missing}}}"),
                ));
            }
        }
        if !self.prefix.contains("{query}") && !self.suffix.contains("{query}") {
            return Err(Error::input(
                origin,
                "fields `prefix`, `suffix`",
                "the query placeholder {query} must appear in prefix or suffix",
            ));
        }
        Ok(())
    }
}

/// Splits a template into literal text and `{name}` placeholders (`{{`/`}}`
/// are literal braces, as in Python's str.format).
#[derive(Debug, PartialEq)]
enum Piece<'a> {
    Text(&'a str),
    Brace(char),
    Placeholder(&'a str),
}

fn parse_pieces(template: &str) -> std::result::Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(pos) = rest.find(['{', '}']) {
        if pos > 0 {
            pieces.push(Piece::Text(&rest[..pos]));
        }
        let brace = rest.as_bytes()[pos];
        let after = &rest[pos + 1..];
        if brace == b'{' && after.starts_with('{') {
            pieces.push(Piece::Brace('{'));
            rest = &after[1..];
        } else if brace == b'}' && after.starts_with('}') {
            pieces.push(Piece::Brace('}'));
            rest = &after[1..];
        } else if brace == b'{' {
            let end = after.find('}').ok_or_else(|| {
                format!("unclosed `{{` in {template:?} (write {{{{ for a literal brace)")
            })?;
            pieces.push(Piece::Placeholder(&after[..end]));
            rest = &after[end + 1..];
        } else {
            return Err(format!(
                "single `}}` in {template:?} (write }}}} for a literal brace)"
            ));
        }
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

pub(crate) fn placeholders(template: &str) -> std::result::Result<Vec<String>, String> {
    Ok(parse_pieces(template)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Placeholder(name) => Some(name.to_string()),
            _ => None,
        })
        .collect())
}

/// Fills placeholders in one pass (values are never re-scanned, so a query
/// containing `{passage}` stays literal). Loaded templates are validated;
/// for one built in code, unknown placeholders and stray braces stay as text.
pub(crate) fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let Ok(pieces) = parse_pieces(template) else {
        return template.to_string();
    };
    let mut out = String::with_capacity(template.len() + 64);
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Brace(c) => out.push(c),
            Piece::Placeholder(name) => match values.iter().find(|(k, _)| *k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push('{');
                    out.push_str(name);
                    out.push('}');
                }
            },
        }
    }
    out
}

/// How passages (and the query) are prepared. The default is rank_llm's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptOptions {
    /// Prefix `Title: {title} Content: ` when a candidate has a non-empty title.
    pub use_title: bool,
    /// Apply [`textfix::fix_text`] (rank_llm's `ftfy.fix_text`).
    pub fix_text: bool,
    /// Rewrite `[digits]` to `(digits)` in passages and query.
    pub replace_bracket_numbers: bool,
    /// Keep the first this many whitespace words (after collapsing
    /// whitespace, which always happens). `None`: no word cap.
    pub max_words: Option<usize>,
    /// rank_llm scales the word cap by the window: `max_words * (ref / n)`
    /// for a window of n passages (ref 20: 300 words at n = 20, 600 at 10).
    /// `None`: the cap is `max_words` whatever the window.
    pub max_words_reference_window: Option<usize>,
    /// Cut each passage to its first this many tokens (needs a [`TokenCounter`]).
    pub max_tokens: Option<usize>,
}

impl Default for PromptOptions {
    fn default() -> Self {
        Self::rank_llm()
    }
}

impl PromptOptions {
    /// rank_llm's `RankListwiseOSLLM`: titles, ftfy, `[n]`→`(n)`, 300 words
    /// scaled by 20/n.
    pub fn rank_llm() -> Self {
        Self {
            use_title: true,
            fix_text: true,
            replace_bracket_numbers: true,
            max_words: Some(300),
            max_words_reference_window: Some(20),
            max_tokens: None,
        }
    }

    /// The shared Python reference's (and fixtures') mode: whitespace
    /// collapsed, first 100 tokens, no ftfy, no `[n]` rewrite.
    pub fn fixture() -> Self {
        Self {
            use_title: true,
            fix_text: false,
            replace_bracket_numbers: false,
            max_words: None,
            max_words_reference_window: None,
            max_tokens: Some(100),
        }
    }

    /// The word cap rank_llm starts from for a window of `n` passages,
    /// computed in f64 as Python does (`300 * (20 / n)`).
    pub fn initial_word_cap(&self, n: usize) -> Option<f64> {
        self.max_words
            .map(|w| match self.max_words_reference_window {
                Some(r) if n > 0 => w as f64 * (r as f64 / n as f64),
                _ => w as f64,
            })
    }
}

/// One window's prompt, ready for a chat template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListwisePrompt {
    pub system: String,
    pub user: String,
    /// Identifier of each passage in window order (`A`, `B`, ... or `1`, `2`, ...).
    pub identifiers: Vec<String>,
    /// What FIRST appends after the generation prompt (`[`).
    pub assistant_prefix: String,
    /// The passages as they appear in the prompt.
    pub passages: Vec<String>,
    /// The word cap these passages were cut to (`None`: none).
    pub word_cap: Option<usize>,
}

/// Python's `str.isspace` (what `str.split()` splits on): Rust's White_Space
/// plus the information separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `[digits]` → `(digits)` (rank_llm's `_replace_number`; ASCII digits only,
/// where Python's `\d` would also take other scripts' decimal digits).
pub fn replace_bracket_numbers(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'[' {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j].is_ascii_digit() {
                j += 1;
            }
            if j > i + 1 && j < bytes.len() && bytes[j] == b']' {
                out.push_str(&text[copied..i]);
                out.push('(');
                out.push_str(&text[i + 1..j]);
                out.push(')');
                i = j + 1;
                copied = i;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    out
}

/// Collapses whitespace runs to one space and keeps at most `max_words` words
/// (Python's `" ".join(text.split()[:max_words])`).
pub fn cut_words(text: &str, max_words: Option<usize>) -> String {
    let words = text.split(is_py_space).filter(|w| !w.is_empty());
    match max_words {
        Some(n) => words.take(n).collect::<Vec<_>>().join(" "),
        None => words.collect::<Vec<_>>().join(" "),
    }
}

/// The text one candidate contributes to the prompt (see the module docs).
/// `word_cap` overrides `options.max_words` (the shrink loop lowers it).
pub fn prepare_passage(
    candidate: &Candidate,
    options: &PromptOptions,
    word_cap: Option<usize>,
    counter: Option<&dyn TokenCounter>,
) -> anyhow::Result<String> {
    let mut content = match &candidate.title {
        Some(title) if options.use_title && !title.is_empty() => {
            format!("Title: {title} Content: {}", candidate.text)
        }
        _ => candidate.text.clone(),
    };
    content = content.trim_matches(is_py_space).to_string();
    if options.fix_text {
        content = textfix::fix_text(&content);
    }
    content = cut_words(&content, word_cap);
    if let Some(max_tokens) = options.max_tokens {
        let counter = counter.ok_or_else(|| {
            anyhow::anyhow!(
                "a token cap of {max_tokens} per passage needs a tokenizer (TokenCounter)"
            )
        })?;
        if counter.count_tokens(&content)? > max_tokens {
            content = counter.truncate_to_tokens(&content, max_tokens)?;
        }
    }
    if options.replace_bracket_numbers {
        content = replace_bracket_numbers(&content);
    }
    Ok(content)
}

/// Renders a prompt from passages already prepared (no further processing);
/// the query gets ftfy and the `[digits]` rewrite when `options` ask for them.
pub fn render(
    query: &str,
    passages: &[String],
    template: &PromptTemplate,
    options: &PromptOptions,
) -> Result<ListwisePrompt> {
    let n = passages.len();
    if let Some(max) = template.identifiers.max_passages() {
        if n > max {
            return Err(Error::Invalid(format!(
                "template `{}` labels at most {max} passages, the window has {n}",
                template.name
            )));
        }
    }
    let identifiers = template.identifiers.identifiers(n)?;
    // rank_llm runs ftfy over the whole chat prompt before counting it, which
    // also repairs the query; passages were repaired one by one already.
    let mut query = if options.fix_text {
        textfix::fix_text(query)
    } else {
        query.to_string()
    };
    if options.replace_bracket_numbers {
        query = replace_bracket_numbers(&query);
    }
    let num = n.to_string();
    let outer = [("num", num.as_str()), ("query", query.as_str())];
    let mut user = fill(&template.prefix, &outer);
    for (id, passage) in identifiers.iter().zip(passages) {
        user.push_str(&fill(
            &template.passage,
            &[("id", id), ("passage", passage)],
        ));
    }
    user.push_str(&fill(&template.suffix, &outer));
    Ok(ListwisePrompt {
        system: template.system.clone(),
        user,
        identifiers,
        assistant_prefix: template.assistant_prefix.clone(),
        passages: passages.to_vec(),
        word_cap: None,
    })
}

/// Builds the prompt of one window with the word cap of `options` (scaled
/// to the window as rank_llm does), without fitting it to a context.
pub fn build(
    query: &str,
    window: &[Candidate],
    template: &PromptTemplate,
    options: &PromptOptions,
    counter: Option<&dyn TokenCounter>,
) -> anyhow::Result<ListwisePrompt> {
    let cap = options
        .initial_word_cap(window.len())
        .map(|c| c.trunc() as usize);
    build_with_cap(query, window, template, options, counter, cap)
}

fn build_with_cap(
    query: &str,
    window: &[Candidate],
    template: &PromptTemplate,
    options: &PromptOptions,
    counter: Option<&dyn TokenCounter>,
    cap: Option<usize>,
) -> anyhow::Result<ListwisePrompt> {
    let passages = window
        .iter()
        .map(|c| prepare_passage(c, options, cap, counter))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut prompt = render(query, &passages, template, options)?;
    prompt.word_cap = cap;
    Ok(prompt)
}

/// A prompt that fits the context, with how it was found.
#[derive(Debug, Clone, PartialEq)]
pub struct FittedPrompt {
    pub prompt: ListwisePrompt,
    /// Tokens of the final prompt as `count_prompt` counted them.
    pub tokens: usize,
    /// How many prompts were built (1 when the first one fit).
    pub rounds: usize,
}

/// Builds the window's prompt and, while `count_prompt` (the caller's count of
/// the chat-formatted prompt) exceeds `max_prompt_tokens`, lowers the
/// per-passage word cap and rebuilds: rank_llm's `create_prompt` loop,
///
/// ```text
/// cap = max_words * (ref / n)            # 300 * (20 / n), a float
/// while tokens(prompt(int(cap))) > max_prompt_tokens:
///     cap -= max(1, (tokens - max_prompt_tokens) // (n * 4))
/// ```
///
/// rank_llm passes `max_prompt_tokens = context_size - num_output_tokens(n)`
/// and counts the chat prompt after running ftfy over it again. Without a
/// word cap in `options` the loop starts from the longest passage's word
/// count. It fails (instead of going on with rank_llm's negative caps) once
/// the cap drops below one word.
pub fn build_fitting(
    query: &str,
    window: &[Candidate],
    template: &PromptTemplate,
    options: &PromptOptions,
    counter: Option<&dyn TokenCounter>,
    max_prompt_tokens: usize,
    count_prompt: impl Fn(&ListwisePrompt) -> anyhow::Result<usize>,
) -> anyhow::Result<FittedPrompt> {
    let n = window.len();
    let mut cap = options.initial_word_cap(n);
    let mut rounds = 0;
    loop {
        let word_cap = cap.map(|c| c.trunc() as usize);
        let prompt = build_with_cap(query, window, template, options, counter, word_cap)?;
        rounds += 1;
        let tokens = count_prompt(&prompt)?;
        if tokens <= max_prompt_tokens {
            return Ok(FittedPrompt {
                prompt,
                tokens,
                rounds,
            });
        }
        let current = match cap {
            Some(c) => c,
            None => prompt
                .passages
                .iter()
                .map(|p| cut_words(p, None).split(' ').count())
                .max()
                .unwrap_or(0) as f64,
        };
        let step = ((tokens - max_prompt_tokens) / (n.max(1) * 4)).max(1);
        let next = current - step as f64;
        if next < 1.0 {
            anyhow::bail!(
                "the prompt does not fit in {max_prompt_tokens} tokens even with 1 word per passage \
                 ({tokens} tokens at {} words per passage, {n} passages)",
                current.trunc()
            );
        }
        cap = Some(next);
    }
}

/// Stand-ins for digits that rank_llm maps back to ASCII digits before
/// parsing (superscripts, subscripts, circled, dingbat, fullwidth, and
/// U+1F100..U+1F109).
const FAKE_DIGITS: &[(char, char)] = &[
    ('⁰', '0'),
    ('¹', '1'),
    ('²', '2'),
    ('³', '3'),
    ('⁴', '4'),
    ('⁵', '5'),
    ('⁶', '6'),
    ('⁷', '7'),
    ('⁸', '8'),
    ('⁹', '9'),
    ('₀', '0'),
    ('₁', '1'),
    ('₂', '2'),
    ('₃', '3'),
    ('₄', '4'),
    ('₅', '5'),
    ('₆', '6'),
    ('₇', '7'),
    ('₈', '8'),
    ('₉', '9'),
    ('①', '1'),
    ('②', '2'),
    ('③', '3'),
    ('④', '4'),
    ('⑤', '5'),
    ('⑥', '6'),
    ('⑦', '7'),
    ('⑧', '8'),
    ('⑨', '9'),
    ('❶', '1'),
    ('❷', '2'),
    ('❸', '3'),
    ('❹', '4'),
    ('❺', '5'),
    ('❻', '6'),
    ('❼', '7'),
    ('❽', '8'),
    ('❾', '9'),
    ('０', '0'),
    ('１', '1'),
    ('２', '2'),
    ('３', '3'),
    ('４', '4'),
    ('５', '5'),
    ('６', '6'),
    ('７', '7'),
    ('８', '8'),
    ('９', '9'),
    ('\u{1F100}', '0'),
    ('\u{1F101}', '1'),
    ('\u{1F102}', '2'),
    ('\u{1F103}', '3'),
    ('\u{1F104}', '4'),
    ('\u{1F105}', '5'),
    ('\u{1F106}', '6'),
    ('\u{1F107}', '7'),
    ('\u{1F108}', '8'),
    ('\u{1F109}', '9'),
];

/// rank_llm's `_clean_response`: the 1-based numbers a response names, as
/// text separated by spaces. Only what follows the last `</think>` counts.
/// Alpha: every letter becomes its `ord - 64` (so `C` → 3; adjacent letters
/// run together, `AB` → `12`, as in rank_llm), everything else a space.
/// Numeric: ASCII digits are kept, everything else becomes a space (Python
/// would also keep other scripts' decimal digits).
fn clean_response(response: &str, style: IdentifierStyle) -> String {
    let response = match response.rfind("</think>") {
        Some(pos) => response[pos + "</think>".len()..].trim(),
        None => response,
    };
    let mut out = String::with_capacity(response.len() * 2);
    for c in response.chars() {
        let c = FAKE_DIGITS
            .iter()
            .find(|(f, _)| *f == c)
            .map_or(c, |&(_, d)| d);
        match style {
            IdentifierStyle::Alpha if c.is_alphabetic() => {
                out.push_str(&(c as u32 as i64 - 64).to_string())
            }
            IdentifierStyle::Numeric if c.is_ascii_digit() => out.push(c),
            _ => out.push(' '),
        }
    }
    out
}

/// Parses a generated ranking (`[C] > [A] > [B]`, or `[3] > [1] > [2]`) of a
/// window of `n` passages into a permutation of `0..n`, best first, with
/// rank_llm's repair (`receive_permutation`): identifiers outside the window
/// and repeats are dropped, passages never named follow in window order.
pub fn parse_permutation(response: &str, n: usize, style: IdentifierStyle) -> Vec<usize> {
    let cleaned = clean_response(response, style);
    let mut seen = vec![false; n];
    let mut order = Vec::with_capacity(n);
    for token in cleaned.split_whitespace() {
        // Numbers too large for u64 are outside any window anyway.
        let Ok(value) = token.parse::<u64>() else {
            continue;
        };
        let Some(index) = value.checked_sub(1) else {
            continue;
        };
        if index < n as u64 && !seen[index as usize] {
            seen[index as usize] = true;
            order.push(index as usize);
        }
    }
    order.extend((0..n).filter(|&i| !seen[i]));
    order
}
