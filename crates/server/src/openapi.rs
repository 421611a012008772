//! The OpenAPI 3.1 document of the routes, generated with `utoipa` from the
//! handlers' annotations ([`crate::handlers`]) and the request/response types
//! ([`crate::types`]); served at `GET /openapi.json`.

use std::sync::OnceLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::{Modify, OpenApi};

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::handlers;
use crate::types;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "firstrank reranking server",
        description = "Listwise LLM reranking (FIRST single-token scoring) behind the rerank APIs of \
            Cohere (v1, v2), Jina, llama.cpp and Hugging Face TEI. relevance_score / score is rank-based \
            for listwise models: (n - rank) / n for the final ranking after the window strategy (1 for \
            the top document); for cross-encoders it is the model's probability (the sigmoid of its \
            logit, as TEI returns it). raw_scores adds or returns the model's raw score (FIRST: \
            identifier logit; cross-encoder: the logit) from the last window that placed the document. Errors are {\"error\", \"error_type\", \"message\"}; JSON \
            routes need Content-Type application/json (or none)."
    ),
    paths(
        handlers::rerank,
        handlers::rerank_v1,
        handlers::rerank_v2,
        handlers::batch,
        handlers::batch_v1,
        handlers::health,
        handlers::info,
        handlers::metrics_text,
        serve,
    ),
    components(schemas(
        types::ErrorBody,
        types::DocumentIn,
        types::RerankRequest,
        types::TeiRequest,
        types::AnyRerankRequest,
        types::RankLlmRequest,
        types::BatchRequest,
        types::RerankResponse,
        types::TeiResult,
        types::AnyRerankResponse,
        types::HealthResponse,
        types::InfoResponse,
    )),
    modifiers(&BearerKey),
)]
struct ApiDoc;

/// The bearer API key scheme, required everywhere but where an operation
/// says otherwise (`/health`).
struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Only when the server was started with --api-key / FIRSTRANK_API_KEY.",
                    ))
                    .build(),
            ),
        );
        doc.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// The document as a value.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The document as JSON text (built once).
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        document().to_pretty_json().unwrap_or_else(|e| {
            format!("{{\"error\": \"cannot serialize the OpenAPI document: {e}\"}}")
        })
    })
}

/// This document (OpenAPI 3.1, generated from the types).
#[utoipa::path(get, path = "/openapi.json", tag = "status",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub(crate) async fn serve() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json(),
    )
        .into_response()
}
