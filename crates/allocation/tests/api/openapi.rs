//! The OpenAPI document at `GET /openapi.json`: well-formed, complete, and
//! true to the router (every documented operation is served; the router has
//! no route the document leaves out).

use std::collections::BTreeSet;

use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::helpers::in_process_app;

/// Every route the service serves, as `METHOD path`.
const ROUTES: &[&str] = &[
    "POST /add_batch",
    "POST /allocate",
    "GET /allocations/{orderid}",
    "POST /deallocate",
    "POST /change_batch_quantity",
    "POST /orders/{orderid}/allocate",
    "GET /orders/{orderid}",
    "POST /orders/{orderid}/ship",
    "POST /orders/{orderid}/cancel",
    "POST /holds",
    "GET /holds/{hold_id}",
    "POST /holds/{hold_id}/extend",
    "DELETE /holds/{hold_id}",
    "GET /products/{sku}/batches",
    "GET /products/{sku}/availability",
    "GET /products/{sku}/settings",
    "PUT /products/{sku}/settings",
    "GET /batches/{ref}/movements",
    "POST /batches/{ref}/adjust",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /openapi.json",
];

async fn document() -> Value {
    let (app, _) = in_process_app();
    let response = app
        .oneshot(
            Request::get("/openapi.json")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    serde_json::from_slice(&bytes).expect("the document is JSON")
}

fn operations(document: &Value) -> BTreeSet<String> {
    let paths = document["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().expect("a path item").keys();
            methods.map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect()
}

#[tokio::test]
async fn the_document_lists_every_route_with_its_method() {
    let document = document().await;
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3."))
    );
    assert_eq!(document["info"]["title"], "allocation");
    let expected: BTreeSet<String> = ROUTES.iter().map(|r| r.to_string()).collect();
    assert_eq!(operations(&document), expected);
}

#[tokio::test]
async fn every_documented_operation_is_served() {
    let document = document().await;
    let (app, _) = in_process_app();
    for operation in operations(&document) {
        let (method, path) = operation.split_once(' ').expect("METHOD path");
        let path = path
            .replace("{orderid}", "some-order")
            .replace("{sku}", "SOME-SKU");
        let request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("method"))
            .uri(&path)
            .body(Body::empty())
            .expect("request");
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let body = String::from_utf8_lossy(&bytes);
        // The fallbacks answer these; a routed request gets anything else
        // (an empty body is a 415 or 400 from the handler's extractor).
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{operation}: {body}"
        );
        assert!(!body.contains("No such route"), "{operation} is not served");
    }
}

#[tokio::test]
async fn an_undocumented_path_is_not_served() {
    let (app, _) = in_process_app();
    let response = app
        .oneshot(Request::get("/admin").body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bodies_errors_and_references_are_described() {
    let document = document().await;
    let post = &document["paths"]["/allocate"]["post"];
    assert_eq!(
        post["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/AllocateRequest"
    );
    for status in ["202", "400", "401", "409", "413", "415", "503"] {
        assert!(post["responses"][status].is_object(), "/allocate {status}");
    }
    // The token is optional: `{}` (none) or the bearer token.
    assert_eq!(
        post["security"],
        serde_json::json!([{}, { "api_token": [] }])
    );
    let scheme = &document["components"]["securitySchemes"]["api_token"];
    assert_eq!(
        (&scheme["type"], &scheme["scheme"]),
        (&"http".into(), &"bearer".into())
    );
    let get = &document["paths"]["/allocations/{orderid}"]["get"];
    assert!(get["security"].is_null(), "reads are open: {get}");
    let error = &post["responses"]["400"]["content"]["application/json"]["schema"]["$ref"];
    assert_eq!(error, "#/components/schemas/ErrorBody");
    let add_batch = &document["components"]["schemas"]["AddBatchRequest"];
    let required: BTreeSet<&str> = add_batch["required"]
        .as_array()
        .expect("required fields")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, BTreeSet::from(["ref", "sku", "qty"]));
    assert_eq!(
        document["paths"]["/allocations/{orderid}"]["get"]["parameters"][0]["name"],
        "orderid"
    );

    // Every reference points at a schema the document defines.
    let schemas = document["components"]["schemas"]
        .as_object()
        .expect("schemas");
    let mut references = Vec::new();
    collect_references(&document, &mut references);
    assert!(!references.is_empty());
    for reference in references {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected reference {reference}"));
        assert!(schemas.contains_key(name), "{reference} is not defined");
    }
}

fn collect_references(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("$ref") {
                into.push(reference.clone());
            }
            map.values().for_each(|v| collect_references(v, into));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_references(v, into)),
        _ => {}
    }
}

#[tokio::test]
async fn the_documented_bounds_are_the_domain_values() {
    let document = document().await;
    let schemas = &document["components"]["schemas"];
    let identifiers = [
        ("AddBatchRequest", "ref"),
        ("AddBatchRequest", "sku"),
        ("AllocateRequest", "orderid"),
        ("AllocateRequest", "sku"),
        ("DeallocateRequest", "orderid"),
        ("DeallocateRequest", "sku"),
        ("ChangeBatchQuantityRequest", "batchref"),
        ("RequestedLine", "sku"),
    ];
    for (schema, field) in identifiers {
        let property = resolved(&document, &schemas[schema]["properties"][field]);
        assert_identifier(property, &format!("{schema}.{field}"));
    }
    // A date as the service parses it, `YYYY-MM-DD`: not just any string.
    let eta = &schemas["AddBatchRequest"]["properties"]["eta"];
    assert_eq!(eta["format"], "date", "{eta}");
    assert_eq!(eta["pattern"], "^[0-9]{4}-[0-9]{2}-[0-9]{2}$", "{eta}");
    for (path, name) in [
        ("/allocations/{orderid}", "orderid"),
        ("/orders/{orderid}", "orderid"),
        ("/products/{sku}/batches", "sku"),
    ] {
        let parameter = &document["paths"][path]["get"]["parameters"][0];
        assert_eq!(parameter["name"], name);
        assert_identifier(resolved(&document, &parameter["schema"]), path);
    }
    for schema in [
        "AddBatchRequest",
        "AllocateRequest",
        "ChangeBatchQuantityRequest",
        "RequestedLine",
    ] {
        let qty = resolved(&document, &schemas[schema]["properties"]["qty"]);
        assert_eq!(qty["type"], "integer", "{schema}");
        assert_eq!(qty["minimum"], 1, "{schema}");
        assert_eq!(qty["maximum"], domain::Quantity::MAX, "{schema}");
    }
    // An order: 1 to 100 lines, whole unless split; this version takes no hold.
    let order = &schemas["OrderRequest"]["properties"];
    assert_eq!(order["lines"]["minItems"], 1, "{order}");
    assert_eq!(
        order["lines"]["maxItems"],
        domain::OrderLines::MAX,
        "{order}"
    );
    let split = resolved(&document, &order["split"]);
    assert_eq!(
        (&split["type"], &split["default"]),
        (&serde_json::json!("boolean"), &serde_json::json!(false)),
        "{split}"
    );
    // A hold to convert: an identifier, or null.
    let hold = order["hold_id"].to_string();
    assert!(
        hold.contains("Identifier") && hold.contains("null"),
        "{hold}"
    );
    // A hold's time to live: 1 second to a day, 15 minutes by default.
    for schema in ["HoldRequest", "ExtendRequest"] {
        let ttl = &schemas[schema]["properties"]["ttl_seconds"];
        assert_eq!(
            (&ttl["minimum"], &ttl["maximum"], &ttl["default"]),
            (&json!(1), &json!(86_400), &json!(900)),
            "{schema}: {ttl}"
        );
    }
}

/// The schema `schema` stands for: itself, or the component its `$ref` names.
fn resolved<'a>(document: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected reference {reference}"));
            &document["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// An identifier's schema states what `domain` accepts: 1 to 255
/// characters, none of them a control character.
fn assert_identifier(schema: &Value, what: &str) {
    assert_eq!(schema["type"], "string", "{what}: {schema}");
    assert_eq!(schema["minLength"], 1, "{what}: {schema}");
    assert_eq!(
        schema["maxLength"],
        domain::values::MAX_IDENTIFIER_LEN,
        "{what}: {schema}"
    );
    assert_eq!(
        schema["pattern"],
        domain::values::IDENTIFIER_PATTERN,
        "{what}: {schema}"
    );
}

/// Every refusal a route can answer is in the document, with the JSON
/// `{"message"}` body every error has; the statuses shared by all writes
/// and by all queries are on each of them.
#[tokio::test]
async fn every_operation_documents_its_refusals() {
    let document = document().await;
    let writes = [
        ("/add_batch", "409"),
        ("/allocate", "409"),
        ("/deallocate", "404"),
        ("/change_batch_quantity", "404"),
        ("/orders/{orderid}/allocate", "400"),
    ];
    for (path, own) in writes {
        let responses = &document["paths"][path]["post"]["responses"];
        for status in ["400", "401", "413", "415", "503", own] {
            assert_error_body(&responses[status], &format!("POST {path} {status}"));
        }
    }
    for (path, own) in [
        ("/allocations/{orderid}", "404"),
        ("/orders/{orderid}", "404"),
        ("/products/{sku}/batches", "404"),
    ] {
        let responses = &document["paths"][path]["get"]["responses"];
        for status in ["400", "503", own] {
            assert_error_body(&responses[status], &format!("GET {path} {status}"));
        }
    }
    assert_error_body(
        &document["paths"]["/readyz"]["get"]["responses"]["503"],
        "GET /readyz 503",
    );
    // An order refused whole says which lines are short, beside `message`.
    let refused = &document["paths"]["/orders/{orderid}/allocate"]["post"]["responses"]["409"];
    assert_eq!(
        refused["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ShortBody",
        "{refused}"
    );
    let short = &document["components"]["schemas"]["ShortBody"]["properties"];
    assert!(
        short["message"].is_object() && short["short"].is_object(),
        "{short}"
    );
}

fn assert_error_body(response: &Value, what: &str) {
    assert!(
        response["description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{what}: {response}"
    );
    assert_eq!(
        response["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody",
        "{what}: {response}"
    );
}

/// A SKU with no batches is refused with 400 `Invalid sku`, as in the book,
/// although the request is valid by its schema: the document says so where
/// that answer can come, and only there.
#[tokio::test]
async fn the_unknown_sku_answer_is_documented_where_it_is_given() {
    let document = document().await;
    let bad_request = |path: &str| {
        document["paths"][path]["post"]["responses"]["400"]["description"]
            .as_str()
            .unwrap_or_else(|| panic!("POST {path} documents no 400"))
            .to_owned()
    };
    for path in ["/allocate", "/deallocate", "/orders/{orderid}/allocate"] {
        assert!(bad_request(path).contains("Invalid sku"), "{path}");
    }
    for path in ["/add_batch", "/change_batch_quantity"] {
        assert!(!bad_request(path).contains("Invalid sku"), "{path}");
    }
}

/// Every `POST` takes an `Idempotency-Key` (docs/contract.md 6.4), and may
/// answer 422 when it was used with another route or body.
#[tokio::test]
async fn every_post_documents_the_idempotency_key() {
    let document = document().await;
    let paths = document["paths"].as_object().expect("paths");
    let mut posts = 0;
    for (path, item) in paths {
        let Some(post) = item.get("post") else {
            continue;
        };
        posts += 1;
        let header = post["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "Idempotency-Key");
        let header = header.unwrap_or_else(|| panic!("POST {path}: no Idempotency-Key"));
        assert_eq!(
            (&header["in"], &header["schema"]["maxLength"]),
            (&json!("header"), &json!(255)),
            "POST {path}"
        );
        assert!(
            post["responses"].get("422").is_some(),
            "POST {path}: no 422"
        );
    }
    let listed = ROUTES.iter().filter(|r| r.starts_with("POST ")).count();
    assert_eq!(posts, listed, "every POST route checked");
}
