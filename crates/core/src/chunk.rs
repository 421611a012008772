//! Long documents as chunks (Cohere's `max_chunks_per_doc`): a passage longer
//! than what the model reads of one is cut into overlapping chunks on token
//! boundaries, and the document is represented by its best chunk.
//!
//! This module only cuts: [`split_passage`] slices the original text at the
//! byte offsets the model's tokenizer reports ([`TokenCounter::token_spans`]),
//! so a chunk is verbatim text, never a decode. Choosing the best chunk is a
//! step of the window schedule ([`crate::window::QueryRerank::with_chunks`]):
//! each long document's chunks are scored as one window by the same scorer
//! before the ordinary windows run, and the winner stands for the document
//! from then on (its score, for a pointwise scorer, is the maximum over the
//! chunks).

use crate::prompt::TokenCounter;
pub use crate::window::{PassageBudget, MIN_CHUNK_TOKENS};
use crate::window::{QueryRerank, WindowScorer, WindowStrategy};
use crate::{Error, Request, Result};

/// Tokens two neighbouring chunks share: an eighth of the chunk, so a
/// sentence cut at one chunk's end is whole at the next one's start.
pub fn overlap_tokens(chunk_tokens: usize) -> usize {
    chunk_tokens / 8
}

/// Cuts `text`, whose tokens lie at the byte ranges `spans` (in order), into
/// at most `max_chunks` chunks of at most `chunk_tokens` tokens, neighbours
/// sharing `overlap` tokens. A text that fits is one chunk, itself; text past
/// the last chunk is dropped (Cohere's semantics).
pub fn split_on_spans(
    text: &str,
    spans: &[(usize, usize)],
    chunk_tokens: usize,
    overlap: usize,
    max_chunks: usize,
) -> Vec<String> {
    let chunk_tokens = chunk_tokens.max(1);
    if spans.len() <= chunk_tokens || max_chunks <= 1 {
        return vec![text.to_string()];
    }
    let step = chunk_tokens - overlap.min(chunk_tokens - 1);
    let mut chunks = Vec::new();
    let mut first = 0;
    while first < spans.len() && chunks.len() < max_chunks {
        let last = (first + chunk_tokens).min(spans.len()) - 1;
        let start = floor_char_boundary(text, spans[first].0);
        let end = ceil_char_boundary(text, spans[last].1);
        chunks.push(text[start..end].trim().to_string());
        if last + 1 == spans.len() {
            break;
        }
        first += step;
    }
    chunks
}

/// [`split_on_spans`] with the spans from `counter`.
pub fn split_passage(
    counter: &dyn TokenCounter,
    text: &str,
    chunk_tokens: usize,
    max_chunks: usize,
) -> anyhow::Result<Vec<String>> {
    if max_chunks <= 1 {
        return Ok(vec![text.to_string()]);
    }
    let spans = counter.token_spans(text)?;
    Ok(split_on_spans(
        text,
        &spans,
        chunk_tokens,
        overlap_tokens(chunk_tokens),
        max_chunks,
    ))
}

/// The chunks of every candidate of `request` (one entry per candidate; a
/// candidate that fits has one chunk), for [`crate::window::QueryRerank::with_chunks`].
pub fn chunk_request(
    counter: &dyn TokenCounter,
    budget: PassageBudget,
    request: &Request,
    max_chunks: usize,
) -> anyhow::Result<Vec<Vec<String>>> {
    let query_tokens = if budget.shared_with_query {
        counter.count_tokens(&request.query.text)?
    } else {
        0
    };
    let chunk_tokens = budget.chunk_tokens(query_tokens);
    request
        .candidates
        .iter()
        .map(|c| split_passage(counter, &c.text, chunk_tokens, max_chunks))
        .collect()
}

/// Starts `requests` on `strategy` (validated here) with their long
/// documents cut into at most `max_chunks` chunks by `scorer`'s tokenizer and
/// passage budget; `max_chunks` 1 is the plain schedule. Fails, before any
/// scoring, when the scorer cannot chunk. The caller checks `max_chunks`
/// against the largest window its scorer takes ([`validate_max_chunks`]).
pub fn start_chunked<S: WindowScorer + ?Sized>(
    scorer: &S,
    strategy: &WindowStrategy,
    requests: Vec<Request>,
    max_chunks: usize,
) -> anyhow::Result<Vec<QueryRerank>> {
    strategy.validate()?;
    if max_chunks <= 1 {
        return Ok(requests
            .into_iter()
            .map(|r| QueryRerank::new(r, strategy))
            .collect());
    }
    let Some((counter, budget)) = scorer.passage_budget() else {
        anyhow::bail!(
            "this model cannot cut documents into chunks (it reports no tokenizer and passage budget); \
             leave max_chunks_per_doc at 1"
        );
    };
    requests
        .into_iter()
        .map(|r| {
            let chunks = chunk_request(counter, budget, &r, max_chunks)?;
            Ok(QueryRerank::new(r, strategy).with_chunks(chunks)?)
        })
        .collect()
}

/// Rejects a chunk count that cannot be scored as one window.
pub fn validate_max_chunks(max_chunks: usize, window: usize) -> Result<()> {
    if max_chunks == 0 {
        return Err(Error::Invalid(
            "max_chunks_per_doc must be at least 1".into(),
        ));
    }
    if max_chunks > window {
        return Err(Error::Invalid(format!(
            "max_chunks_per_doc {max_chunks} is more than the window of {window}: a document's chunks are \
             compared in one window, so at most {window} of them"
        )));
    }
    Ok(())
}

/// Whitespace-separated words as tokens: a tokenizer-free [`TokenCounter`]
/// for scorers without one (and for tests).
pub struct WordTokens;

impl TokenCounter for WordTokens {
    fn count_tokens(&self, text: &str) -> anyhow::Result<usize> {
        Ok(text.split_whitespace().count())
    }

    fn truncate_to_tokens(&self, text: &str, max_tokens: usize) -> anyhow::Result<String> {
        let spans = self.token_spans(text)?;
        Ok(match max_tokens {
            0 => String::new(),
            n if n >= spans.len() => text.to_string(),
            n => text[..spans[n - 1].1].to_string(),
        })
    }

    fn token_spans(&self, text: &str) -> anyhow::Result<Vec<(usize, usize)>> {
        let mut spans = Vec::new();
        let mut start = None;
        for (i, ch) in text.char_indices() {
            match (ch.is_whitespace(), start) {
                (true, Some(s)) => {
                    spans.push((s, i));
                    start = None;
                }
                (false, None) => start = Some(i),
                _ => {}
            }
        }
        if let Some(s) = start {
            spans.push((s, text.len()));
        }
        Ok(spans)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::window::tests::request;
    use crate::window::{rerank, rerank_lockstep};
    use crate::{Candidate, Query};

    /// Scores a passage by how often its first 10 words say "flea": a
    /// deterministic pointwise scorer that, like a model, reads a passage
    /// only up to its budget.
    struct Fleas;
    impl WindowScorer for Fleas {
        fn score_window(&mut self, _q: &Query, w: &[Candidate]) -> anyhow::Result<Vec<f32>> {
            Ok(w.iter()
                .map(|c| {
                    let read: Vec<&str> = c.text.split_whitespace().take(10).collect();
                    read.join(" ").matches("flea").count() as f32
                })
                .collect())
        }
    }

    #[test]
    fn a_long_document_is_scored_by_its_best_chunk() {
        let filler = |n: usize| vec!["paris"; n].join(" ");
        let mut req = request(3);
        // Three chunks of 10 words; the middle one is the relevant one.
        req.candidates[2].text = format!(
            "{} {} {}",
            filler(10),
            "flea flea flea fleas live weeks on a host",
            filler(11)
        );
        req.candidates[0].text = "one flea".into();
        let whole = req.candidates[2].text.clone();
        let budget = PassageBudget {
            tokens: 10,
            shared_with_query: false,
        };
        let chunks = chunk_request(&WordTokens, budget, &req, 3).unwrap();
        assert_eq!(chunks[2].len(), 3);
        assert!(chunks[2][1].contains("fleas live"));
        let strategy = WindowStrategy::single(3);
        let state = QueryRerank::new(req.clone(), &strategy)
            .with_chunks(chunks)
            .unwrap();
        assert_eq!(state.windows_left(), 2);
        let out = rerank_lockstep(&mut Fleas, vec![state]).unwrap().remove(0);
        assert_eq!(out.ranked[0].original_rank, 2);
        assert_eq!(out.ranked[0].chunk, Some(1));
        assert_eq!(out.ranked[0].model_score, Some(4.0));
        // The output carries the whole document, not the chunk.
        assert_eq!(out.ranked[0].candidate.text, whole);
        assert_eq!(out.ranked[1].original_rank, 0);
        assert_eq!(out.ranked[1].chunk, None);
        // Without chunks the document is read from its start and loses.
        let plain = rerank(&mut Fleas, &strategy, req).unwrap();
        assert_eq!(plain.ranked[0].original_rank, 0);
        assert_eq!(plain.ranked[2].model_score, Some(0.0));
    }

    fn words(n: usize) -> String {
        (0..n)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn a_text_that_fits_is_one_chunk_itself() {
        let text = words(10);
        let chunks = split_passage(&WordTokens, &text, 10, 5).unwrap();
        assert_eq!(chunks, vec![text.clone()]);
        // max_chunks 1 never cuts: today's behaviour (the model truncates).
        let long = words(100);
        assert_eq!(
            split_passage(&WordTokens, &long, 10, 1).unwrap(),
            vec![long]
        );
    }

    #[test]
    fn chunks_overlap_on_token_boundaries_and_stop_at_max_chunks() {
        let text = words(30);
        let spans = WordTokens.token_spans(&text).unwrap();
        let chunks = split_on_spans(&text, &spans, 10, 2, 10);
        assert_eq!(chunks[0], "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9");
        assert_eq!(chunks[1], "w8 w9 w10 w11 w12 w13 w14 w15 w16 w17");
        assert_eq!(chunks.last().unwrap(), "w24 w25 w26 w27 w28 w29");
        assert_eq!(chunks.len(), 4);
        // Text past the last allowed chunk is dropped.
        assert_eq!(split_on_spans(&text, &spans, 10, 2, 2).len(), 2);
    }

    #[test]
    fn spans_inside_a_multibyte_character_are_widened_to_it() {
        let text = "héllo wörld ünd mehr";
        // Byte-level spans that cut characters in half.
        let spans = vec![(0, 2), (2, 6), (7, 9), (9, 12), (13, 21), (22, text.len())];
        let chunks = split_on_spans(text, &spans, 2, 0, 5);
        assert_eq!(chunks[0], "héllo");
        assert!(chunks.iter().all(|c| !c.is_empty()));
    }

    #[test]
    fn a_shared_budget_leaves_room_for_the_query() {
        let budget = PassageBudget {
            tokens: 100,
            shared_with_query: true,
        };
        assert_eq!(budget.chunk_tokens(30), 70);
        assert_eq!(budget.chunk_tokens(500), MIN_CHUNK_TOKENS);
        let own = PassageBudget {
            tokens: 100,
            shared_with_query: false,
        };
        assert_eq!(own.chunk_tokens(30), 100);
    }

    #[test]
    fn max_chunks_must_fit_one_window() {
        assert!(validate_max_chunks(0, 20).is_err());
        assert!(validate_max_chunks(21, 20).is_err());
        assert!(validate_max_chunks(20, 20).is_ok());
    }
}
