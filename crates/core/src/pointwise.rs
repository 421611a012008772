//! Pointwise LLM prompts (`--mode pointwise`): one (query, document) per
//! prompt, answered "yes" or "no"; the model crate reads the logits of the
//! two answer tokens at the last position and scores p(yes). Templates are
//! data (TOML, like the listwise ones): Qwen3-Reranker's, which carries its
//! own chat markup, and a generic one the model's chat template renders.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::prompt::{fill, placeholders};
use crate::{Error, Result};

/// Qwen3-Reranker's template.
pub const QWEN3_RERANKER_TOML: &str = include_str!("../templates/qwen3_reranker.toml");
/// The generic yes/no template for any chat model.
pub const YES_NO_TOML: &str = include_str!("../templates/yes_no.toml");

const BUILTIN: &[(&str, &str)] = &[
    ("qwen3_reranker", QWEN3_RERANKER_TOML),
    ("yes_no", YES_NO_TOML),
];

/// A pointwise prompt template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointwiseTemplate {
    #[serde(default)]
    pub name: String,
    /// `prefix + input + suffix` is the whole prompt (the template carries
    /// the chat markup); otherwise the model's chat template renders
    /// `system` and `input` as messages, with its generation prompt.
    #[serde(default)]
    pub raw: bool,
    #[serde(default)]
    pub system: String,
    #[serde(default)]
    pub prefix: String,
    /// Placeholders `{instruction}`, `{query}`, `{document}`.
    pub input: String,
    #[serde(default)]
    pub suffix: String,
    /// The answer tokens whose logits are compared.
    pub yes: String,
    pub no: String,
    /// The instruction used when none is given.
    #[serde(default)]
    pub instruction: String,
}

/// One (query, document) prompt before chat formatting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointwisePrompt {
    /// The system message (chat templates only).
    pub system: String,
    /// The user message, or for a raw template the whole prompt.
    pub text: String,
}

impl PointwiseTemplate {
    /// The names of the built-in templates.
    pub fn builtin_names() -> Vec<&'static str> {
        BUILTIN.iter().map(|(n, _)| *n).collect()
    }

    /// A built-in name, or a path to a TOML template file.
    pub fn resolve(name_or_path: &str) -> Result<Self> {
        if let Some((n, text)) = BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            return Self::from_toml_str(text, format!("<built-in {n}>"));
        }
        let path = Path::new(name_or_path);
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text, path)
    }

    /// Parses and validates a template; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: impl AsRef<Path>) -> Result<Self> {
        let origin = origin.as_ref();
        let t: PointwiseTemplate = toml::from_str(text)
            .map_err(|e| Error::input(origin, "template", e.message().trim().to_string()))?;
        let used = placeholders(&t.input).map_err(|m| Error::input(origin, "field `input`", m))?;
        for name in &used {
            if !["instruction", "query", "document"].contains(&name.as_str()) {
                return Err(Error::input(
                    origin,
                    "field `input`",
                    format!("unknown placeholder {{{name}}}; expected {{instruction}}, {{query}}, {{document}}"),
                ));
            }
        }
        for required in ["query", "document"] {
            if !used.iter().any(|u| u == required) {
                return Err(Error::input(
                    origin,
                    "field `input`",
                    format!("missing the placeholder {{{required}}}"),
                ));
            }
        }
        for (field, value) in [("yes", &t.yes), ("no", &t.no)] {
            if value.is_empty() {
                return Err(Error::input(
                    origin,
                    format!("field `{field}`"),
                    "the answer token must not be empty",
                ));
            }
        }
        if t.yes == t.no {
            return Err(Error::input(
                origin,
                "fields `yes` and `no`",
                "the two answer tokens must differ",
            ));
        }
        Ok(t)
    }

    /// The prompt of one document; `instruction` overrides the template's.
    pub fn prompt(
        &self,
        instruction: Option<&str>,
        query: &str,
        document: &str,
    ) -> PointwisePrompt {
        let instruction = instruction.unwrap_or(&self.instruction);
        let input = fill(
            &self.input,
            &[
                ("instruction", instruction),
                ("query", query),
                ("document", document),
            ],
        );
        PointwisePrompt {
            system: self.system.clone(),
            text: if self.raw {
                format!("{}{input}{}", self.prefix, self.suffix)
            } else {
                input
            },
        }
    }
}

/// p(yes) from the two answer logits: the softmax over (yes, no).
pub fn yes_probability(yes: f32, no: f32) -> f32 {
    1.0 / (1.0 + (no - yes).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen3_reranker_prompt_is_the_model_cards() {
        let t = PointwiseTemplate::resolve("qwen3_reranker").unwrap();
        let p = t.prompt(None, "what is a flea", "A flea is an insect.");
        assert!(p
            .text
            .starts_with("<|im_start|>system\nJudge whether the Document"));
        assert!(p.text.contains(
            "<|im_start|>user\n<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n<Query>: what is a flea\n<Document>: A flea is an insect.<|im_end|>"
        ));
        assert!(p
            .text
            .ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
        let custom = t.prompt(Some("Find recipes"), "q", "d");
        assert!(custom.text.contains("<Instruct>: Find recipes\n"));
        // The query never re-expands placeholders.
        let q = t.prompt(None, "{document}", "d");
        assert!(q.text.contains("<Query>: {document}\n"));
    }

    #[test]
    fn templates_missing_their_parts_are_refused_by_field() {
        let base = "input = \"{query} {document}\"\nyes = \"yes\"\nno = \"no\"\n";
        assert!(PointwiseTemplate::from_toml_str(base, "t.toml").is_ok());
        for (text, needle) in [
            (
                "input = \"{query}\"\nyes = \"yes\"\nno = \"no\"\n",
                "{document}",
            ),
            ("input = \"{query} {document}\"\nno = \"no\"\n", "yes"),
            (
                "input = \"{query} {document}\"\nyes = \"\"\nno = \"no\"\n",
                "`yes`",
            ),
            (
                "input = \"{query} {document} {x}\"\nyes = \"y\"\nno = \"n\"\n",
                "{x}",
            ),
            (
                "input = \"{query} {document}\"\nyes = \"a\"\nno = \"a\"\n",
                "differ",
            ),
        ] {
            let err = PointwiseTemplate::from_toml_str(text, "t.toml")
                .unwrap_err()
                .to_string();
            assert!(err.contains("t.toml") && err.contains(needle), "{err}");
        }
    }

    #[test]
    fn yes_probability_is_the_two_way_softmax() {
        assert!((yes_probability(0.0, 0.0) - 0.5).abs() < 1e-7);
        let (y, n) = (2.0f32, -1.0f32);
        let want = y.exp() / (y.exp() + n.exp());
        assert!((yes_probability(y, n) - want).abs() < 1e-6);
    }
}
