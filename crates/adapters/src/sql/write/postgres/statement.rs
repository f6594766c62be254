//! A commit's PostgreSQL statements: their text, composed from the
//! writers' CTEs once per *shape* (see [`Shape`], `kept_texts`), and their parameters,
//! bound from the plan's rows for every commit.

use std::fmt::Write as _;
use std::sync::Arc;

use domain::Sku;
use service_layer::ports::StoreError;
use sqlx::{AnyConnection, AssertSqlSafe};

use super::{
    Column, STALE_OF_ALL, VALUES_UP_TO, VERSION_COLUMNS, VERSIONED_ALL, VERSIONED_ALREADY,
    VERSIONED_ONE, columns, writer,
};
use crate::sql::rows::{first_row_once_done, get, identifier, mismatch};
use crate::sql::write::kept_texts::KeptTexts;
use crate::sql::write::{Columns, Kind, Plan, Rows, Run, Table, Value};

/// One statement of a commit, with its parameters.
#[derive(Debug)]
pub(super) struct Statement<'p> {
    sql: Arc<str>,
    parameters: Vec<Parameter<'p>>,
    /// Whether it opens with the version check (the first statement).
    checks_versions: bool,
    /// The counted runs: their kind, and how many rows they must write.
    pub(super) counted: Vec<(Kind, usize)>,
}

/// A value bound to a statement: a column's, borrowed from the plan, or a
/// run's rows as one JSON array.
#[derive(Debug)]
enum Parameter<'p> {
    Column(Value<'p>),
    Json(String),
}

/// What the text of a commit's statements depends on, and all it depends
/// on: how many products it versions, whether it is one stored product,
/// and each run's kind and number of rows (`None` for a JSON array).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Shape {
    products: Option<usize>,
    one_stored_product: bool,
    runs: Vec<(Kind, Option<usize>)>,
}

impl Shape {
    fn of(plan: &Plan<'_>) -> Self {
        let rows = |count: usize| (count <= VALUES_UP_TO).then_some(count);
        Self {
            products: rows(plan.versions.len()),
            one_stored_product: plan.products.len() == 1 && plan.stored == 1,
            runs: plan
                .runs
                .iter()
                .map(|run| (run.kind, rows(run.rows.len())))
                .collect(),
        }
    }
}

/// The text of each shape's statements, in order.
static TEXTS: KeptTexts<Shape, Arc<[Arc<str>]>> = KeptTexts::new();

/// The commit's statements: its runs, in as few statements as the rule
/// allows (see the module `postgres`), each with its parameters.
pub(super) fn compose<'p>(plan: &'p Plan<'_>) -> Result<Vec<Statement<'p>>, StoreError> {
    if plan.is_empty() {
        return Ok(Vec::new());
    }
    let shape = Shape::of(plan);
    let known = TEXTS.get(&shape);
    let text_of = |place: usize| match &known {
        Some(texts) => texts.get(place).cloned().map(Text::Known).ok_or_else(|| {
            // A shape must say all a text depends on; this would mean it does not.
            mismatch(format!("statement {place} of a shape composed with fewer"))
        }),
        None => Ok(Text::Writing(String::from("WITH"))),
    };
    let mut statements = Vec::new();
    let mut current = Builder::checking_versions(plan, text_of(0)?)?;
    for run in &plan.runs {
        if run
            .kind
            .tables()
            .iter()
            .any(|t| current.written.contains(t))
        {
            statements.push(current.finish());
            current = Builder::after_the_check(plan, text_of(statements.len())?)?;
        }
        current.add(run)?;
    }
    statements.push(current.finish());
    if known.is_none() {
        let composed = statements
            .iter()
            .map(|statement| Arc::clone(&statement.sql));
        TEXTS.keep(shape, composed.collect());
    }
    Ok(statements)
}

/// A statement's text: kept from an earlier commit of the same shape, or
/// being written by this one.
enum Text {
    Known(Arc<str>),
    Writing(String),
}

/// A statement being put together: its parameters always, its text only
/// when its shape is new. Writing to a `String` cannot fail: the
/// `fmt::Result`s below are dropped.
struct Builder<'p> {
    sql: Text,
    parameters: Vec<Parameter<'p>>,
    stale: &'static str,
    written: Vec<Table>,
    checks_versions: bool,
    counted: Vec<(Kind, usize)>,
}

impl<'p> Builder<'p> {
    fn checking_versions(plan: &'p Plan<'_>, sql: Text) -> Result<Self, StoreError> {
        let (versioned, stale) = match (plan.products.len(), plan.stored) {
            (1, 1) => (VERSIONED_ONE, "NULL::text"),
            _ => (VERSIONED_ALL, STALE_OF_ALL),
        };
        Self::opening_with(versioned, stale, plan, true, sql)
    }

    fn after_the_check(plan: &'p Plan<'_>, sql: Text) -> Result<Self, StoreError> {
        Self::opening_with(VERSIONED_ALREADY, "NULL::text", plan, false, sql)
    }

    fn opening_with(
        versioned: &'static str,
        stale: &'static str,
        plan: &'p Plan<'_>,
        checks_versions: bool,
        sql: Text,
    ) -> Result<Self, StoreError> {
        let mut builder = Self {
            sql,
            parameters: Vec::new(),
            stale,
            written: Vec::new(),
            checks_versions,
            counted: Vec::new(),
        };
        builder.cte(versioned, VERSION_COLUMNS, &plan.versions)?;
        Ok(builder)
    }

    fn add(&mut self, run: &'p Run<'_>) -> Result<(), StoreError> {
        self.text(",");
        self.cte(writer(run.kind), columns(run.kind), &run.rows)?;
        self.written.extend_from_slice(run.kind.tables());
        if run.kind.counted() {
            self.counted.push((run.kind, run.rows.len()));
        }
        Ok(())
    }

    fn text(&mut self, piece: &str) {
        if let Text::Writing(sql) = &mut self.sql {
            sql.push_str(piece);
        }
    }

    /// Writes a writer's CTEs, with `rows` where it says `{rows}`.
    fn cte<T: Columns>(
        &mut self,
        template: &'static str,
        columns: &[Column],
        rows: &'p Rows<T>,
    ) -> Result<(), StoreError> {
        if matches!(self.sql, Text::Known(_)) {
            return self.source(columns, rows);
        }
        let (before, after) = template.split_once("{rows}").unwrap_or((template, ""));
        self.text(before);
        self.source(columns, rows)?;
        self.text(after);
        Ok(())
    }

    /// Binds `rows`' values and writes where the writer reads them from: a
    /// FROM item aliased `r` with `columns`. Small runs as a VALUES list,
    /// large ones as a JSON array (see [`VALUES_UP_TO`]).
    fn source<T: Columns>(
        &mut self,
        columns: &[Column],
        rows: &'p Rows<T>,
    ) -> Result<(), StoreError> {
        if rows.len() > VALUES_UP_TO {
            self.parameters.push(Parameter::Json(rows.json()?));
            let number = self.parameters.len();
            if let Text::Writing(sql) = &mut self.sql {
                let _ = write!(sql, "jsonb_to_recordset(${number}::jsonb) AS r(");
                for (i, (name, kind)) in columns.iter().enumerate() {
                    let _ = write!(sql, "{}{name} {kind}", if i == 0 { "" } else { ", " });
                }
                sql.push(')');
            }
            return Ok(());
        }
        self.text("(VALUES ");
        for (i, row) in rows.iter().enumerate() {
            self.text(if i == 0 { "(" } else { ", (" });
            for (j, (name, kind)) in columns.iter().enumerate() {
                let value = row.value(name).ok_or_else(|| {
                    mismatch(format!("a writer reads {name}, which its rows lack"))
                })?;
                self.parameters.push(Parameter::Column(value));
                let number = self.parameters.len();
                if let Text::Writing(sql) = &mut self.sql {
                    let separator = if j == 0 { "" } else { ", " };
                    let _ = write!(sql, "{separator}${number}::{kind}");
                }
            }
            self.text(")");
        }
        self.text(") AS r(");
        for (i, (name, _)) in columns.iter().enumerate() {
            self.text(if i == 0 { "" } else { ", " });
            self.text(name);
        }
        self.text(")");
        Ok(())
    }

    fn finish(mut self) -> Statement<'p> {
        if let Text::Writing(sql) = &mut self.sql {
            let _ = write!(
                sql,
                "\nSELECT (SELECT count(*) FROM versioned) AS versioned, {} AS stale",
                self.stale
            );
            for (kind, _) in &self.counted {
                let name = kind.name();
                let _ = write!(sql, ", (SELECT count(*) FROM {name}) AS {name}");
            }
        }
        let sql = match self.sql {
            Text::Known(sql) => sql,
            Text::Writing(sql) => Arc::from(sql),
        };
        Statement {
            sql,
            parameters: self.parameters,
            checks_versions: self.checks_versions,
            counted: self.counted,
        }
    }
}

impl Statement<'_> {
    pub(super) async fn run(
        self,
        conn: &mut AnyConnection,
        plan: &Plan<'_>,
    ) -> Result<(), StoreError> {
        // Prepared once per connection, as any other: a shape's text is
        // always the same.
        let query = self.parameters.into_iter().fold(
            sqlx::query(AssertSqlSafe(self.sql)),
            |query, parameter| match parameter {
                Parameter::Column(Value::Text(text)) => query.bind(text),
                Parameter::Column(Value::BigInt(number)) => query.bind(number),
                Parameter::Json(json) => query.bind(json),
            },
        );
        let row = first_row_once_done(query, conn)
            .await
            .map_err(|error| plan.failure(error))?
            .ok_or_else(|| mismatch("a write statement that returned no row".to_owned()))?;
        if self.checks_versions {
            let versioned = get::<i64>(&row, "versioned")?;
            if usize::try_from(versioned).ok() != Some(plan.products.len()) {
                let stale = get::<Option<String>>(&row, "stale")?;
                let sku = match stale {
                    Some(stale) => identifier(&stale, Sku::parse)?,
                    None => plan.blamed().cloned().ok_or_else(|| {
                        mismatch(format!("{versioned} products versioned, none to check"))
                    })?,
                };
                return Err(StoreError::Conflict { sku });
            }
        }
        for (kind, expected) in &self.counted {
            plan.check_count(*kind, *expected, get::<i64>(&row, kind.name())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use domain::events::BatchQuantityChanged;
    use domain::{BatchRef, Event, Quantity, Sku};
    use service_layer::ports::{ChangeSet, ProductChanges};

    use super::*;

    /// A change set of one stored product whose batches' quantities change.
    fn quantities_changed(sku: &str, batches: &[(&str, i128)]) -> ChangeSet {
        let sku = Sku::parse(sku).expect("sku");
        let events = batches
            .iter()
            .map(|(reference, qty)| {
                Event::BatchQuantityChanged(BatchQuantityChanged {
                    sku: sku.clone(),
                    reference: BatchRef::parse(reference).expect("reference"),
                    qty: Quantity::parse(*qty, "qty").expect("qty").get().into(),
                })
            })
            .collect();
        ChangeSet {
            at: chrono::Utc::now(),
            products: vec![ProductChanges {
                sku,
                stored_version: Some(3),
                new_version: 4,
                events,
            }],
            ..ChangeSet::default()
        }
    }

    fn texts_and_values(changes: &ChangeSet) -> Vec<(Arc<str>, Vec<String>)> {
        let plan = Plan::of(changes).expect("plan");
        compose(&plan)
            .expect("composed")
            .into_iter()
            .map(|statement| {
                let values = statement
                    .parameters
                    .iter()
                    .map(|parameter| format!("{parameter:?}"))
                    .collect();
                (statement.sql, values)
            })
            .collect()
    }

    #[test]
    fn a_shape_seen_before_reuses_its_text_and_binds_its_own_values() {
        // A shape no other test composes (texts are shared by the process).
        let first = texts_and_values(&quantities_changed(
            "LAMP",
            &[("b1", 5), ("b2", 1), ("b3", 2)],
        ));
        let second = texts_and_values(&quantities_changed(
            "DESK",
            &[("b7", 9), ("b8", 1), ("b9", 2)],
        ));
        assert_eq!(first.len(), 1);
        assert_eq!(second.len(), 1);
        assert!(Arc::ptr_eq(&first[0].0, &second[0].0), "one text per shape");
        assert_ne!(first[0].1, second[0].1);
        assert!(second[0].1.iter().any(|value| value.contains("DESK")));
        assert!(second[0].1.iter().any(|value| value.contains("b7")));
    }

    #[test]
    fn another_shape_gets_a_text_of_its_own() {
        let one = texts_and_values(&quantities_changed("LAMP", &[("b1", 5)]));
        let two = texts_and_values(&quantities_changed("LAMP", &[("b1", 5), ("b2", 6)]));
        assert_ne!(one[0].0, two[0].0);
        assert_eq!(
            two[0].0.matches('$').count(),
            two[0].1.len(),
            "each value bound has its placeholder"
        );
    }
}
