//! The book's appendix ("Swapping out the infrastructure: do everything
//! with CSVs"): a store backed by CSV files instead of a database, under the
//! same service layer, so that allocating from files runs the same handlers
//! and rules as the HTTP API.
//!
//! [`CsvStore::open`] reads `batches.csv` and, if present, `allocations.csv`
//! into in-memory tables (the memory store's); commands run against those
//! through the ordinary unit of work; [`CsvStore::save`] writes
//! `allocations.csv` back. Unlike the book's `CsvUnitOfWork`, which rewrites
//! the file on every commit, it is written once, at the end, to a
//! temporary file then renamed over the old one: a run of n orders writes
//! it once rather than n times, and a run that fails leaves no partial file.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use chrono::{NaiveDate, Utc};
use domain::{BatchRef, OrderId, OrderLine, Part, Placement, Product, Quantity, Sku};
use service_layer::memory::{MemoryStore, MemoryTransaction};
use service_layer::ports::{Lines, Store, StoreError, StoreTransaction};
use service_layer::{UnitOfWork, handlers};

pub const BATCHES: &str = "batches.csv";
pub const ORDERS: &str = "orders.csv";
pub const ALLOCATIONS: &str = "allocations.csv";

/// Why the files could not be read or written: which file, which line
/// (1 is the header) and which field, when it is about one.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("{file}: not found in {folder}")]
    Missing { folder: String, file: &'static str },
    #[error("{file}, line {line}{}: {reason}", field.map(|f| format!(", field {f}")).unwrap_or_default())]
    Malformed {
        file: &'static str,
        line: u64,
        field: Option<&'static str>,
        reason: String,
    },
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A row of `orders.csv`: what to allocate, and where it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    pub line: u64,
    pub orderid: OrderId,
    pub sku: Sku,
    pub qty: Quantity,
}

#[derive(Debug)]
struct BatchRow {
    line: u64,
    reference: BatchRef,
    sku: Sku,
    qty: Quantity,
    eta: Option<NaiveDate>,
}

#[derive(Debug)]
struct AllocationRow {
    line: u64,
    orderid: OrderId,
    sku: Sku,
    qty: Quantity,
    batchref: BatchRef,
}

/// The tables of one folder's files, and the order of their batches.
#[derive(Debug, Clone)]
pub struct CsvStore {
    folder: PathBuf,
    tables: MemoryStore,
    /// As `batches.csv` lists them: the order `allocations.csv` is written
    /// in.
    batches: Vec<(Sku, BatchRef)>,
}

impl CsvStore {
    /// The outbox its commits write: what the run tells beyond the CSV
    /// files (out-of-stock emails) waits there, in memory.
    pub fn outbox(&self) -> MemoryStore {
        self.tables.clone()
    }
}

impl Store for CsvStore {
    type Transaction = MemoryTransaction;

    async fn begin(&self) -> Result<MemoryTransaction, StoreError> {
        self.tables.begin().await
    }
}

impl CsvStore {
    /// Reads the batches and the allocations already made, checking every
    /// row: a batch given twice, an allocation to a batch that is not
    /// there or of another SKU, more allocated than a batch has.
    pub async fn open(folder: &Path) -> Result<Self, CsvError> {
        let batches = read_rows(folder, BATCHES, true, batch_row)?;
        let allocations = read_rows(folder, ALLOCATIONS, false, allocation_row)?;
        let tables = MemoryStore::new();
        let mut uow = UnitOfWork::begin(&tables, Utc::now()).await?;
        let mut products: BTreeMap<Sku, Product> = BTreeMap::new();
        let mut known = HashSet::new();
        for row in &batches {
            if !known.insert(row.reference.clone()) {
                return Err(malformed(BATCHES, row.line, Some("ref"), "given twice"));
            }
            let product = products
                .entry(row.sku.clone())
                .or_insert_with(|| Product::new(row.sku.clone()));
            product
                .add_batch(row.reference.clone(), row.qty, row.eta)
                .map_err(|e| malformed(BATCHES, row.line, None, &e.to_string()))?;
        }
        place_existing(&mut products, &allocations)?;
        for product in products.into_values() {
            uow.products().add(product);
        }
        // The read model and the outbox as the handlers keep them.
        for event in uow.collect_new_events() {
            handlers::handle_in_transaction(&event, &mut uow).await?;
        }
        uow.commit().await?;
        Ok(Self {
            folder: folder.to_owned(),
            tables,
            batches: batches.into_iter().map(|b| (b.sku, b.reference)).collect(),
        })
    }

    /// The order lines of `orders.csv`, in its order.
    pub fn orders(&self) -> Result<Vec<OrderRow>, CsvError> {
        read_rows(&self.folder, ORDERS, true, order_row)
    }

    /// Writes `allocations.csv`: a header, then every allocated line (or
    /// part of one), grouped by batch in `batches.csv` order, each batch's
    /// oldest first.
    pub async fn save(&self) -> Result<(), CsvError> {
        let mut transaction = self.tables.begin().await?;
        let mut out = csv::Writer::from_writer(Vec::new());
        let header = ["orderid", "sku", "qty", "batchref"];
        out.write_record(header)
            .map_err(|e| io_error(ALLOCATIONS, e))?;
        for (sku, reference) in &self.batches {
            let product = transaction
                .load(sku, Lines::OfBatch(reference), Utc::now())
                .await?;
            let lines = product
                .as_ref()
                .and_then(|p| p.batch(reference))
                .map(|batch| batch.loaded_lines())
                .unwrap_or_default();
            for line in lines {
                let qty = line.qty.to_string();
                let row = [
                    line.orderid.as_str(),
                    sku.as_str(),
                    &qty,
                    reference.as_str(),
                ];
                out.write_record(row)
                    .map_err(|e| io_error(ALLOCATIONS, e))?;
            }
        }
        let bytes = out
            .into_inner()
            .map_err(|e| io_error(ALLOCATIONS, e.into_error()))?;
        let written = self.folder.join(ALLOCATIONS);
        let temporary = self
            .folder
            .join(format!(".{ALLOCATIONS}.{}.tmp", std::process::id()));
        let file = |e| CsvError::Io {
            file: written.display().to_string(),
            source: e,
        };
        fs::write(&temporary, bytes).map_err(file)?;
        fs::rename(&temporary, &written).map_err(file)
    }
}

/// Puts each allocation already made on the batch it names, through the
/// domain (so that a batch cannot end up over-allocated). A line split over
/// batches has a row per batch.
fn place_existing(
    products: &mut BTreeMap<Sku, Product>,
    allocations: &[AllocationRow],
) -> Result<(), CsvError> {
    let mut parts: BTreeMap<(OrderId, Sku), Vec<&AllocationRow>> = BTreeMap::new();
    for row in allocations {
        let line = parts
            .entry((row.orderid.clone(), row.sku.clone()))
            .or_default();
        if line.iter().any(|part| part.batchref == row.batchref) {
            let reason = format!(
                "{} of {} is on {} twice",
                row.orderid, row.sku, row.batchref
            );
            return Err(malformed(ALLOCATIONS, row.line, None, &reason));
        }
        line.push(row);
    }
    for ((orderid, sku), rows) in parts {
        let first = rows[0].line;
        let product = products.get_mut(&sku).ok_or_else(|| {
            malformed(
                ALLOCATIONS,
                first,
                Some("sku"),
                &format!("no batch of {sku}"),
            )
        })?;
        for row in &rows {
            if product.batch(&row.batchref).is_none() {
                let reason = format!("no batch {} of {sku} in {BATCHES}", row.batchref);
                return Err(malformed(ALLOCATIONS, row.line, Some("batchref"), &reason));
            }
        }
        let total = rows.iter().map(|row| u64::from(row.qty.get())).sum::<u64>();
        let qty = Quantity::parse(total.into(), "qty")
            .map_err(|e| malformed(ALLOCATIONS, first, Some("qty"), &e.to_string()))?;
        let placement = Placement::Fits {
            line: OrderLine { orderid, sku, qty },
            parts: rows
                .iter()
                .map(|row| Part {
                    batchref: row.batchref.clone(),
                    qty: row.qty,
                })
                .collect(),
        };
        product.place(placement).map_err(|_| {
            malformed(
                ALLOCATIONS,
                first,
                Some("qty"),
                "more than its batch has left",
            )
        })?;
    }
    Ok(())
}

/// Every data row of `file` in `folder`, parsed by `parse`; none for a
/// file that is not required and not there.
fn read_rows<T>(
    folder: &Path,
    file: &'static str,
    required: bool,
    parse: impl Fn(&Fields<'_>) -> Result<T, CsvError>,
) -> Result<Vec<T>, CsvError> {
    let path = folder.join(file);
    if !path.exists() {
        return if required {
            Err(CsvError::Missing {
                folder: folder.display().to_string(),
                file,
            })
        } else {
            Ok(Vec::new())
        };
    }
    let mut reader = csv::Reader::from_path(&path).map_err(|e| io_error(file, e))?;
    let header = reader
        .headers()
        .map_err(|e| malformed(file, 1, None, &e.to_string()))?
        .clone();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, csv::Position::line);
            malformed(file, line, None, &e.to_string())
        })?;
        let line = record.position().map_or(0, csv::Position::line);
        let fields = Fields {
            file,
            line,
            header: &header,
            record: &record,
        };
        rows.push(parse(&fields)?);
    }
    Ok(rows)
}

/// One row, its fields found by the header's names.
struct Fields<'a> {
    file: &'static str,
    line: u64,
    header: &'a csv::StringRecord,
    record: &'a csv::StringRecord,
}

impl Fields<'_> {
    fn text(&self, field: &'static str) -> Result<&str, CsvError> {
        let column = self.header.iter().position(|name| name.trim() == field);
        let Some(column) = column else {
            return Err(malformed(self.file, 1, Some(field), "no such column"));
        };
        self.record
            .get(column)
            .map(str::trim)
            .ok_or_else(|| self.error(field, "missing"))
    }

    fn parsed<T, E: ToString>(
        &self,
        field: &'static str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<T, CsvError> {
        parse(self.text(field)?).map_err(|e| self.error(field, &e.to_string()))
    }

    fn qty(&self) -> Result<Quantity, CsvError> {
        self.parsed("qty", |raw| match raw.parse::<i128>() {
            Ok(units) => Quantity::parse(units, "qty").map_err(|e| e.to_string()),
            Err(_) => Err(format!("{raw:?} is not a whole number")),
        })
    }

    fn error(&self, field: &'static str, reason: &str) -> CsvError {
        malformed(self.file, self.line, Some(field), reason)
    }
}

fn batch_row(fields: &Fields<'_>) -> Result<BatchRow, CsvError> {
    Ok(BatchRow {
        line: fields.line,
        reference: fields.parsed("ref", BatchRef::parse)?,
        sku: fields.parsed("sku", Sku::parse)?,
        qty: fields.qty()?,
        eta: fields.parsed("eta", |raw| match raw {
            "" => Ok(None),
            date => NaiveDate::parse_from_str(date, "%Y-%m-%d")
                .map(Some)
                .map_err(|_| format!("{date:?} is not a date (YYYY-MM-DD) or empty")),
        })?,
    })
}

fn order_row(fields: &Fields<'_>) -> Result<OrderRow, CsvError> {
    Ok(OrderRow {
        line: fields.line,
        orderid: fields.parsed("orderid", OrderId::parse)?,
        sku: fields.parsed("sku", Sku::parse)?,
        qty: fields.qty()?,
    })
}

fn allocation_row(fields: &Fields<'_>) -> Result<AllocationRow, CsvError> {
    Ok(AllocationRow {
        line: fields.line,
        orderid: fields.parsed("orderid", OrderId::parse)?,
        sku: fields.parsed("sku", Sku::parse)?,
        qty: fields.qty()?,
        batchref: fields.parsed("batchref", BatchRef::parse)?,
    })
}

fn malformed(file: &'static str, line: u64, field: Option<&'static str>, reason: &str) -> CsvError {
    CsvError::Malformed {
        file,
        line,
        field,
        reason: reason.to_owned(),
    }
}

fn io_error(file: &'static str, error: impl Into<io::Error>) -> CsvError {
    CsvError::Io {
        file: file.to_owned(),
        source: error.into(),
    }
}
