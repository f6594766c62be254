//! Every lookup a request makes is an index lookup, so that its cost does not
//! grow with the tables: the read model's two queries (`GET /allocations/<id>`
//! and `GET /products/<sku>/batches`), the reads of a command, and a relay's
//! claim of its destination's outbox messages.
//!
//! The queries are the adapter's own (`adapters::sql::queries`), so a change
//! there is checked here.

use std::time::Instant;

use adapters::sql::queries;
use serde_json::Value;
use sqlx::query::Query;
use sqlx::{Connection, Database, Encode, Row, Type};
use test_support::TestDatabase;

use crate::backends::open;

/// One query a request runs, the values it is run with, and the indexes its
/// plan must use on each backend.
struct Lookup {
    what: &'static str,
    sql: Sql,
    params: &'static [Param],
    postgres_indexes: &'static [&'static str],
    sqlite_indexes: &'static [&'static str],
}

/// A bound value: text, or a time in unix milliseconds.
enum Param {
    Text(&'static str),
    Millis(i64),
}
use Param::{Millis, Text};

/// The time the lookups ask at: after the expired holds `fill_postgres`
/// makes, before the live ones.
const NOW: Param = Millis(2_000_000_000_000);

/// The query text: the same on both backends, or one for each.
enum Sql {
    Both(&'static str),
    Each {
        sqlite: &'static str,
        postgres: &'static str,
    },
}

impl Sql {
    fn sqlite(&self) -> &'static str {
        match self {
            Self::Both(sql) | Self::Each { sqlite: sql, .. } => sql,
        }
    }

    fn postgres(&self) -> &'static str {
        match self {
            Self::Both(sql) | Self::Each { postgres: sql, .. } => sql,
        }
    }
}

/// The values name rows that `fill_postgres` creates.
const LOOKUPS: &[Lookup] = &[
    Lookup {
        what: "an order's allocations (read model, GET /allocations/<orderid>)",
        sql: Sql::Both(queries::ALLOCATIONS_OF_ORDER),
        params: &[Text("order-4242")],
        postgres_indexes: &["allocations_view_pkey"],
        sqlite_indexes: &["sqlite_autoindex_allocations_view_1"],
    },
    Lookup {
        what: "an order's lines (GET /orders/<orderid>)",
        sql: Sql::Both(queries::LINES_OF_ORDER),
        params: &[Text("order-4242")],
        postgres_indexes: &["allocations_orderid_sku_batch_id_key", "batches_pkey"],
        sqlite_indexes: &["sqlite_autoindex_allocations_1"],
    },
    Lookup {
        what: "a product's batches (read model, GET /products/<sku>/batches)",
        sql: Sql::Both(queries::BATCHES_OF_PRODUCT),
        params: &[Text("sku-4243"), NOW],
        postgres_indexes: &["batches_sku_id", "hold_parts_active"],
        sqlite_indexes: &["batches_sku_id", "hold_parts_active"],
    },
    Lookup {
        what: "a product with its batches and one order's line (every command)",
        sql: Sql::Both(queries::PRODUCT_WITH_ORDER_LINE),
        params: &[Text("sku-4243"), Text("order-4242"), NOW],
        postgres_indexes: &[
            "products_pkey",
            "product_settings_pkey",
            "stock_levels_pkey",
            "backorders_waiting",
            "batches_sku_id",
            "allocations_orderid_sku_batch_id_key",
            "hold_parts_active",
        ],
        sqlite_indexes: &[
            "sqlite_autoindex_products_1",
            "sqlite_autoindex_product_settings_1",
            "sqlite_autoindex_stock_levels_1",
            "backorders_waiting",
            "batches_sku_id",
            "sqlite_autoindex_allocations_1",
            "hold_parts_active",
        ],
    },
    Lookup {
        what: "a product with its batches and several orders' lines (a group of allocations)",
        sql: Sql::Each {
            sqlite: queries::PRODUCT_WITH_ORDER_LINES_SQLITE,
            postgres: queries::PRODUCT_WITH_ORDER_LINES_POSTGRES,
        },
        params: &[
            Text("sku-4243"),
            Text(r#"["order-4242", "order-4243"]"#),
            NOW,
        ],
        postgres_indexes: &[
            "products_pkey",
            "batches_sku_id",
            "allocations_orderid_sku_batch_id_key",
        ],
        sqlite_indexes: &[
            "sqlite_autoindex_products_1",
            "batches_sku_id",
            "sqlite_autoindex_allocations_1",
        ],
    },
    Lookup {
        what: "a product's waiting backorders (every command, when some wait)",
        sql: Sql::Both(queries::WAITING_BACKORDERS),
        params: &[Text("sku-4243")],
        postgres_indexes: &["backorders_waiting"],
        sqlite_indexes: &["backorders_waiting"],
    },
    Lookup {
        what: "an order's backordered lines (GET /orders/<orderid>)",
        sql: Sql::Both(queries::BACKORDERS_OF_ORDER),
        params: &[Text("order-4242")],
        postgres_indexes: &["backorders_of_order"],
        sqlite_indexes: &["backorders_of_order"],
    },
    Lookup {
        what: "a product's settings (GET /products/<sku>/settings)",
        sql: Sql::Both(queries::SETTINGS_OF_PRODUCT),
        params: &[Text("sku-4243")],
        postgres_indexes: &["products_pkey", "product_settings_pkey"],
        sqlite_indexes: &[
            "sqlite_autoindex_products_1",
            "sqlite_autoindex_product_settings_1",
        ],
    },
    Lookup {
        what: "a product's backordered units (GET /products/<sku>/availability)",
        sql: Sql::Both(queries::BACKORDERED_OF_PRODUCT),
        params: &[Text("sku-4243")],
        postgres_indexes: &["backorders_waiting"],
        sqlite_indexes: &["backorders_waiting"],
    },
    Lookup {
        what: "a batch's lines and their other parts (ChangeBatchQuantity)",
        sql: Sql::Both(queries::LINES_OF_BATCH),
        params: &[Text("batch-4242"), Text("sku-4243")],
        postgres_indexes: &[
            "batches_reference_key",
            "allocations_batch_id_id",
            "allocations_orderid_sku_batch_id_key",
        ],
        sqlite_indexes: &[
            "sqlite_autoindex_batches_1",
            "allocations_batch_id_id",
            "sqlite_autoindex_allocations_1",
        ],
    },
    Lookup {
        what: "whether a stream entry was handled (its redelivery)",
        sql: Sql::Both(queries::DELIVERY),
        params: &[Text("allocate/1-0")],
        postgres_indexes: &["deliveries_pkey"],
        sqlite_indexes: &["sqlite_autoindex_deliveries_1"],
    },
    Lookup {
        what: "the product that holds a batch (ChangeBatchQuantity)",
        sql: Sql::Both(queries::SKU_OF_BATCH),
        params: &[Text("batch-4242")],
        postgres_indexes: &["batches_reference_key"],
        sqlite_indexes: &["sqlite_autoindex_batches_1"],
    },
    Lookup {
        what: "a batch's live holds (ChangeBatchQuantity)",
        sql: Sql::Both(queries::LIVE_HOLDS_OF_BATCH),
        params: &[Text("batch-4243"), Text("sku-4244"), NOW],
        postgres_indexes: &["batches_reference_key", "hold_parts_active"],
        sqlite_indexes: &["sqlite_autoindex_batches_1", "hold_parts_active"],
    },
    Lookup {
        what: "a hold's parts of one product (extend, release, convert)",
        sql: Sql::Both(queries::PARTS_OF_HOLD),
        params: &[Text("hold-4243"), Text("sku-4244")],
        postgres_indexes: &["hold_parts_hold_id_sku_batch_id_key", "batches_pkey"],
        sqlite_indexes: &["sqlite_autoindex_hold_parts_1"],
    },
    Lookup {
        what: "the products a hold is on",
        sql: Sql::Both(queries::SKUS_OF_HOLD),
        params: &[Text("hold-4243")],
        postgres_indexes: &["hold_parts_hold_id_sku_batch_id_key"],
        sqlite_indexes: &["sqlite_autoindex_hold_parts_1"],
    },
    Lookup {
        what: "a hold (GET /holds/<hold_id>)",
        sql: Sql::Both(queries::HOLD),
        params: &[Text("hold-4243")],
        postgres_indexes: &["hold_parts_hold_id_sku_batch_id_key", "batches_pkey"],
        sqlite_indexes: &["sqlite_autoindex_hold_parts_1"],
    },
    Lookup {
        what: "a relay's claim of its destination's oldest outbox messages",
        sql: Sql::Each {
            sqlite: queries::CLAIM_OUTBOX_SQLITE,
            postgres: queries::CLAIM_OUTBOX_POSTGRES,
        },
        params: &[
            Millis(2_000_000_030_000),
            NOW,
            Millis(100),
            Text("notifications"),
        ],
        postgres_indexes: &["outbox_destination_id"],
        sqlite_indexes: &["outbox_destination_id"],
    },
];

/// `sql` (the lookup's query behind some EXPLAIN) with the lookup's values
/// bound, as the adapter binds them.
fn with_params<DB>(sql: String, lookup: &Lookup) -> Query<'static, DB, DB::Arguments>
where
    DB: Database,
    &'static str: Encode<'static, DB> + Type<DB>,
    i64: Encode<'static, DB> + Type<DB>,
{
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for param in lookup.params {
        query = match *param {
            Text(text) => query.bind(text),
            Millis(millis) => query.bind(millis),
        };
    }
    query
}

/// SQLite plans without statistics, so an empty database shows the plan
/// it will use: each lookup searches an index, none scans a table, and
/// none sorts (`USE TEMP B-TREE`) what an index already orders.
#[tokio::test]
async fn sqlite_lookups_use_indexes() {
    let db = TestDatabase::sqlite();
    drop(open(db.url()).await); // creates the schema
    let mut conn = sqlx::SqliteConnection::connect(db.url())
        .await
        .expect("open directly");
    for lookup in LOOKUPS {
        let sql = format!("EXPLAIN QUERY PLAN {}", lookup.sql.sqlite());
        let rows = with_params(sql.clone(), lookup)
            .fetch_all(&mut conn)
            .await
            .expect("explain");
        let details: Vec<String> = rows.iter().map(|row| row.get("detail")).collect();
        for index in lookup.sqlite_indexes {
            assert!(
                details.iter().any(|d| d.contains(index)),
                "{}: expected {index} in the plan: {details:?}",
                lookup.what
            );
        }
        // Reading the bound list of order ids (`json_each`) is no table scan.
        let table_scan = |d: &String| d.starts_with("SCAN ") && !d.starts_with("SCAN json_each");
        assert!(
            !details
                .iter()
                .any(|d| table_scan(d) || d.contains("TEMP B-TREE")),
            "{}: no table scan and no sort: {details:?}",
            lookup.what
        );
    }
}

/// PostgreSQL plans from statistics, so the tables are filled first (see
/// `fill_postgres`) and analysed; then each
/// lookup is run with `EXPLAIN ANALYZE`: its plan must use the expected
/// indexes and have no `Seq Scan`. Prints each plan's execution time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lookups_use_indexes_on_large_tables() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    let mut conn = migrated_postgres(&db).await;
    let started = Instant::now();
    fill_postgres(&mut conn).await;
    println!("filled and analysed in {:?}", started.elapsed());

    for lookup in LOOKUPS {
        let (explained, nodes) = explain_postgres(&mut conn, lookup).await;
        let shown: Vec<String> = nodes
            .iter()
            .map(|(node, index)| match index {
                Some(index) => format!("{node} on {index}"),
                None => node.clone(),
            })
            .collect();
        for index in lookup.postgres_indexes {
            assert!(
                nodes
                    .iter()
                    .any(|(node, used)| node.contains("Index") && used.as_deref() == Some(*index)),
                "{}: expected an index scan on {index}: {shown:?}",
                lookup.what
            );
        }
        assert!(
            !nodes.iter().any(|(node, _)| node == "Seq Scan"),
            "{}: no sequential scan: {shown:?}",
            lookup.what
        );
        let time = explained[0]["Execution Time"]
            .as_f64()
            .expect("EXPLAIN ANALYZE reports the execution time");
        println!("{}: {time:.3} ms, {}", lookup.what, shown.join(" > "));
    }
}

/// 200 000 rows in the read model, and 10 000 products of 10 batches each
/// with one allocation per batch, and 10 backorders each: generated by the server in about two
/// seconds (the foreign key checks of batches and allocations are most of
/// it, hence 100 000 of those rather than 200 000).
async fn fill_postgres(conn: &mut sqlx::PgConnection) {
    let statements = [
        "INSERT INTO products (sku, version_number) \
         SELECT 'sku-' || g, 1 FROM generate_series(1, 10000) g",
        "INSERT INTO batches (reference, sku, quantity_in) \
         SELECT 'batch-' || g, 'sku-' || (g % 10000 + 1), 100 FROM generate_series(1, 100000) g",
        "INSERT INTO allocations (orderid, sku, batch_id, qty) \
         SELECT 'order-' || substr(reference, 7), sku, id, 1 FROM batches",
        "INSERT INTO allocations_view (orderid, sku, batchref) \
         SELECT 'order-' || g, 'sku-' || (g % 10000 + 1), 'batch-' || g \
         FROM generate_series(1, 200000) g",
        // A hold part per batch: half expired long ago, a fifth released.
        "INSERT INTO hold_parts (hold_id, sku, batch_id, qty, expires_at, state) \
         SELECT 'hold-' || id, sku, id, 1, \
         CASE WHEN id % 2 = 0 THEN 1000 ELSE 4000000000000 END, \
         CASE WHEN id % 5 = 0 THEN 'released' ELSE 'active' END FROM batches",
        // Settings for every product, and ten backorders each: one
        // waiting, the others' orders cancelled long ago.
        "INSERT INTO product_settings (sku, backorder_limit, low_stock_threshold) \
         SELECT sku, 100, 5 FROM products",
        "INSERT INTO stock_levels (sku, level) SELECT sku, 'low' FROM products",
        "INSERT INTO backorders (sku, orderid, qty, number, state) \
         SELECT 'sku-' || (g % 10000 + 1), 'order-' || g, 1, g, \
         CASE WHEN g % 10 = 0 THEN 'waiting' ELSE 'cancelled' END \
         FROM generate_series(1, 100000) g",
        // An outbox of 100 000 messages for Redis (SMTP down for a while
        // would make it emails; the claim is the same) and 50 emails.
        "INSERT INTO outbox (message_id, channel, destination, sku, created_at) \
         SELECT 'message-' || g, \
         CASE WHEN g % 2000 = 0 THEN 'out_of_stock' ELSE 'stock_exhausted' END, \
         CASE WHEN g % 2000 = 0 THEN 'notifications' ELSE 'messages' END, \
         'sku-' || (g % 10000 + 1), g FROM generate_series(1, 100000) g",
        // A day of stream entries handled.
        "INSERT INTO deliveries (delivery, recorded_at) \
         SELECT 'allocate/' || g || '-0', g FROM generate_series(1, 100000) g",
        "ANALYZE",
    ];
    for statement in statements {
        sqlx::raw_sql(statement)
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM allocations_view")
        .fetch_one(&mut *conn)
        .await
        .expect("count");
    assert_eq!(rows, 200_000);
}

/// A native connection to `db`, once the store has created its schema.
async fn migrated_postgres(db: &TestDatabase) -> sqlx::PgConnection {
    drop(open(db.url()).await);
    sqlx::PgConnection::connect(db.url())
        .await
        .expect("open directly")
}

/// Runs `lookup` on PostgreSQL under `EXPLAIN (ANALYZE, FORMAT JSON)`:
/// the whole plan, and its nodes (see [`plan_nodes`]).
async fn explain_postgres(
    conn: &mut sqlx::PgConnection,
    lookup: &Lookup,
) -> (Value, Vec<(String, Option<String>)>) {
    let sql = format!("EXPLAIN (ANALYZE, FORMAT JSON) {}", lookup.sql.postgres());
    let row = with_params(sql, lookup)
        .fetch_one(conn)
        .await
        .expect("explain");
    // The column is `json`, which sqlx decodes only with its `json`
    // feature; its wire format is the JSON text itself.
    let text: String = row.try_get_unchecked(0).expect("the plan as text");
    let explained: Value = serde_json::from_str(&text).expect("the plan is JSON");
    let mut nodes = Vec::new();
    plan_nodes(&explained[0]["Plan"], &mut nodes);
    (explained, nodes)
}

/// Every node of a JSON plan, depth first: its type and the index it uses.
fn plan_nodes(plan: &Value, out: &mut Vec<(String, Option<String>)>) {
    let node = plan["Node Type"].as_str().unwrap_or("?").to_owned();
    let index = plan["Index Name"].as_str().map(str::to_owned);
    out.push((node, index));
    for child in plan["Plans"].as_array().into_iter().flatten() {
        plan_nodes(child, out);
    }
}

/// Between two vacuums the relay's deletes leave the outbox's index full of
/// entries of dead rows, while the statistics say the table is small: the
/// planner would then read the index with a bitmap scan, which reads every
/// dead entry and heap page at every claim. Planned as the adapter plans
/// it (`queries::BEGIN_CLAIM_POSTGRES`), the claim is an index
/// scan, which marks the dead entries once and stops at its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claims_from_a_churned_outbox_with_an_index_scan() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    let mut conn = migrated_postgres(&db).await;
    let churn = [
        "ALTER TABLE outbox SET (autovacuum_enabled = false)",
        "INSERT INTO outbox (message_id, channel, destination, sku, created_at) \
         SELECT 'sent-' || g, 'stock_exhausted', 'messages', 'sku-1', g \
         FROM generate_series(1, 20000) g",
        "DELETE FROM outbox",
        "INSERT INTO outbox (message_id, channel, destination, sku, created_at) \
         SELECT 'waiting-' || g, 'stock_exhausted', 'messages', 'sku-1', g \
         FROM generate_series(1, 10) g",
        "ANALYZE outbox",
    ];
    for statement in churn {
        sqlx::raw_sql(statement)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let claim = Lookup {
        what: "a claim from a churned outbox",
        sql: Sql::Both(queries::CLAIM_OUTBOX_POSTGRES),
        params: &[
            Millis(2_000_000_030_000),
            NOW,
            Millis(100),
            Text("messages"),
        ],
        postgres_indexes: &[],
        sqlite_indexes: &[],
    };
    let mut transaction = conn
        .begin_with(queries::BEGIN_CLAIM_POSTGRES)
        .await
        .expect("the claim's transaction");
    let (explained, nodes) = explain_postgres(&mut transaction, &claim).await;
    // Either index gives the rows in `id` order; which one the planner
    // takes depends on how many rows of each destination it expects.
    assert!(
        nodes.iter().any(|(node, index)| node == "Index Scan"
            && matches!(
                index.as_deref(),
                Some("outbox_destination_id" | "outbox_pkey")
            )),
        "an index scan in id order: {nodes:?}"
    );
    assert!(
        !nodes
            .iter()
            .any(|(node, _)| node.starts_with("Bitmap") || node == "Seq Scan"),
        "no bitmap and no sequential scan: {nodes:?}"
    );
    assert_eq!(
        explained[0]["Plan"]["Actual Rows"], 10,
        "claims the 10 waiting"
    );
}
