//! The fuzz targets' checks (`fuzz/src/`), run by the ordinary stable
//! `cargo test`: over the seed inputs committed in `fuzz/seeds/`, and over
//! generated HTTP requests and Redis messages shaped like what clients send,
//! right and wrong.

use std::fmt;
use std::path::PathBuf;

use adapters::messages::{ALLOCATE, CHANGE_BATCH_QUANTITY, LINE_ALLOCATED};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value, json};

#[path = "../../../../fuzz/src/http_request.rs"]
mod http_request;
#[path = "../../../../fuzz/src/redis_message.rs"]
mod redis_message;

/// The committed seed inputs of a fuzz target, with their file names.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let directory = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
    let entries = std::fs::read_dir(directory.join(target))
        .unwrap_or_else(|error| panic!("cannot list the seeds of {target}: {error}"));
    let mut seeds: Vec<_> = entries
        .map(|entry| {
            let path = entry.expect("a directory entry").path();
            let input = std::fs::read(&path).expect("a readable seed");
            (path.display().to_string(), input)
        })
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 10, "too few seeds for {target}: {seeds:?}");
    seeds
}

#[tokio::test]
async fn http_seeds_pass_the_fuzz_checks() {
    for (name, input) in seeds("http_request") {
        assert!(
            http_request::parse(&input).is_some(),
            "{name} is not a request the target would send"
        );
        // Shown with a failure: which seed it was.
        eprintln!("seed {name}");
        http_request::check(&input).await;
    }
}

#[test]
fn redis_seeds_pass_the_fuzz_checks() {
    for (name, input) in seeds("redis_message") {
        // Shown with a failure: which seed it was.
        eprintln!("seed {name}");
        redis_message::check(&input);
    }
}

#[test]
fn generated_http_requests_pass_the_fuzz_checks() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    run(http_input(), |input| {
        runtime.block_on(http_request::check(input));
    });
}

#[test]
fn generated_redis_messages_pass_the_fuzz_checks() {
    run(redis_input(), redis_message::check);
}

/// A fuzz input, shown as text when a case fails.
#[derive(Clone)]
struct Input(Vec<u8>);

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// Runs `check` over generated inputs; a panic fails the test with the
/// smallest input proptest shrinks it to.
fn run(inputs: impl Strategy<Value = Input>, check: impl Fn(&[u8])) {
    let config = Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    };
    let outcome = TestRunner::new(config).run(&inputs, |Input(input)| {
        check(&input);
        Ok(())
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}

fn http_input() -> impl Strategy<Value = Input> {
    let content_types = prop_oneof![
        4 => Just("application/json"),
        1 => select(vec![
            "application/json; charset=utf-8",
            "application/problem+json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "",
        ]),
    ];
    (request_line(), content_types).prop_flat_map(|((method, target), content_type)| {
        body(fields_read_by(&target))
            .prop_map(move |body| Input(http_request::join(method, &target, content_type, &body)))
    })
}

fn redis_input() -> impl Strategy<Value = Input> {
    let channels = select(vec![ALLOCATE, CHANGE_BATCH_QUANTITY, LINE_ALLOCATED, ""]);
    channels.prop_flat_map(|channel| {
        body(fields_read_by(channel))
            .prop_map(move |payload| Input(redis_message::join(channel, &payload)))
    })
}

/// The fields a route or channel reads.
fn fields_read_by(route: &str) -> &'static [&'static str] {
    match route.trim_start_matches('/') {
        "add_batch" => &["ref", "sku", "qty", "eta"],
        "allocate" => &["orderid", "sku", "qty"],
        "deallocate" => &["orderid", "sku"],
        "change_batch_quantity" => &["batchref", "qty"],
        _ => &[],
    }
}

/// A route with the method it answers, usually, and sometimes another;
/// identifiers in paths percent-encoded as a client would; some paths that
/// match no route.
fn request_line() -> impl Strategy<Value = (&'static str, String)> {
    let writes = select(vec![
        "/add_batch",
        "/allocate",
        "/deallocate",
        "/change_batch_quantity",
    ])
    .prop_map(|path| ("POST", path.to_owned()));
    let reads = prop_oneof![
        select(vec!["/healthz", "/readyz"]).prop_map(str::to_owned),
        identifier("orderid").prop_map(|id| format!("/allocations/{}", percent_encoded(&id))),
        identifier("sku").prop_map(|id| format!("/products/{}/batches", percent_encoded(&id))),
    ]
    .prop_map(|path| ("GET", path));
    let nowhere =
        vec(any::<u8>(), 0..16).prop_map(|bytes| ("GET", format!("/{}", percent_encoded(&bytes))));
    let methods = select(vec![
        "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS",
    ]);
    let routes = prop_oneof![6 => writes, 3 => reads, 1 => nowhere];
    (routes, proptest::option::weighted(0.2, methods))
        .prop_map(|((method, path), other)| (other.unwrap_or(method), path))
}

fn percent_encoded(raw: impl AsRef<[u8]>) -> String {
    raw.as_ref()
        .iter()
        .map(|&byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// A JSON object with the `expected` fields, each usually there and of the
/// right type, and an unexpected one or two; then often damaged.
fn body(expected: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    let expected: Vec<_> = expected
        .iter()
        .map(|&name| proptest::option::weighted(0.95, field(name)))
        .collect();
    let any_name = select(vec![
        "ref",
        "sku",
        "qty",
        "eta",
        "orderid",
        "batchref",
        "message_id",
    ]);
    let extra = vec(any_name.prop_flat_map(field), 0..2);
    (expected, extra, damage()).prop_map(|(expected, extra, damage)| {
        let fields = expected.into_iter().flatten().chain(extra);
        let object = Value::Object(Map::from_iter(fields));
        damage.apply(object.to_string().into_bytes())
    })
}

fn field(name: &'static str) -> impl Strategy<Value = (String, Value)> {
    field_value(name).prop_map(move |value| (name.to_owned(), value))
}

fn field_value(name: &str) -> BoxedStrategy<Value> {
    let right_type = match name {
        "qty" => quantity().boxed(),
        "eta" => eta().boxed(),
        _ => identifier(name).prop_map(Value::from).boxed(),
    };
    prop_oneof![12 => right_type, 1 => any_json()].boxed()
}

/// Identifiers as clients get them right and wrong: mostly the seeded
/// ones of the field (so that commands find something to act on) or new
/// ordinary ones; sometimes empty, over-long, or any Unicode including
/// control characters.
fn identifier(field: &str) -> impl Strategy<Value = String> + use<> {
    let seeded = match field {
        "sku" => vec![http_request::SKU],
        "orderid" => vec![http_request::ORDER],
        _ => vec![http_request::STOCK, http_request::SHIPMENT],
    };
    prop_oneof![
        6 => select(seeded).prop_map(str::to_owned),
        4 => "[a-z0-9-]{1,12}",
        1 => Just(String::new()),
        1 => (255..=257usize).prop_map(|len| "x".repeat(len)),
        2 => vec(any::<char>(), 0..40).prop_map(String::from_iter),
    ]
}

/// Quantities: in range (some written as floats, `3.0`), zero, negative,
/// huge, fractional, as text.
fn quantity() -> impl Strategy<Value = Value> {
    prop_oneof![
        12 => (1..=40i64).prop_map(Value::from),
        2 => (1..=40u32).prop_map(|units| Value::from(f64::from(units))),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(Value::from),
        1 => Just(json!("3")),
    ]
}

/// Dates: none, ordinary, impossible, far away, not dates at all.
fn eta() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => Just(Value::Null),
        4 => (2000..2100i32, 1..=12u32, 1..=28u32)
            .prop_map(|(y, m, d)| json!(format!("{y}-{m:02}-{d:02}"))),
        2 => (any::<i32>(), 0..=13u32, 0..=32u32)
            .prop_map(|(y, m, d)| json!(format!("{y:04}-{m:02}-{d:02}"))),
        1 => select(vec!["+262142-12-31", "-262143-01-01", "2026-02-29", "tomorrow", ""])
            .prop_map(Value::from),
    ]
}

/// Any JSON value, for fields of the wrong type.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec(("[a-z]{1,4}", inner), 0..4)
                .prop_map(|fields| Value::Object(Map::from_iter(fields))),
        ]
    })
}

/// What a careless sender or a bad network does to a payload.
#[derive(Debug, Clone)]
enum Damage {
    None,
    Truncate(Index),
    Overwrite(Index, u8),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        8 => Just(Damage::None),
        1 => any::<Index>().prop_map(Damage::Truncate),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Damage::Overwrite(at, byte)),
    ]
}

impl Damage {
    fn apply(self, mut bytes: Vec<u8>) -> Vec<u8> {
        match self {
            Self::None => {}
            Self::Truncate(at) => bytes.truncate(at.index(bytes.len())),
            Self::Overwrite(at, byte) => {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
        }
        bytes
    }
}
