//! A model-free lexical scorer: how many of the query's words each document
//! contains. It is a test and benchmarking tool (it measures the server, not
//! a model), used by the server tests and `firstrank serve --diagnostic-scorer
//! lexical`; it is not a reranker worth deploying.

use std::collections::HashSet;
use std::time::Duration;

use firstrank_core::chunk::{PassageBudget, WordTokens};
use firstrank_core::prompt::TokenCounter;
use firstrank_core::window::WindowScorer;
use firstrank_core::{Candidate, Query};

/// Scores a document by the sum over distinct query words of ln(1 + count of
/// the word in the document); words are lowercased alphanumeric runs.
#[derive(Debug, Clone, Default)]
pub struct LexicalScorer {
    /// Sleep this long per window (simulates a model's cost in load tests).
    pub delay_per_window: Duration,
    /// Read only a document's first this many words, as a model reads only
    /// its passage budget (then long documents can be cut into chunks of
    /// this many words); `None` reads documents whole and cannot chunk.
    pub passage_words: Option<usize>,
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// The lexical score of `doc` for `query`.
pub fn lexical_score(query: &str, doc: &str) -> f32 {
    let terms: HashSet<String> = words(query).collect();
    let mut counts = std::collections::HashMap::<String, u32>::new();
    for w in words(doc) {
        if terms.contains(&w) {
            *counts.entry(w).or_default() += 1;
        }
    }
    counts
        .values()
        .fold(0.0, |acc, &c| acc + (1.0 + c as f32).ln())
}

impl WindowScorer for LexicalScorer {
    fn score_window(&mut self, query: &Query, window: &[Candidate]) -> anyhow::Result<Vec<f32>> {
        if !self.delay_per_window.is_zero() {
            std::thread::sleep(self.delay_per_window);
        }
        Ok(window
            .iter()
            .map(|c| {
                let title = c.title.as_deref().unwrap_or("");
                let text = match self.passage_words {
                    Some(n) => WordTokens
                        .truncate_to_tokens(&c.text, n)
                        .unwrap_or_else(|_| c.text.clone()),
                    None => c.text.clone(),
                };
                lexical_score(&query.text, title) + lexical_score(&query.text, &text)
            })
            .collect())
    }

    fn passage_budget(&self) -> Option<(&dyn TokenCounter, PassageBudget)> {
        let tokens = self.passage_words?;
        Some((
            &WordTokens,
            PassageBudget {
                tokens,
                shared_with_query: false,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_query_words_score_higher() {
        let q = "capital of France";
        assert!(
            lexical_score(q, "Paris is the capital of France")
                > lexical_score(q, "Berlin is a capital")
        );
        assert_eq!(lexical_score(q, "nothing shared here"), 0.0);
        // Case and punctuation do not matter.
        assert_eq!(lexical_score(q, "FRANCE!"), lexical_score(q, "france"));
    }
}
