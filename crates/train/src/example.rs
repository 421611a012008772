//! Training lists as token sequences: one example is the chat-formatted
//! prompt exactly as reranking builds it, then the target permutation and the
//! end-of-turn token, with the positions the losses read (the ranking loss
//! at the position after the assistant's `[`, where FIRST scores at
//! inference; the generation loss over the target; the optional per-passage
//! loss at the newline that ends each passage).

use anyhow::{ensure, Result};
use firstrank_core::prompt::PromptTemplate;
use firstrank_core::training::TrainingList;
use firstrank_models::chat::ChatMessage;
use firstrank_models::reranker::LlmReranker;

/// A training list as token ids, with the positions the losses read.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedExample {
    pub id: String,
    /// Prompt, `[`, target permutation, end-of-turn token.
    pub tokens: Vec<u32>,
    /// The position whose next-token logits score the identifiers.
    pub rank_position: usize,
    /// Target order of the window's passages (0-based, best first).
    pub order: Vec<usize>,
    /// The last prompt position: positions `lm_start..` predict the target.
    pub lm_start: usize,
    /// For each passage (window order), the position of the newline that
    /// ends it, where the per-passage loss reads a relevance score; empty
    /// when the template's layout does not let them be found.
    pub passage_ends: Vec<usize>,
}

/// Tokenizes a list with the reranker's chat template and tokenizer and
/// checks that it lines up with what FIRST scores at inference.
pub fn prepare_example(list: &TrainingList, reranker: &LlmReranker) -> Result<PreparedExample> {
    let template = &reranker.config().template;
    let order = list
        .target_order(template.identifiers)
        .map_err(|e| anyhow::anyhow!("list {}: {e}", list.id))?;
    let n = order.len();
    ensure!(
        n >= 2 && n <= reranker.identifier_ids().len(),
        "list {}: {n} passages; the model's identifiers cover 2..={}",
        list.id,
        reranker.identifier_ids().len()
    );
    let chat = reranker.chat();
    let tok = reranker.tokenizer();
    let prompt = chat.chat_prompt(list.system.as_deref(), &list.user)?;
    let mut messages = Vec::with_capacity(3);
    if let Some(s) = &list.system {
        messages.push(ChatMessage::system(s));
    }
    messages.push(ChatMessage::user(&list.user));
    messages.push(ChatMessage::assistant(&list.target));
    let rendered = chat.render(&messages, false)?;
    let full_text = match rendered.strip_prefix(&prompt) {
        Some(rest) if rest.starts_with(&list.target) => rendered.clone(),
        _ => {
            // Templates whose full rendering is not the prompt plus the
            // answer: append the answer and an end token ourselves.
            let eos = tok.eos.as_ref().map(|(t, _)| t.as_str()).unwrap_or("");
            format!("{prompt}{}{eos}", list.target)
        }
    };
    let prompt_ids = tok.encode_raw(&prompt)?;
    let with_prefix = tok.encode_raw(&format!("{prompt}{}", template.assistant_prefix))?;
    let (mut tokens, offsets) = tok.encode_with_offsets(&full_text)?;
    ensure!(
        tokens.starts_with(&with_prefix) && with_prefix.starts_with(&prompt_ids),
        "list {}: the prompt does not tokenize as a prefix of prompt + answer (target `{}` must start with `{}`)",
        list.id,
        list.target,
        template.assistant_prefix
    );
    let rank_position = with_prefix.len() - 1;
    let first_identifier = reranker.identifier_ids()[order[0]];
    ensure!(
        tokens.get(rank_position + 1) == Some(&first_identifier),
        "list {}: after `{}` the answer's first token is not the identifier token of passage {}",
        list.id,
        template.assistant_prefix,
        order[0] + 1
    );
    // The answer ends at its first end-of-turn token.
    if let Some(end) = tokens[prompt_ids.len()..]
        .iter()
        .position(|t| reranker.stop_ids().contains(t))
    {
        tokens.truncate(prompt_ids.len() + end + 1);
    }
    let passage_ends = passage_end_positions(&prompt, &offsets, template, n)?
        .filter(|ends| ends.iter().all(|&p| p < rank_position))
        .unwrap_or_default();
    Ok(PreparedExample {
        id: list.id.clone(),
        tokens,
        rank_position,
        order,
        lm_start: prompt_ids.len() - 1,
        passage_ends,
    })
}

/// The token positions of the newlines that end the `n` passages of
/// `prompt` (a window rendered with `template`: each passage starts with its
/// marker, `[A] ` for the alphabetical template, on a new line; the last
/// one ends where the suffix starts), from the tokens' byte `offsets`. None
/// when a marker or the suffix cannot be found in order.
fn passage_end_positions(
    prompt: &str,
    offsets: &[(usize, usize)],
    template: &PromptTemplate,
    n: usize,
) -> Result<Option<Vec<usize>>> {
    let Some(marker_at) = template.passage.find("{passage}") else {
        return Ok(None);
    };
    let marker = &template.passage[..marker_at];
    let ids = template.identifiers.identifiers(n)?;
    // Byte offsets where passages 0..n start, then where the suffix starts.
    let mut starts = Vec::with_capacity(n + 1);
    let mut from = 0;
    for id in &ids {
        let m = format!("\n{}", marker.replace("{id}", id));
        let Some(at) = prompt[from..].find(&m) else {
            return Ok(None);
        };
        starts.push(from + at + 1);
        from += at + m.len();
    }
    let suffix_head: String = template.suffix.chars().take_while(|&c| c != '{').collect();
    if suffix_head.is_empty() {
        return Ok(None);
    }
    let Some(at) = prompt[from..].find(&format!("\n{suffix_head}")) else {
        return Ok(None);
    };
    starts.push(from + at + 1);
    // The newline before each next start ends a passage: the token over it.
    let mut ends = Vec::with_capacity(n);
    for next in &starts[1..] {
        let newline = next - 1;
        match offsets
            .iter()
            .position(|&(a, b)| a <= newline && newline < b)
        {
            Some(k) => ends.push(k),
            None => return Ok(None),
        }
    }
    Ok(Some(ends))
}
