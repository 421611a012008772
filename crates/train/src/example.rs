//! Training lists as token sequences: one example is the chat-formatted
//! prompt exactly as reranking builds it, then the target permutation and the
//! end-of-turn token, with the positions the losses read (the ranking loss
//! at the position after the assistant's `[`, where FIRST scores at
//! inference; the generation loss over the target).

use anyhow::{ensure, Result};
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
    let mut tokens = tok.encode_raw(&full_text)?;
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
    Ok(PreparedExample {
        id: list.id.clone(),
        tokens,
        rank_position,
        order,
        lm_start: prompt_ids.len() - 1,
    })
}
