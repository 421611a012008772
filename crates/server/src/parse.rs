//! Parsing and validation of the rerank request bodies into
//! [`RerankInput`] (and core `Request`s for the batch endpoint).
//!
//! Bodies are parsed into a `serde_json::Value` first and then checked field
//! by field by hand (rather than with derived structs) so that every wrong
//! input gets a message naming the field (`documents[3]`), the distinction
//! between "not JSON" (400) and "wrong JSON" (422) is exact, and the shape can
//! be told from the fields present (llama.cpp's rule: `texts` means TEI). The
//! accepted shapes are the request types of [`crate::types`].

use std::collections::HashSet;

use firstrank_core::{Candidate, Query, Request};
use serde_json::{Map, Value};

use crate::config::Limits;
use crate::error::ApiError;
use crate::types::{Doc, RerankInput, Shape};

/// Parses bytes as JSON: 400 for anything that is not a JSON document.
pub fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid_json(
            "the request body is empty; expected a JSON object",
        ));
    }
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ApiError::invalid_json(format!(
            "the request body is not valid UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        )));
    }
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Eof => ApiError::invalid_json(format!(
                "the request body ends before the JSON document does: {e}"
            )),
            _ => ApiError::invalid_json(format!("the request body is not valid JSON: {e}")),
        }
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(field: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::invalid(format!(
        "`{field}` must be {expected}, got {}",
        type_name(got)
    ))
}

/// An optional boolean; null counts as absent.
fn opt_bool(obj: &Map<String, Value>, field: &str) -> Result<Option<bool>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(wrong_type(field, "a boolean", v)),
    }
}

/// An optional positive integer; null counts as absent.
fn opt_positive(obj: &Map<String, Value>, field: &str) -> Result<Option<usize>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(0) | None => Err(ApiError::invalid(format!(
                "`{field}` must be a positive integer, got {n}"
            ))),
            Some(v) => Ok(Some(usize::try_from(v).unwrap_or(usize::MAX))),
        },
        Some(v) => Err(wrong_type(field, "a positive integer", v)),
    }
}

fn opt_string<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(wrong_type(field, "a string", v)),
    }
}

/// The non-empty query text of `field`.
fn query_text(obj: &Map<String, Value>, field: &str, limits: &Limits) -> Result<String, ApiError> {
    let q = match obj.get(field) {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(format!(
                "missing field `{field}` (the query text)"
            )))
        }
        Some(Value::String(s)) => s,
        Some(v) => return Err(wrong_type(field, "a string", v)),
    };
    if q.trim().is_empty() {
        return Err(ApiError::invalid(format!("`{field}` must not be empty")));
    }
    if q.len() > limits.max_document_bytes {
        return Err(ApiError::too_large(format!(
            "`{field}` is {} bytes; the limit is {} bytes (--max-document-bytes)",
            q.len(),
            limits.max_document_bytes
        )));
    }
    Ok(q.clone())
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn cut_at_char_boundary(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Parses a Cohere/Jina/llama.cpp/TEI rerank body. `v2` is the Cohere v2 route.
pub fn parse_rerank(value: Value, v2: bool, limits: &Limits) -> Result<RerankInput, ApiError> {
    let Value::Object(obj) = value else {
        return Err(ApiError::invalid(format!(
            "the request body must be a JSON object with `query` and `documents` (or `texts`), got {}",
            type_name(&value)
        )));
    };
    let tei = !v2 && obj.contains_key("texts");
    let shape = if v2 {
        Shape::CohereV2
    } else if tei {
        Shape::Tei
    } else {
        Shape::Jina
    };
    let query = query_text(&obj, "query", limits)?;
    // Only checked for type: the served model is fixed (see the README).
    opt_string(&obj, "model")?;
    let field = if tei { "texts" } else { "documents" };
    let items = match obj.get(field) {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(format!(
                "missing field `{field}` (the list of documents to rerank)"
            )))
        }
        Some(Value::Array(a)) => a,
        Some(v) => return Err(wrong_type(field, "an array", v)),
    };
    if items.is_empty() {
        return Err(ApiError::invalid(format!("`{field}` must not be empty")));
    }
    if items.len() > limits.max_documents {
        return Err(ApiError::too_large(format!(
            "`{field}` has {} documents; the limit is {} per request (--max-documents)",
            items.len(),
            limits.max_documents
        )));
    }
    let truncate = opt_bool(&obj, "truncate")?.unwrap_or(false);
    let mut docs = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let mut doc = match item {
            Value::String(s) => Doc {
                text: s.clone(),
                title: None,
            },
            Value::Object(o) if !tei => {
                let text = match o.get("text") {
                    Some(Value::String(s)) => s.clone(),
                    None | Some(Value::Null) => {
                        return Err(ApiError::invalid(format!(
                            "`{field}[{i}]` is an object without a `text` string"
                        )))
                    }
                    Some(v) => {
                        return Err(wrong_type(&format!("{field}[{i}].text"), "a string", v))
                    }
                };
                let title = match o.get("title") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(v) => {
                        return Err(wrong_type(&format!("{field}[{i}].title"), "a string", v))
                    }
                };
                Doc { text, title }
            }
            v => {
                let expected = if tei {
                    "a string"
                } else {
                    "a string or an object with a `text` string"
                };
                return Err(wrong_type(&format!("{field}[{i}]"), expected, v));
            }
        };
        let bytes = doc.text.len() + doc.title.as_ref().map_or(0, String::len);
        if bytes > limits.max_document_bytes {
            if truncate {
                doc.title = None;
                cut_at_char_boundary(&mut doc.text, limits.max_document_bytes);
            } else {
                return Err(ApiError::too_large(format!(
                    "`{field}[{i}]` is {bytes} bytes; the limit is {} bytes per document \
                     (--max-document-bytes; TEI's `truncate: true` cuts instead)",
                    limits.max_document_bytes
                )));
            }
        }
        docs.push(doc);
    }
    let top_n = opt_positive(&obj, "top_n")?;
    let max_tokens_per_doc = opt_positive(&obj, "max_tokens_per_doc")?;
    let max_chunks_per_doc = opt_positive(&obj, "max_chunks_per_doc")?;
    let instruction = opt_string(&obj, "instruction")?.map(str::to_string);
    if let Some(i) = instruction
        .as_ref()
        .filter(|i| i.len() > limits.max_document_bytes)
    {
        return Err(ApiError::too_large(format!(
            "`instruction` is {} bytes; the limit is {} bytes (--max-document-bytes)",
            i.len(),
            limits.max_document_bytes
        )));
    }
    let raw_scores = opt_bool(&obj, "raw_scores")?.unwrap_or(false);
    let return_documents = if tei {
        opt_bool(&obj, "return_text")?.unwrap_or(false)
    } else {
        // Jina and llama.cpp return documents unless told not to; Cohere v2 does not return them.
        opt_bool(&obj, "return_documents")?.unwrap_or(!v2)
    };
    if tei {
        opt_string(&obj, "truncation_direction")?;
    }
    Ok(RerankInput {
        shape,
        query,
        docs,
        top_n,
        return_documents,
        raw_scores,
        truncate,
        max_tokens_per_doc,
        max_chunks_per_doc,
        instruction,
    })
}

/// An id/qid/docid given as a JSON string or integer.
fn id_value(v: Option<&Value>, path: &str) -> Result<String, ApiError> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(ApiError::invalid(format!("`{path}` must not be empty"))),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Ok(n.to_string()),
        None | Some(Value::Null) => Err(ApiError::invalid(format!("missing field `{path}`"))),
        Some(v) => Err(wrong_type(path, "a string or an integer", v)),
    }
}

/// Converts one rank_llm request object (`requests[i]`).
fn parse_rankllm_request(v: &Value, i: usize, limits: &Limits) -> Result<Request, ApiError> {
    let at = |f: &str| format!("requests[{i}].{f}");
    let Value::Object(obj) = v else {
        return Err(wrong_type(
            &format!("requests[{i}]"),
            "a rank_llm request object {\"query\": {\"text\", \"qid\"}, \"candidates\": [...]}",
            v,
        ));
    };
    let query = match obj.get("query") {
        Some(Value::Object(q)) => q,
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(format!(
                "missing field `{}`",
                at("query")
            )))
        }
        Some(v) => return Err(wrong_type(&at("query"), "an object {\"text\", \"qid\"}", v)),
    };
    let text = query_text(query, "text", limits).map_err(|e| ApiError {
        message: format!("{}: {}", at("query"), e.message),
        ..e
    })?;
    let qid = id_value(query.get("qid"), &at("query.qid"))?;
    let cands = match obj.get("candidates") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(format!(
                "missing field `{}`",
                at("candidates")
            )))
        }
        Some(v) => return Err(wrong_type(&at("candidates"), "an array", v)),
    };
    if cands.len() > limits.max_documents {
        return Err(ApiError::too_large(format!(
            "`{}` has {} candidates; the limit is {} per query (--max-documents)",
            at("candidates"),
            cands.len(),
            limits.max_documents
        )));
    }
    let mut seen = HashSet::new();
    let mut candidates = Vec::with_capacity(cands.len());
    for (j, c) in cands.iter().enumerate() {
        let here = format!("requests[{i}].candidates[{j}]");
        let Value::Object(c) = c else {
            return Err(wrong_type(&here, "an object", c));
        };
        let docid = id_value(c.get("docid"), &format!("{here}.docid"))?;
        if !seen.insert(docid.clone()) {
            return Err(ApiError::invalid(format!(
                "`{here}.docid` `{docid}` appears twice in the same query"
            )));
        }
        let score = match c.get("score") {
            None | Some(Value::Null) => 0.0,
            Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
            Some(v) => return Err(wrong_type(&format!("{here}.score"), "a number", v)),
        };
        let doc = match c.get("doc") {
            Some(Value::Object(d)) => d,
            None | Some(Value::Null) => {
                return Err(ApiError::invalid(format!("missing field `{here}.doc`")))
            }
            Some(v) => return Err(wrong_type(&format!("{here}.doc"), "an object", v)),
        };
        let mut text = None;
        for f in ["contents", "text", "segment", "body", "passage"] {
            if let Some(s) = opt_string(doc, f).map_err(|e| ApiError {
                message: format!("{here}.doc: {}", e.message),
                ..e
            })? {
                text = Some(s.to_string());
                break;
            }
        }
        let Some(text) = text else {
            return Err(ApiError::invalid(format!(
                "`{here}.doc` has no passage text: expected `contents`, `text`, `segment`, `body` or `passage`"
            )));
        };
        let title = opt_string(doc, "title")?.map(str::to_string);
        let bytes = text.len() + title.as_ref().map_or(0, String::len);
        if bytes > limits.max_document_bytes {
            return Err(ApiError::too_large(format!(
                "`{here}.doc` is {bytes} bytes; the limit is {} bytes per document (--max-document-bytes)",
                limits.max_document_bytes
            )));
        }
        candidates.push(Candidate {
            docid,
            score,
            title,
            text,
        });
    }
    Ok(Request {
        query: Query {
            qid,
            text,
            instruction: None,
        },
        candidates,
    })
}

/// Parses a batch body: a JSON array of rank_llm requests, `{"requests": [...]}`,
/// or one request object per line (JSONL; a single object is one line).
pub fn parse_batch(body: &[u8], limits: &Limits) -> Result<Vec<Request>, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let values: Vec<Value> = match first {
        Some(b'[') => match parse_json(body)? {
            Value::Array(a) => a,
            v => return Err(wrong_type("body", "an array", &v)),
        },
        Some(b'{') => parse_json_stream(body)?,
        _ => {
            // parse_json reports empty bodies, bad UTF-8 and syntax precisely.
            let v = parse_json(body)?;
            return Err(wrong_type(
                "body",
                "a JSON array of rank_llm requests, {\"requests\": [...]} or JSONL",
                &v,
            ));
        }
    };
    let values = match values.as_slice() {
        [Value::Object(o)] if o.contains_key("requests") => match &o["requests"] {
            Value::Array(a) => a.clone(),
            v => return Err(wrong_type("requests", "an array", v)),
        },
        _ => values,
    };
    if values.is_empty() {
        return Err(ApiError::invalid("the batch has no requests"));
    }
    if values.len() > limits.max_batch_queries {
        return Err(ApiError::too_large(format!(
            "the batch has {} queries; the limit is {} (--max-batch-queries)",
            values.len(),
            limits.max_batch_queries
        )));
    }
    let mut qids = HashSet::new();
    let mut requests = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        let r = parse_rankllm_request(v, i, limits)?;
        if !qids.insert(r.query.qid.clone()) {
            return Err(ApiError::invalid(format!(
                "`requests[{i}].query.qid` `{}` appears twice in the batch",
                r.query.qid
            )));
        }
        requests.push(r);
    }
    Ok(requests)
}

/// Several JSON values separated by whitespace (JSONL).
fn parse_json_stream(body: &[u8]) -> Result<Vec<Value>, ApiError> {
    // Reuse parse_json's UTF-8 check and messages for the first failure.
    if std::str::from_utf8(body).is_err() {
        return parse_json(body).map(|v| vec![v]);
    }
    let mut out = Vec::new();
    for (i, v) in serde_json::Deserializer::from_slice(body)
        .into_iter::<Value>()
        .enumerate()
    {
        out.push(v.map_err(|e| {
            ApiError::invalid_json(format!("batch line/value {}: not valid JSON: {e}", i + 1))
        })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn shapes_are_told_apart_by_route_and_fields() {
        let jina =
            serde_json::json!({"query": "q", "documents": ["a", {"text": "b", "title": "t"}]});
        let p = parse_rerank(jina, false, &limits()).unwrap();
        assert_eq!(p.shape, Shape::Jina);
        assert!(p.return_documents);
        assert_eq!(p.docs[1].title.as_deref(), Some("t"));
        let tei = serde_json::json!({"query": "q", "texts": ["a"], "raw_scores": true});
        let p = parse_rerank(tei, false, &limits()).unwrap();
        assert_eq!(p.shape, Shape::Tei);
        assert!(!p.return_documents && p.raw_scores);
        let v2 = serde_json::json!({"query": "q", "documents": ["a"], "model": "rerank-v3.5", "top_n": 1});
        let p = parse_rerank(v2, true, &limits()).unwrap();
        assert_eq!(p.shape, Shape::CohereV2);
        assert!(!p.return_documents);
        assert_eq!(p.top_n, Some(1));
    }

    #[test]
    fn bad_fields_name_the_field() {
        let cases = [
            (
                serde_json::json!({"documents": ["a"]}),
                "missing field `query`",
            ),
            (
                serde_json::json!({"query": " ", "documents": ["a"]}),
                "`query` must not be empty",
            ),
            (
                serde_json::json!({"query": "q", "documents": []}),
                "`documents` must not be empty",
            ),
            (
                serde_json::json!({"query": "q", "documents": ["a", 3]}),
                "`documents[1]`",
            ),
            (
                serde_json::json!({"query": "q", "documents": ["a"], "top_n": 0}),
                "`top_n`",
            ),
            (
                serde_json::json!({"query": "q", "documents": ["a"], "top_n": "2"}),
                "`top_n`",
            ),
            (
                serde_json::json!({"query": 5, "documents": ["a"]}),
                "`query` must be a string",
            ),
            (
                serde_json::json!({"query": "q", "texts": [{"text": "a"}]}),
                "`texts[0]`",
            ),
        ];
        for (body, needle) in cases {
            let e = parse_rerank(body.clone(), false, &limits()).unwrap_err();
            assert_eq!(e.status.as_u16(), 422, "{body}");
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
    }

    #[test]
    fn not_json_is_400() {
        assert_eq!(
            parse_json(b"{\"query\": ").unwrap_err().status.as_u16(),
            400
        );
        assert_eq!(parse_json(b"").unwrap_err().status.as_u16(), 400);
        let e = parse_json(b"{\"query\": \"\xff\"}").unwrap_err();
        assert!(e.message.contains("UTF-8"), "{}", e.message);
    }

    #[test]
    fn batch_accepts_array_object_and_jsonl() {
        let one = r#"{"query": {"text": "q", "qid": 1}, "candidates": [{"docid": "a", "score": 2, "doc": {"contents": "x"}}]}"#;
        let two = one.replace("\"qid\": 1", "\"qid\": 2");
        for body in [
            format!("[{one},{two}]"),
            format!("{{\"requests\": [{one},{two}]}}"),
            format!("{one}\n{two}\n"),
        ] {
            let r = parse_batch(body.as_bytes(), &limits()).unwrap();
            assert_eq!(r.len(), 2, "{body}");
            assert_eq!(r[1].query.qid, "2");
            assert_eq!(r[0].candidates[0].text, "x");
        }
        let dup = format!("[{one},{one}]");
        assert_eq!(
            parse_batch(dup.as_bytes(), &limits())
                .unwrap_err()
                .status
                .as_u16(),
            422
        );
    }
}

/// Tests of the request and response types, here because they parse bodies
/// (types must not import parse: parse imports types).
#[cfg(test)]
mod type_tests {
    use crate::config::Limits;
    use crate::parse::{parse_batch, parse_rerank};
    use crate::types::*;

    #[test]
    fn rank_scores_are_in_unit_interval_and_decrease() {
        let s: Vec<f64> = (0..5).map(|r| rank_score(r, 5)).collect();
        assert_eq!(s, vec![1.0, 0.8, 0.6, 0.4, 0.2]);
    }

    /// The documented request types and the hand-written parser agree: a
    /// body built from the types parses, with every field honoured.
    #[test]
    fn documented_request_types_parse() {
        let limits = Limits::default();
        let req = RerankRequest {
            query: "q".into(),
            documents: vec![
                DocumentIn::Text("a".into()),
                DocumentIn::Object {
                    text: "b".into(),
                    title: Some("t".into()),
                },
            ],
            top_n: Some(1),
            return_documents: Some(false),
            raw_scores: Some(true),
            max_tokens_per_doc: Some(5),
            max_chunks_per_doc: Some(2),
            instruction: Some("Find recipes".into()),
            model: Some("m".into()),
        };
        let v = serde_json::to_value(AnyRerankRequest::Rerank(req)).unwrap();
        let p = parse_rerank(v, false, &limits).unwrap();
        assert_eq!(p.shape, Shape::Jina);
        assert_eq!((p.top_n, p.max_tokens_per_doc), (Some(1), Some(5)));
        assert_eq!(p.max_chunks_per_doc, Some(2));
        assert_eq!(
            p.to_request().query.instruction.as_deref(),
            Some("Find recipes")
        );
        assert!(!p.return_documents && p.raw_scores);
        assert_eq!(p.docs[1].title.as_deref(), Some("t"));
        let tei = TeiRequest {
            query: "q".into(),
            texts: vec!["a".into()],
            return_text: Some(true),
            raw_scores: Some(false),
            truncate: Some(true),
            truncation_direction: Some("right".into()),
        };
        let v = serde_json::to_value(AnyRerankRequest::Tei(tei)).unwrap();
        let p = parse_rerank(v, false, &limits).unwrap();
        assert_eq!(p.shape, Shape::Tei);
        assert!(p.return_documents && p.truncate);
        let r = RankLlmRequest {
            query: RankLlmQuery {
                text: "q".into(),
                qid: Id::Number(7),
            },
            candidates: vec![RankLlmCandidate {
                docid: Id::Text("d".into()),
                score: Some(1.5),
                doc: RankLlmDoc {
                    contents: None,
                    text: None,
                    segment: Some("s".into()),
                    body: None,
                    passage: None,
                    title: Some("t".into()),
                },
            }],
        };
        for body in [
            BatchRequest::Array(vec![r.clone()]),
            BatchRequest::Object(BatchObject {
                requests: vec![r.clone()],
            }),
        ] {
            let bytes = serde_json::to_vec(&body).unwrap();
            let parsed = parse_batch(&bytes, &limits).unwrap();
            assert_eq!(parsed[0].query.qid, "7");
            assert_eq!(parsed[0].candidates[0].text, "s");
            assert_eq!(parsed[0].candidates[0].title.as_deref(), Some("t"));
        }
    }
}
