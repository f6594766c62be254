//! The OpenAPI document's frame: title, tags, schemas and the bearer-token
//! security scheme. The paths come from the routes themselves (see
//! [`super::documented_routes`]).

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::*;

/// The API's description; `GET /openapi.json` serves it with the paths added.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "allocation",
        description = "Allocates customer order lines to batches of stock (the service of \
            \"Architecture Patterns with Python\"). Every error is JSON `{\"message\"}`."
    ),
    components(schemas(
        AddBatchRequest,
        BatchCreatedResponse,
        AllocateRequest,
        AllocateResponse,
        AllocationResponse,
        DeallocateRequest,
        DeallocatedResponse,
        ChangeBatchQuantityRequest,
        BatchQuantityResponse,
        BatchResponse,
        ProductResponse,
        StatusResponse,
        ErrorBody,
    )),
    modifiers(&BearerToken),
    tags(
        (name = "book", description = "The routes of the book, unchanged for its clients"),
        (name = "allocation", description = "Further commands and queries"),
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
