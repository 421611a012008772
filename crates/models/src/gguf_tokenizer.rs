//! Builds a Hugging Face `tokenizers::Tokenizer` from the tokenizer that a GGUF file carries in its
//! metadata (`tokenizer.ggml.*`), so that a GGUF model needs no separate tokenizer.json.
//!
//! The `tokenizers` crate has no GGUF reader, so the translation is written here. It follows
//! llama.cpp's tokenizers, which define what a GGUF's ids mean:
//!
//! * `tokenizer.ggml.model = "gpt2"`: byte-level BPE with the GGUF's merges. The pre-tokenizer
//!   follows `tokenizer.ggml.pre`: `smollm` (and the other llama.cpp types with the same regex
//!   chain) splits every `\p{N}` code point off first, then applies the GPT-2 regex; `gpt-2` /
//!   `default` apply the GPT-2 regex only; `llama-bpe` and `qwen2` use their own regexes.
//! * `tokenizer.ggml.model = "llama"`: SentencePiece-style BPE over scores (llama.cpp's SPM
//!   tokenizer): spaces become `▁` (plus a leading `▁` when `tokenizer.ggml.add_space_prefix` is
//!   true, the llama.cpp default), the pair whose concatenation is the vocabulary token with the
//!   highest score is merged first, and characters outside the vocabulary fall back to `<0xNN>`
//!   byte tokens. This is expressed as a `tokenizers` BPE model whose merge ranks are derived from
//!   the scores (the way the SentencePiece converters do it).
//!
//! Control (token type 3) and user-defined (type 4) tokens become added tokens matched on the raw
//! text, so chat markup such as `<|im_start|>` or a literal `<bos>` in the prompt string is
//! encoded as its single token (control tokens are marked special). When the GGUF says
//! `add_bos_token`, encoding with `add_special_tokens = true` prepends the BOS token.
//!
//! A tokenizer.json file needs none of this: `tokenizers::Tokenizer::from_file` reads it.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, NormalizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// llama.cpp token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// llama.cpp's `llama-bpe` (Llama 3) regex.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// llama.cpp's `qwen2` regex (digits one by one).
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokenizer rebuilt from GGUF metadata, with the special tokens a prompt builder needs.
#[derive(Clone)]
pub struct GgufTokenizer {
    /// The tokenizer. Encode prompts with `add_special_tokens = false` when the chat template
    /// writes the BOS itself; decode with `skip_special_tokens = false` to get the text back.
    pub tokenizer: Tokenizer,
    /// `tokenizer.ggml.bos_token_id` and its text.
    pub bos: Option<(String, u32)>,
    /// `tokenizer.ggml.eos_token_id` and its text.
    pub eos: Option<(String, u32)>,
    /// `tokenizer.ggml.add_bos_token` (llama.cpp's default when absent: true for "llama", false
    /// for "gpt2"). When true, `encode(text, true)` prepends the BOS token.
    pub add_bos: bool,
    /// `tokenizer.chat_template`, if the GGUF has one.
    pub chat_template: Option<String>,
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("vocab_size", &self.tokenizer.get_vocab_size(true))
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field(
                "chat_template",
                &self.chat_template.as_ref().map(|t| t.len()),
            )
            .finish()
    }
}

fn meta<'a>(content: &'a Content, key: &str) -> Option<&'a Value> {
    content.metadata.get(key)
}

fn meta_str(content: &Content, key: &str) -> Result<Option<String>> {
    match meta(content, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => bail!("GGUF metadata `{key}`: expected a string, found {v:?}"),
    }
}

fn value_as_i64(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}

fn meta_u32(content: &Content, key: &str) -> Result<Option<u32>> {
    match meta(content, key) {
        None => Ok(None),
        Some(v) => value_as_i64(v)
            .and_then(|x| u32::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| anyhow!("GGUF metadata `{key}`: expected a token id, found {v:?}")),
    }
}

fn meta_bool(content: &Content, key: &str) -> Result<Option<bool>> {
    match meta(content, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => bail!("GGUF metadata `{key}`: expected a bool, found {v:?}"),
    }
}

fn meta_array<'a>(content: &'a Content, key: &str) -> Result<&'a [Value]> {
    match meta(content, key) {
        None => bail!("GGUF metadata has no `{key}`: this file carries no usable tokenizer"),
        Some(Value::Array(a)) => Ok(a),
        Some(v) => bail!(
            "GGUF metadata `{key}`: expected an array, found {:?}",
            v.value_type()
        ),
    }
}

fn meta_strings(content: &Content, key: &str) -> Result<Vec<String>> {
    meta_array(content, key)?
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.clone()),
            v => bail!("GGUF metadata `{key}`[{i}]: expected a string, found {v:?}"),
        })
        .collect()
}

fn meta_token_types(content: &Content, n: usize) -> Result<Vec<i64>> {
    let key = "tokenizer.ggml.token_type";
    if meta(content, key).is_none() {
        return Ok(vec![1; n]); // all normal
    }
    let types: Vec<i64> = meta_array(content, key)?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            value_as_i64(v).ok_or_else(|| {
                anyhow!("GGUF metadata `{key}`[{i}]: expected an integer, found {v:?}")
            })
        })
        .collect::<Result<_>>()?;
    if types.len() != n {
        bail!(
            "GGUF metadata `{key}` has {} entries, but there are {n} tokens",
            types.len()
        );
    }
    Ok(types)
}

fn meta_scores(content: &Content, n: usize) -> Result<Vec<f32>> {
    let key = "tokenizer.ggml.scores";
    let scores: Vec<f32> = meta_array(content, key)?
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::F32(x) => Ok(*x),
            Value::F64(x) => Ok(*x as f32),
            v => bail!("GGUF metadata `{key}`[{i}]: expected a float, found {v:?}"),
        })
        .collect::<Result<_>>()?;
    if scores.len() != n {
        bail!(
            "GGUF metadata `{key}` has {} entries, but there are {n} tokens",
            scores.len()
        );
    }
    Ok(scores)
}

/// First id of each token text (llama.cpp keeps the first when a text repeats).
fn vocab_of(tokens: &[String]) -> Vocab {
    let mut vocab = Vocab::default();
    for (i, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(i as u32);
    }
    vocab
}

fn tk_err(e: tokenizers::Error) -> anyhow::Error {
    anyhow!("{e}")
}

/// Byte-level BPE ("gpt2"): the vocabulary and merges as stored; merges that name a piece or a
/// result outside the vocabulary cannot be applied by llama.cpp either and are dropped.
fn gpt2_model(tokens: &[String], content: &Content) -> Result<BPE> {
    let vocab = vocab_of(tokens);
    let raw = meta_strings(content, "tokenizer.ggml.merges")?;
    let mut merges = Vec::with_capacity(raw.len());
    let mut dropped = 0usize;
    for (i, m) in raw.iter().enumerate() {
        let (a, b) = m.split_once(' ').ok_or_else(|| {
            anyhow!(
                "GGUF metadata `tokenizer.ggml.merges`[{i}]: expected \"left right\", found {m:?}"
            )
        })?;
        if vocab.contains_key(a) && vocab.contains_key(b) && vocab.contains_key(&format!("{a}{b}"))
        {
            merges.push((a.to_string(), b.to_string()));
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        tracing::debug!("GGUF tokenizer: dropped {dropped} merges outside the vocabulary");
    }
    BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(tk_err)
        .context("building the byte-level BPE model from the GGUF vocabulary")
}

fn gpt2_pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level = |use_regex| ByteLevel::new(false, true, use_regex);
    let split = |re: &str| -> Result<PreTokenizerWrapper> {
        Ok(Split::new(
            SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tk_err)?
        .into())
    };
    Ok(match pre {
        // The GPT-2 regex only (what `tokenizers`' ByteLevel pre-tokenizer applies with
        // use_regex: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+).
        "default" | "gpt-2" | "gpt2" | "phi-2" | "jais" | "olmo" | "stablelm2" => {
            byte_level(true).into()
        }
        // Every \p{N} code point on its own (tokenizers' Digits splits on char::is_numeric,
        // which is \p{N}), then the GPT-2 regex.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" => {
            PreTokenizerSequence::new(vec![Digits::new(true).into(), byte_level(true).into()])
                .into()
        }
        "llama-bpe" | "llama3" | "llama-v3" => {
            PreTokenizerSequence::new(vec![split(LLAMA3_REGEX)?, byte_level(false).into()]).into()
        }
        "qwen2" => {
            PreTokenizerSequence::new(vec![split(QWEN2_REGEX)?, byte_level(false).into()]).into()
        }
        other => bail!(
            "GGUF tokenizer.ggml.pre = {other:?} is not supported by firstrank's GGUF tokenizer \
             (supported: default/gpt-2, smollm/starcoder family, llama-bpe, qwen2); \
             pass the model's tokenizer.json instead"
        ),
    })
}

/// SentencePiece BPE ("llama"): a merge (a, b) exists wherever a token splits into two
/// vocabulary tokens; merges are ranked by the score of the merged token, highest first
/// (llama.cpp merges the highest-scoring pair first; ties: leftmost, as in `tokenizers`' BPE).
fn spm_model(tokens: &[String], scores: &[f32]) -> Result<BPE> {
    let vocab = vocab_of(tokens);
    let mut merges: Vec<(f32, u32, usize)> = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        if vocab.get(tok) != Some(&(id as u32)) {
            continue; // a duplicate text: the first id wins
        }
        for (pos, _) in tok.char_indices().skip(1) {
            let (a, b) = tok.split_at(pos);
            if vocab.contains_key(a) && vocab.contains_key(b) {
                merges.push((scores[id], id as u32, pos));
            }
        }
    }
    // Highest score first; then by merged id and split position, for a deterministic order.
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let merges: Vec<(String, String)> = merges
        .into_iter()
        .map(|(_, id, pos)| {
            let (a, b) = tokens[id as usize].split_at(pos);
            (a.to_string(), b.to_string())
        })
        .collect();
    let unk = tokens.iter().position(|t| t == "<unk>");
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(u) = unk {
        builder = builder.unk_token(tokens[u].clone());
    }
    builder
        .build()
        .map_err(tk_err)
        .context("building the SentencePiece BPE model from the GGUF vocabulary")
}

/// Build the tokenizer from a GGUF file's metadata.
pub fn tokenizer_from_gguf(content: &Content) -> Result<GgufTokenizer> {
    let kind = meta_str(content, "tokenizer.ggml.model")?
        .ok_or_else(|| anyhow!("GGUF metadata has no `tokenizer.ggml.model`: this file carries no tokenizer; pass a tokenizer.json"))?;
    let tokens = meta_strings(content, "tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        bail!("GGUF metadata `tokenizer.ggml.tokens` is empty");
    }
    let types = meta_token_types(content, tokens.len())?;
    let add_space_prefix = meta_bool(content, "tokenizer.ggml.add_space_prefix")?;
    let add_bos_meta = meta_bool(content, "tokenizer.ggml.add_bos_token")?;

    let (mut tokenizer, add_bos) = match kind.as_str() {
        "gpt2" => {
            let pre = meta_str(content, "tokenizer.ggml.pre")?.unwrap_or_else(|| "default".into());
            let mut tk = Tokenizer::new(gpt2_model(&tokens, content)?);
            tk.with_pre_tokenizer(Some(gpt2_pre_tokenizer(&pre)?));
            tk.with_decoder(Some(ByteLevelDecoder::default()));
            (tk, add_bos_meta.unwrap_or(false))
        }
        "llama" => {
            let scores = meta_scores(content, tokens.len())?;
            let mut tk = Tokenizer::new(spm_model(&tokens, &scores)?);
            let replace: NormalizerWrapper = Replace::new(" ", "\u{2581}").map_err(tk_err)?.into();
            let add_prefix = add_space_prefix.unwrap_or(true);
            let normalizer: NormalizerWrapper = if add_prefix {
                NormalizerSequence::new(vec![Prepend::new("\u{2581}".into()).into(), replace])
                    .into()
            } else {
                replace
            };
            tk.with_normalizer(Some(normalizer)).map_err(tk_err)?;
            let mut decoders: Vec<DecoderWrapper> = vec![
                tokenizers::decoders::DecoderWrapper::Replace(
                    Replace::new("\u{2581}", " ").map_err(tk_err)?,
                ),
                ByteFallback::new().into(),
                Fuse::new().into(),
            ];
            if add_prefix {
                decoders.push(Strip::new(' ', 1, 0).into());
            }
            tk.with_decoder(Some(DecoderSequence::new(decoders)));
            (tk, add_bos_meta.unwrap_or(true))
        }
        other => bail!(
            "GGUF tokenizer.ggml.model = {other:?} is not supported by firstrank's GGUF tokenizer \
             (supported: \"gpt2\" byte-level BPE, \"llama\" SentencePiece); pass the model's tokenizer.json instead"
        ),
    };

    // Control and user-defined tokens are matched whole in the raw text.
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(t, ty)| {
            !t.is_empty() && (**ty == TOKEN_TYPE_CONTROL || **ty == TOKEN_TYPE_USER_DEFINED)
        })
        .map(|(t, ty)| AddedToken::from(t.clone(), *ty == TOKEN_TYPE_CONTROL).normalized(false))
        .collect();
    tokenizer.add_tokens(added).map_err(tk_err)?;

    let token_of = |key: &str| -> Result<Option<(String, u32)>> {
        Ok(match meta_u32(content, key)? {
            Some(id) => Some((
                tokens
                    .get(id as usize)
                    .ok_or_else(|| {
                        anyhow!(
                            "GGUF metadata `{key}` = {id} is outside the vocabulary of {} tokens",
                            tokens.len()
                        )
                    })?
                    .clone(),
                id,
            )),
            None => None,
        })
    };
    let bos = token_of("tokenizer.ggml.bos_token_id")?;
    let eos = token_of("tokenizer.ggml.eos_token_id")?;
    if add_bos {
        if let Some((text, id)) = &bos {
            let post = TemplateProcessing::builder()
                .try_single(format!("{text} $0"))
                .map_err(|e| anyhow!("BOS template: {e}"))?
                .try_pair(format!("{text} $A:0 $B:1"))
                .map_err(|e| anyhow!("BOS template: {e}"))?
                .special_tokens(vec![(text.clone(), *id)])
                .build()
                .map_err(|e| anyhow!("BOS template: {e}"))?;
            tokenizer.with_post_processor(Some(post));
        }
    }
    let chat_template = meta_str(content, "tokenizer.chat_template")?;
    Ok(GgufTokenizer {
        tokenizer,
        bos,
        eos,
        add_bos,
        chat_template,
    })
}

/// Read only the metadata of a GGUF file and build its tokenizer.
pub fn tokenizer_from_gguf_file(path: &std::path::Path) -> Result<GgufTokenizer> {
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("cannot open GGUF file {}", path.display()))?;
    let content = Content::read(&mut f)
        .map_err(|e| anyhow!("{}: not a readable GGUF file: {e}", path.display()))?;
    tokenizer_from_gguf(&content).with_context(|| format!("tokenizer of {}", path.display()))
}

/// A token's `[start, end)` bytes in the text it was encoded from.
pub type ByteRange = (usize, usize);

impl GgufTokenizer {
    /// Token ids of `text` exactly as written: no BOS is added, special-token text in it is
    /// parsed as the special token.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(tk_err)?
            .get_ids()
            .to_vec())
    }

    /// [`GgufTokenizer::encode_raw`] with each token's byte range in `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<ByteRange>)> {
        let enc = self.tokenizer.encode(text, false).map_err(tk_err)?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, false).map_err(tk_err)
    }

    /// The id of a token given by its exact text (vocabulary or added token).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Number of tokens, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}

/// Passage truncation for the prompt builder, with the reference's semantics: tokens counted by
/// `encode(text, add_special_tokens=False)`, truncation `decode(ids[..max_tokens])`.
impl firstrank_core::prompt::TokenCounter for GgufTokenizer {
    fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.encode_raw(text)?.len())
    }

    fn truncate_to_tokens(&self, text: &str, max_tokens: usize) -> Result<String> {
        let ids = self.encode_raw(text)?;
        self.decode(&ids[..ids.len().min(max_tokens)])
    }

    fn token_spans(&self, text: &str) -> Result<Vec<(usize, usize)>> {
        Ok(self.encode_with_offsets(text)?.1)
    }
}

/// The tokenizer of a Hugging Face model directory: `tokenizer.json`, with
/// the BOS/EOS tokens, `add_bos_token` and the chat template from
/// `tokenizer_config.json` when that file exists (a `chat_template` given as
/// a list of named templates uses the one named `default`).
pub fn tokenizer_from_hf_dir(dir: &std::path::Path) -> Result<GgufTokenizer> {
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = Tokenizer::from_file(&tok_path)
        .map_err(|e| anyhow!("{}: cannot load the tokenizer: {e}", tok_path.display()))?;
    let cfg_path = dir.join("tokenizer_config.json");
    let cfg: serde_json::Value = match std::fs::read_to_string(&cfg_path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", cfg_path.display()))?,
        Err(_) => serde_json::Value::Null,
    };
    let chat = firstrank_core::chat::ConfigChat::of(&cfg);
    let special = |text: Option<String>| -> Option<(String, u32)> {
        let text = text?;
        let id = tokenizer.token_to_id(&text)?;
        Some((text, id))
    };
    // Newer checkpoints keep the template in chat_template.jinja.
    let chat_template = chat
        .template
        .or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
    Ok(GgufTokenizer {
        bos: special(chat.bos),
        eos: special(chat.eos),
        add_bos: cfg
            .get("add_bos_token")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
        chat_template,
        tokenizer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::VersionedMagic;

    fn strings(v: &[&str]) -> Value {
        Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect())
    }

    fn content(entries: Vec<(&str, Value)>) -> Content {
        Content {
            magic: VersionedMagic::GgufV3,
            metadata: entries
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            tensor_infos: Default::default(),
            tensor_data_offset: 0,
        }
    }

    /// A byte-level BPE whose merges make "1234" come out differently per pre-tokenizer.
    fn gpt2(pre: &str) -> Result<GgufTokenizer> {
        let tokens = ["<s>", "1", "2", "3", "4", "34", "12", "123"];
        tokenizer_from_gguf(&content(vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String(pre.into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            ("tokenizer.ggml.merges", strings(&["3 4", "1 2", "12 3"])),
            (
                "tokenizer.ggml.token_type",
                Value::Array(
                    [3, 1, 1, 1, 1, 1, 1, 1]
                        .iter()
                        .map(|t| Value::I32(*t))
                        .collect(),
                ),
            ),
            ("tokenizer.ggml.bos_token_id", Value::U32(0)),
        ]))
    }

    fn pieces(tk: &GgufTokenizer, text: &str) -> Vec<String> {
        let ids = tk.encode_raw(text).unwrap();
        ids.iter()
            .map(|i| tk.tokenizer.id_to_token(*i).unwrap())
            .collect()
    }

    #[test]
    fn gpt2_pre_tokenizers_split_digits_as_llama_cpp() {
        // GPT-2 regex: one word "1234" -> merges 3+4, 1+2.
        assert_eq!(pieces(&gpt2("gpt-2").unwrap(), "1234"), ["12", "34"]);
        // smollm / qwen2: every digit alone.
        assert_eq!(
            pieces(&gpt2("smollm").unwrap(), "1234"),
            ["1", "2", "3", "4"]
        );
        assert_eq!(
            pieces(&gpt2("qwen2").unwrap(), "1234"),
            ["1", "2", "3", "4"]
        );
        // llama-bpe: digits in groups of up to three.
        assert_eq!(pieces(&gpt2("llama-bpe").unwrap(), "1234"), ["123", "4"]);
        // The control token is matched whole; no BOS added (add_bos_token defaults to false).
        let tk = gpt2("smollm").unwrap();
        assert_eq!(tk.encode_raw("<s>12").unwrap(), [0, 1, 2]);
        assert!(!tk.add_bos);
        assert_eq!(tk.tokenizer.encode("12", true).unwrap().get_ids(), [1, 2]);
        let err = gpt2("something-new").unwrap_err().to_string();
        assert!(
            err.contains("something-new") && err.contains("tokenizer.json"),
            "{err}"
        );
    }

    #[test]
    fn spm_scores_prefix_and_byte_fallback() {
        let tokens = [
            "<unk>",
            "<s>",
            "</s>",
            "<0x21>",
            "<0xC3>",
            "<0xA9>",
            "\u{2581}",
            "a",
            "b",
            "ab",
            "\u{2581}a",
            "\u{2581}ab",
        ];
        let types = [2, 3, 3, 6, 6, 6, 1, 1, 1, 1, 1, 1];
        // "▁ab" scores highest, then "ab", then "▁a".
        let scores = [
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -0.5, -0.7, -0.1,
        ];
        let build = |add_space_prefix: bool| {
            tokenizer_from_gguf(&content(vec![
                ("tokenizer.ggml.model", Value::String("llama".into())),
                ("tokenizer.ggml.tokens", strings(&tokens)),
                (
                    "tokenizer.ggml.scores",
                    Value::Array(scores.iter().map(|s| Value::F32(*s)).collect()),
                ),
                (
                    "tokenizer.ggml.token_type",
                    Value::Array(types.iter().map(|t| Value::I32(*t)).collect()),
                ),
                ("tokenizer.ggml.bos_token_id", Value::U32(1)),
                ("tokenizer.ggml.eos_token_id", Value::U32(2)),
                (
                    "tokenizer.ggml.add_space_prefix",
                    Value::Bool(add_space_prefix),
                ),
            ]))
            .unwrap()
        };
        let tk = build(false);
        // "ab a": a+b -> "ab" (-0.5) before ▁+a -> "▁a" (-0.7); "é" and "!" by bytes.
        assert_eq!(
            pieces(&tk, "ab a!é"),
            ["ab", "\u{2581}a", "<0x21>", "<0xC3>", "<0xA9>"]
        );
        assert_eq!(
            tk.decode(&tk.encode_raw("ab a!é").unwrap()).unwrap(),
            "ab a!é"
        );
        // llama.cpp's default for SPM is add_bos_token=true.
        assert!(tk.add_bos);
        assert_eq!(tk.tokenizer.encode("ab", true).unwrap().get_ids(), [1, 9]);
        assert_eq!(tk.bos, Some(("<s>".to_string(), 1)));
        assert_eq!(tk.eos, Some(("</s>".to_string(), 2)));
        // With the dummy prefix: "▁ab" wins, and decoding strips the prefix again.
        let tk = build(true);
        assert_eq!(pieces(&tk, "ab"), ["\u{2581}ab"]);
        assert_eq!(tk.decode(&tk.encode_raw("ab b").unwrap()).unwrap(), "ab b");
    }

    #[test]
    fn missing_or_unknown_tokenizer_is_an_error() {
        let err = tokenizer_from_gguf(&content(vec![]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("tokenizer.ggml.model"), "{err}");
        let err = tokenizer_from_gguf(&content(vec![
            ("tokenizer.ggml.model", Value::String("rwkv".into())),
            ("tokenizer.ggml.tokens", strings(&["a"])),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("rwkv"), "{err}");
    }
}
