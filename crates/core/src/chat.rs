//! Chat templates: renders a model's Jinja chat template the way transformers'
//! `apply_chat_template` does, with `minijinja`. The model crate finds a local model's template
//! (its GGUF `tokenizer.chat_template`, its tokenizer_config.json, or its family's standard one);
//! [`ChatTemplate::load`] reads one named on the command line (`chatml`, a model directory, a
//! tokenizer_config.json or a Jinja file), for models served elsewhere.
//!
//! Compatibility with transformers' Jinja environment: `trim_blocks` and `lstrip_blocks` are on,
//! loop controls (`break`/`continue`) are available, the variables are `messages` (list of
//! `{role, content}`), `add_generation_prompt`, `bos_token` and `eos_token`, the function
//! `raise_exception(msg)` fails the render with `msg`, and Python string/dict methods
//! (`.strip()`, `.startswith()`, `.items()`, ...) work through minijinja-contrib's pycompat.
//!
//! A model without a template gets the documented fallback ([`ChatTemplate::fallback`]): the
//! message contents joined by a blank line (`system + "\n\n" + user`), with no role markup and
//! nothing added for the generation prompt.

use anyhow::{anyhow, Result};
use minijinja::{context, Environment, Error as JinjaError, ErrorKind};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template (or the no-template fallback).
pub struct ChatTemplate {
    /// None: the fallback (no template).
    env: Option<Environment<'static>>,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("is_fallback", &self.env.is_none())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

fn raise_exception(msg: String) -> Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
}

fn jinja_err(e: JinjaError) -> anyhow::Error {
    // minijinja's alternate format includes the template line and a source excerpt.
    anyhow!("{e:#}")
}

impl ChatTemplate {
    /// Compile `source` (Jinja). `bos` and `eos` are the texts of the model's BOS/EOS tokens,
    /// exposed to the template as `bos_token` and `eos_token`. A syntax error is reported with
    /// its line.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(jinja_err)?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| anyhow!("chat template does not compile: {e:#}"))?;
        Ok(Self {
            env: Some(env),
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// The template for a model that has none: contents joined by "\n\n", no role markup, and
    /// nothing for the generation prompt. So `[system, user]` renders as
    /// `system + "\n\n" + user`, and `[user]` as `user`.
    pub fn fallback() -> Self {
        Self {
            env: None,
            bos: String::new(),
            eos: String::new(),
        }
    }

    /// `source` if given, else the fallback.
    pub fn from_optional(source: Option<&str>, bos: &str, eos: &str) -> Result<Self> {
        match source {
            Some(s) => Self::new(s, bos, eos),
            None => Ok(Self::fallback()),
        }
    }

    /// Whether this is the no-template fallback.
    pub fn is_fallback(&self) -> bool {
        self.env.is_none()
    }

    /// Render `messages`; with `add_generation_prompt` the template's assistant-turn opener is
    /// appended (as transformers' `apply_chat_template(..., add_generation_prompt=True)`).
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let Some(env) = &self.env else {
            let parts: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
            return Ok(parts.join("\n\n"));
        };
        let tmpl = env.get_template(TEMPLATE_NAME).map_err(jinja_err)?;
        tmpl.render(context! {
            messages => messages
                .iter()
                .map(|m| context! { role => m.role.as_str(), content => m.content.as_str() })
                .collect::<Vec<_>>(),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        })
        .map_err(|e| anyhow!("rendering the chat template failed: {e:#}"))
    }

    /// The prompt up to the assistant's answer: `[system?, user]` rendered with the generation
    /// prompt.
    pub fn chat_prompt(&self, system: Option<&str>, user: &str) -> Result<String> {
        let mut messages = Vec::with_capacity(2);
        if let Some(s) = system {
            messages.push(ChatMessage::system(s));
        }
        messages.push(ChatMessage::user(user));
        self.render(&messages, true)
    }

    /// FIRST's prompt: [`chat_prompt`](Self::chat_prompt) followed by `[`, so that the next
    /// token is a passage identifier.
    pub fn first_prompt(&self, system: Option<&str>, user: &str) -> Result<String> {
        let mut p = self.chat_prompt(system, user)?;
        p.push('[');
        Ok(p)
    }
}

/// ChatML (`<|im_start|>role ... <|im_end|>`), the format of Qwen, SmolLM2
/// and many other instruct models: the built-in template named `chatml`.
pub const CHATML: &str = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// What a Hugging Face `tokenizer_config.json` says about chat formatting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigChat {
    /// `chat_template` (a list of named templates gives the one named `default`).
    pub template: Option<String>,
    /// The texts of `bos_token` and `eos_token` (strings or `{content}` objects).
    pub bos: Option<String>,
    pub eos: Option<String>,
}

impl ConfigChat {
    pub fn of(cfg: &serde_json::Value) -> Self {
        let special = |key: &str| -> Option<String> {
            let v = cfg.get(key)?;
            v.as_str()
                .or_else(|| v.get("content").and_then(serde_json::Value::as_str))
                .map(str::to_string)
        };
        let template = match cfg.get("chat_template") {
            Some(serde_json::Value::String(t)) => Some(t.clone()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(serde_json::Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(serde_json::Value::as_str)
                .map(str::to_string),
            _ => None,
        };
        Self {
            template,
            bos: special("bos_token"),
            eos: special("eos_token"),
        }
    }
}

impl ChatTemplate {
    /// A template named on the command line: `chatml`, a model directory
    /// (its `tokenizer_config.json`, else `chat_template.jinja`), a
    /// `tokenizer_config.json`, or a Jinja file.
    pub fn load(spec: &str) -> Result<Self> {
        if spec == "chatml" {
            return Self::new(CHATML, "", "");
        }
        let path = std::path::Path::new(spec);
        let config_file = if path.is_dir() {
            let cfg = path.join("tokenizer_config.json");
            if !cfg.is_file() {
                let jinja = path.join("chat_template.jinja");
                return Self::from_jinja_file(&jinja);
            }
            cfg
        } else if path.extension().is_some_and(|e| e == "json") {
            path.to_path_buf()
        } else {
            return Self::from_jinja_file(path);
        };
        let text = std::fs::read_to_string(&config_file).map_err(|e| {
            anyhow!(
                "{}: cannot read the chat template: {e}",
                config_file.display()
            )
        })?;
        let cfg: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow!("{}: not valid JSON: {e}", config_file.display()))?;
        let chat = ConfigChat::of(&cfg);
        let Some(template) = chat.template else {
            return Err(anyhow!(
                "{}: has no `chat_template`; give a Jinja file or `chatml`",
                config_file.display()
            ));
        };
        Self::new(
            &template,
            chat.bos.as_deref().unwrap_or(""),
            chat.eos.as_deref().unwrap_or(""),
        )
        .map_err(|e| anyhow!("{}: {e}", config_file.display()))
    }

    fn from_jinja_file(path: &std::path::Path) -> Result<Self> {
        let source = std::fs::read_to_string(path).map_err(|e| {
            anyhow!(
                "{}: cannot read the chat template (expected `chatml`, a model directory, a \
                 tokenizer_config.json or a Jinja file): {e}",
                path.display()
            )
        })?;
        Self::new(&source, "", "").map_err(|e| anyhow!("{}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_joins_with_blank_line() {
        let t = ChatTemplate::fallback();
        assert!(t.is_fallback());
        assert_eq!(t.first_prompt(Some("S"), "U").unwrap(), "S\n\nU[");
        assert_eq!(t.chat_prompt(None, "U").unwrap(), "U");
    }

    #[test]
    fn hf_whitespace_rules_and_raise_exception() {
        // trim_blocks removes the newline after a block tag, lstrip_blocks the indentation
        // before it (transformers enables both).
        let src = "{% for m in messages %}\n    {% if m.role == 'tool' %}{{ raise_exception('no tools: ' + m.content) }}{% endif %}\n[{{ m.role }}]{{ m.content.strip() }}\n{% endfor %}\n{% if add_generation_prompt %}{{ bos_token }}>{% endif %}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let out = t
            .render(
                &[ChatMessage::user("  hi "), ChatMessage::assistant("yo")],
                true,
            )
            .unwrap();
        assert_eq!(out, "[user]hi\n[assistant]yo\n<s>>");
        let err = t
            .render(&[ChatMessage::new("tool", "x")], false)
            .unwrap_err();
        assert!(err.to_string().contains("no tools: x"), "{err}");
    }

    #[test]
    fn chatml_and_tokenizer_configs_load() {
        let t = ChatTemplate::load("chatml").unwrap();
        assert_eq!(
            t.first_prompt(Some("S"), "U").unwrap(),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n["
        );
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("tokenizer_config.json");
        std::fs::write(
            &cfg,
            r#"{"bos_token": {"content": "<s>"}, "eos_token": "</s>",
                "chat_template": [{"name": "default", "template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"}]}"#,
        )
        .unwrap();
        for spec in [dir.path(), cfg.as_path()] {
            let t = ChatTemplate::load(spec.to_str().unwrap()).unwrap();
            assert_eq!(t.chat_prompt(None, "U").unwrap(), "<s>U");
        }
        std::fs::write(&cfg, "{}").unwrap();
        let err = ChatTemplate::load(cfg.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("no `chat_template`"), "{err}");
        let err = ChatTemplate::load("/nonexistent/t.jinja").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/t.jinja"), "{err}");
    }

    #[test]
    fn syntax_error_is_reported() {
        let err = ChatTemplate::new("{% if %}", "", "").unwrap_err();
        assert!(err.to_string().contains("does not compile"), "{err}");
    }
}
