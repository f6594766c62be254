//! The OpenAPI document's frame (title, tags, the bearer-token scheme), the
//! refusals that operations share, and [`documented`], which registers a
//! route together with its description. Each resource module documents its
//! own operations and schemas.

use std::collections::BTreeMap;

use axum::handler::Handler;
use axum::http::StatusCode;
use axum::routing::MethodRouter;
use utoipa::openapi::path::Paths;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};
use utoipa_axum::PathItemExt;
use utoipa_axum::router::UtoipaMethodRouter;

use super::MAX_BODY_BYTES;
use super::error::ErrorBody;
use super::input::{Identifier, Units};

/// The API's description; `GET /openapi.json` serves it with the paths added.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "allocation",
        description = "Allocates customer order lines to batches of stock (the service of \
            \"Architecture Patterns with Python\"). Every error is JSON `{\"message\"}`."
    ),
    components(schemas(ErrorBody, Identifier, Units)),
    modifiers(&BearerToken),
    tags(
        (name = "book", description = "The routes of the book, unchanged for its clients"),
        (name = "allocation", description = "Further commands and queries"),
        (name = "stock", description = "The stock ledger: movements and adjustments"),
        (name = "operations", description = "Probes and documents for operators"),
    )
)]
pub struct ApiDoc;

/// The optional token of the write routes (`--api-token`).
#[derive(Debug)]
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, document: &mut utoipa::openapi::OpenApi) {
        let components = document.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some(
            "Required on POST routes when the service runs with --api-token \
             (ALLOCATION_API_TOKEN); off by default."
                .into(),
        );
        components.add_security_scheme("api_token", SecurityScheme::Http(scheme));
    }
}

/// A handler served at the path and methods its `#[utoipa::path]` names,
/// with that description for the document: what `utoipa_axum::routes!`
/// does, for handlers that are generic over the store (which the macro
/// cannot name). Schemas are listed by each resource module.
pub fn documented<P, H, T, S>(handler: H) -> UtoipaMethodRouter<S>
where
    P: utoipa::Path,
    H: Handler<T, S>,
    T: 'static,
    S: Clone + Send + Sync + 'static,
{
    let methods = P::methods();
    let method_router = methods.iter().fold(MethodRouter::new(), |router, method| {
        router.on(method.to_method_filter(), handler.clone())
    });
    let mut paths = Paths::new();
    paths.add_path_operation(P::path(), methods, P::operation());
    (Vec::new(), paths, method_router)
}

/// What every write route may answer besides its own outcomes: a refused
/// token or body, and a database that is busy or away. The 400 is not
/// here: its meaning differs by route ([`InvalidBody`], [`UnknownSku`]).
#[derive(Debug)]
pub struct WriteRefusals;

impl IntoResponses for WriteRefusals {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let too_large = format!("Body over {} KiB", MAX_BODY_BYTES / 1024);
        refusals(&[
            (
                StatusCode::UNAUTHORIZED,
                "Missing or wrong bearer token (only with --api-token)",
            ),
            (StatusCode::PAYLOAD_TOO_LARGE, &too_large),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "Not `application/json`"),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "The `Idempotency-Key` was sent before with another route or body",
            ),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "Concurrent changes kept conflicting, the database is unavailable, \
                 or the request timed out; try again",
            ),
        ])
    }
}

/// The 400 of a write route whose values are checked only for their shape.
#[derive(Debug)]
pub struct InvalidBody;

impl IntoResponses for InvalidBody {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        refusals(&[(StatusCode::BAD_REQUEST, INVALID_BODY)])
    }
}

/// The 400 of a write route on an existing product: a well-formed SKU that
/// no batch holds is refused as invalid, as in the book (docs/contract.md),
/// so a request valid by its schema alone may still be answered 400.
#[derive(Debug)]
pub struct UnknownSku;

impl IntoResponses for UnknownSku {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let description = format!(
            "{INVALID_BODY}; or `Invalid sku <sku>`: no batch of this SKU was ever added \
             (the book's answer)"
        );
        refusals(&[(StatusCode::BAD_REQUEST, &description)])
    }
}

const INVALID_BODY: &str =
    "Invalid body: not JSON of the documented shape, or a value outside its limits";

/// What every query of the read model may answer besides its own outcomes.
#[derive(Debug)]
pub struct ReadRefusals;

impl IntoResponses for ReadRefusals {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        refusals(&[
            (
                StatusCode::BAD_REQUEST,
                "Invalid identifier in the path: empty, too long, or with a control character",
            ),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "The database is unavailable, or the request timed out; try again",
            ),
        ])
    }
}

/// Error answers, each with the JSON `{"message"}` body every error has.
fn refusals(rows: &[(StatusCode, &str)]) -> BTreeMap<String, RefOr<Response>> {
    rows.iter()
        .map(|&(status, description)| {
            let body = Content::new(Some(Ref::from_schema_name(ErrorBody::name())));
            let response = ResponseBuilder::new()
                .description(description)
                .content("application/json", body)
                .build();
            (status.as_str().to_owned(), response.into())
        })
        .collect()
}

/// Adds the optional `Idempotency-Key` header to every `POST` of `document`
/// (see `idempotency`): written once here rather than on each operation.
pub fn declare_idempotency_keys(document: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::Required;
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::schema::{ObjectBuilder, Type};

    let header = ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "1 to 255 printable characters. A repeat with the same key, route and body \
             gets the first answer (status and body, with `Idempotent-Replayed: true`) \
             for at least 24 hours, without running again; one sent while the first \
             runs waits for it.",
        ))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(255)),
        ))
        .build();
    for item in document.paths.paths.values_mut() {
        if let Some(post) = item.post.as_mut() {
            post.parameters
                .get_or_insert_with(Vec::new)
                .push(header.clone());
        }
    }
}
