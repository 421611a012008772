//! The English analyzer of Anserini's MS MARCO BM25 runs, rebuilt: Lucene's
//! `StandardTokenizer` → `EnglishPossessiveFilter` → `LowerCaseFilter` →
//! `StopFilter` (Lucene's 33-word English stopword set) → `PorterStemFilter`.
//!
//! Hand-written because tantivy's own pipeline differs in every step that
//! matters here: its `SimpleTokenizer` splits at every non-alphanumeric
//! character (`don't` → `don`, `t`), and its stemmer is Snowball "english"
//! (Porter2), not the original Porter algorithm. Here:
//! - tokens are UAX #29 words (`unicode-segmentation`), the rules Lucene's
//!   StandardTokenizer implements; words with no letter or digit are dropped.
//!   Not reproduced: Lucene's 255-character token split;
//! - a trailing `'s` / `’s` / `＇s` is removed (before lowercasing, any case);
//! - lowercasing is Rust's full Unicode `to_lowercase` (Lucene lowercases per
//!   code point; they differ only for a few characters such as `İ`);
//! - stemming is Snowball's `porter` (frostem), the original Porter (1980)
//!   algorithm that Lucene's PorterStemmer also implements.
//!
//! The same [`analyze`] runs at indexing time (through [`EnglishTokenizer`],
//! registered in tantivy as [`TOKENIZER_NAME`]) and at query time.

use frostem::{Algorithm, Stemmer};
use tantivy::tokenizer::{Token, TokenStream, Tokenizer};
use unicode_segmentation::UnicodeSegmentation;

/// Lucene's `EnglishAnalyzer.ENGLISH_STOP_WORDS_SET` (used by Anserini's
/// default English analyzer).
pub const ENGLISH_STOPWORDS: [&str; 33] = [
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these",
    "they", "this", "to", "was", "will", "with",
];

/// The name the tokenizer is registered under in the tantivy index.
pub const TOKENIZER_NAME: &str = "firstrank_en_porter";

/// A short description stored in the index manifest.
pub const ANALYZER_DESCRIPTION: &str =
    "uax29 words, english possessive, lowercase, lucene english stopwords (33), porter";

fn is_stopword(t: &str) -> bool {
    ENGLISH_STOPWORDS.binary_search(&t).is_ok()
}

fn strip_possessive(word: &str) -> &str {
    for suffix in [
        "'s",
        "'S",
        "\u{2019}s",
        "\u{2019}S",
        "\u{FF07}s",
        "\u{FF07}S",
    ] {
        if let Some(stem) = word.strip_suffix(suffix) {
            return stem;
        }
    }
    word
}

/// One analysed token: its text and its byte range in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub text: String,
    pub start: usize,
    pub end: usize,
}

/// Analyses `text` into index terms (see the module comment).
pub fn analyze_with_offsets(text: &str) -> Vec<Term> {
    let stemmer = Stemmer::new(Algorithm::Porter);
    let mut out = Vec::new();
    for (start, word) in text.unicode_word_indices() {
        let word = strip_possessive(word);
        if word.is_empty() {
            continue;
        }
        let lower = word.to_lowercase();
        if is_stopword(&lower) {
            continue;
        }
        let stemmed = stemmer.stem(&lower).into_owned();
        out.push(Term {
            text: stemmed,
            start,
            end: start + word.len(),
        });
    }
    out
}

/// Analyses `text` into index terms, in order, repeats kept.
pub fn analyze(text: &str) -> Vec<String> {
    analyze_with_offsets(text)
        .into_iter()
        .map(|t| t.text)
        .collect()
}

/// [`analyze`] as a tantivy tokenizer.
#[derive(Clone, Default)]
pub struct EnglishTokenizer;

/// The tokens of one text, produced up front.
pub struct TermStream {
    tokens: Vec<Token>,
    /// Index of the current token + 1 (0 before the first `advance`).
    next: usize,
}

impl Tokenizer for EnglishTokenizer {
    type TokenStream<'a> = TermStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> TermStream {
        let tokens = analyze_with_offsets(text)
            .into_iter()
            .enumerate()
            .map(|(position, t)| Token {
                offset_from: t.start,
                offset_to: t.end,
                position,
                text: t.text,
                position_length: 1,
            })
            .collect();
        TermStream { tokens, next: 0 }
    }
}

impl TokenStream for TermStream {
    fn advance(&mut self) -> bool {
        if self.next < self.tokens.len() {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn token(&self) -> &Token {
        &self.tokens[self.next - 1]
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.next - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopword_list_is_sorted_and_lucenes() {
        let mut sorted = ENGLISH_STOPWORDS;
        sorted.sort_unstable();
        assert_eq!(
            sorted, ENGLISH_STOPWORDS,
            "binary_search needs a sorted list"
        );
        assert!(is_stopword("the") && is_stopword("with") && !is_stopword("what"));
    }

    #[test]
    fn anserini_style_terms() {
        // Possessive removed, apostrophe words kept whole, stopwords dropped,
        // original Porter stems. Expected stems checked with the Python
        // snowballstemmer package's `porter` ("generalizations" → "gener";
        // its `english`/Porter2 gives "general"; "u.s" → "u.").
        assert_eq!(
            analyze("The Dog's generalizations aren't running in the U.S."),
            vec!["dog", "gener", "aren't", "run", "u."]
        );
        assert_eq!(
            analyze("what is physical description of spruce"),
            vec!["what", "physic", "descript", "spruce"]
        );
        // Numbers with separators stay one token (UAX #29), punctuation-only words vanish.
        assert_eq!(analyze("3.14 -- $100,000 !!"), vec!["3.14", "100,000"]);
        assert!(analyze("").is_empty());
    }

    #[test]
    fn tokenizer_matches_analyze() {
        let text = "Fleas' life cycles: eggs, larvae and pupae";
        let mut tok = EnglishTokenizer;
        let mut stream = tok.token_stream(text);
        let mut got = Vec::new();
        while stream.advance() {
            let t = stream.token();
            assert!(text[t.offset_from..t.offset_to]
                .to_lowercase()
                .starts_with(&t.text[..1]));
            got.push(t.text.clone());
        }
        assert_eq!(got, analyze(text));
    }
}
