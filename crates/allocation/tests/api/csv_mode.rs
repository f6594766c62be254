//! The book's CSV mode (docs/contract.md section 7.4) on the built binary:
//! the appendix's own two tests, out of stock, and malformed files refused
//! with the file, line and field, and nothing written.

use std::fs;
use std::path::Path;

use crate::helpers::unique;
use crate::maintenance::{Finished, run_allocation};

fn write(folder: &Path, file: &str, rows: &[&[&str]]) {
    let text: String = rows.iter().map(|row| row.join(",") + "\n").collect();
    fs::write(folder.join(file), text).expect("written");
}

fn allocations(folder: &Path) -> Vec<Vec<String>> {
    let text = fs::read_to_string(folder.join("allocations.csv")).expect("allocations.csv");
    text.lines()
        .map(|line| line.split(',').map(str::to_owned).collect())
        .collect()
}

async fn allocate_from(folder: &Path) -> Finished {
    let path = folder.to_str().expect("a UTF-8 path");
    run_allocation(&["allocate-from-csv", path]).await
}

#[tokio::test]
async fn reads_batches_and_orders_and_writes_the_allocations() {
    let folder = tempfile::tempdir().expect("a folder");
    let (sku1, sku2) = (unique("s1"), unique("s2"));
    let (batch1, batch2, batch3) = (unique("b1"), unique("b2"), unique("b3"));
    let order = unique("o");
    write(
        folder.path(),
        "batches.csv",
        &[
            &["ref", "sku", "qty", "eta"],
            &[&batch1, &sku1, "100", ""],
            &[&batch2, &sku2, "100", "2011-01-01"],
            &[&batch3, &sku2, "100", "2011-01-02"],
        ],
    );
    write(
        folder.path(),
        "orders.csv",
        &[
            &["orderid", "sku", "qty"],
            &[&order, &sku1, "3"],
            &[&order, &sku2, "12"],
        ],
    );
    let finished = allocate_from(folder.path()).await;
    assert_eq!(finished.code, Some(0), "{finished:#?}");
    assert_eq!(
        allocations(folder.path()),
        [
            vec!["orderid", "sku", "qty", "batchref"],
            vec![&order, &sku1, "3", &batch1],
            vec![&order, &sku2, "12", &batch2],
        ]
    );
}

#[tokio::test]
async fn also_reads_existing_allocations_and_appends_to_them() {
    let folder = tempfile::tempdir().expect("a folder");
    let sku = unique("s");
    let (batch1, batch2) = (unique("b1"), unique("b2"));
    let (old_order, new_order) = (unique("o1"), unique("o2"));
    write(
        folder.path(),
        "batches.csv",
        &[
            &["ref", "sku", "qty", "eta"],
            &[&batch1, &sku, "10", "2011-01-01"],
            &[&batch2, &sku, "10", "2011-01-02"],
        ],
    );
    write(
        folder.path(),
        "allocations.csv",
        &[
            &["orderid", "sku", "qty", "batchref"],
            &[&old_order, &sku, "10", &batch1],
        ],
    );
    write(
        folder.path(),
        "orders.csv",
        &[&["orderid", "sku", "qty"], &[&new_order, &sku, "7"]],
    );
    let finished = allocate_from(folder.path()).await;
    assert_eq!(finished.code, Some(0), "{finished:#?}");
    assert_eq!(
        allocations(folder.path()),
        [
            vec!["orderid", "sku", "qty", "batchref"],
            vec![&old_order, &sku, "10", &batch1],
            vec![&new_order, &sku, "7", &batch2],
        ]
    );
}

#[tokio::test]
async fn a_line_out_of_stock_is_left_out_and_the_rest_allocated_in_batch_order() {
    let folder = tempfile::tempdir().expect("a folder");
    let sku = unique("s");
    let (later, sooner) = (unique("later"), unique("sooner"));
    let (first, second, too_big) = (unique("o1"), unique("o2"), unique("o3"));
    write(
        folder.path(),
        "batches.csv",
        &[
            &["ref", "sku", "qty", "eta"],
            &[&later, &sku, "10", "2030-01-02"],
            &[&sooner, &sku, "5", "2030-01-01"],
        ],
    );
    write(
        folder.path(),
        "orders.csv",
        &[
            &["orderid", "sku", "qty"],
            &[&first, &sku, "4"],
            &[&too_big, &sku, "11"],
            &[&second, &sku, "4"],
        ],
    );
    let finished = allocate_from(folder.path()).await;
    assert_eq!(finished.code, Some(0), "{finished:#?}");
    assert_eq!(
        allocations(folder.path()),
        [
            vec!["orderid", "sku", "qty", "batchref"],
            vec![&second, &sku, "4", &later],
            vec![&first, &sku, "4", &sooner],
        ],
        "grouped by batch as batches.csv lists them"
    );
    assert!(
        finished.stderr.contains(&format!("Out of stock for {sku}")),
        "{finished:#?}"
    );
}

#[tokio::test]
async fn malformed_files_are_refused_with_file_line_and_field_and_nothing_written() {
    let sku = unique("s");
    let batch = unique("b");
    let batches: &[&[&str]] = &[&["ref", "sku", "qty", "eta"], &[&batch, &sku, "10", ""]];
    let orders: &[&[&str]] = &[&["orderid", "sku", "qty"], &["o1", &sku, "1"]];
    let bad_cases: Vec<(&str, Vec<Vec<String>>, &str)> = vec![
        (
            "orders.csv",
            rows(&[
                &["orderid", "sku", "qty"],
                &["o1", &sku, "1"],
                &["o2", &sku, "two"],
            ]),
            "orders.csv, line 3, field qty",
        ),
        (
            "orders.csv",
            rows(&[&["orderid", "sku", "qty"], &["o1", &sku, "0"]]),
            "orders.csv, line 2, field qty",
        ),
        (
            "batches.csv",
            rows(&[
                &["ref", "sku", "qty", "eta"],
                &[&batch, &sku, "10", "2011-13-01"],
            ]),
            "batches.csv, line 2, field eta",
        ),
        (
            "batches.csv",
            rows(&[&["ref", "sku", "eta"], &[&batch, &sku, ""]]),
            "batches.csv, line 1, field qty",
        ),
        (
            "orders.csv",
            rows(&[&["orderid", "sku", "qty"], &["o1", "NO-SUCH-SKU", "1"]]),
            "orders.csv, line 2: Invalid sku NO-SUCH-SKU",
        ),
        (
            "allocations.csv",
            rows(&[
                &["orderid", "sku", "qty", "batchref"],
                &["o0", &sku, "11", &batch],
            ]),
            "allocations.csv, line 2, field qty",
        ),
        (
            "allocations.csv",
            rows(&[
                &["orderid", "sku", "qty", "batchref"],
                &["o0", &sku, "1", "elsewhere"],
            ]),
            "allocations.csv, line 2, field batchref",
        ),
    ];
    for (file, bad, expected) in bad_cases {
        let folder = tempfile::tempdir().expect("a folder");
        write(folder.path(), "batches.csv", batches);
        write(folder.path(), "orders.csv", orders);
        let bad: Vec<Vec<&str>> = bad
            .iter()
            .map(|r| r.iter().map(String::as_str).collect())
            .collect();
        let bad: Vec<&[&str]> = bad.iter().map(Vec::as_slice).collect();
        write(folder.path(), file, &bad);
        let before = fs::read(folder.path().join("allocations.csv")).ok();

        let finished = allocate_from(folder.path()).await;
        assert_eq!(finished.code, Some(1), "{expected}: {finished:#?}");
        assert!(
            finished.stderr.contains(expected),
            "{expected}: {finished:#?}"
        );
        let after = fs::read(folder.path().join("allocations.csv")).ok();
        assert_eq!(after, before, "{expected}: allocations.csv untouched");
        let leftovers = fs::read_dir(folder.path()).expect("listed").count();
        let expected_files = 2 + usize::from(before.is_some());
        assert_eq!(
            leftovers, expected_files,
            "{expected}: no temporary file left"
        );
    }

    let empty = tempfile::tempdir().expect("a folder");
    let finished = allocate_from(empty.path()).await;
    assert_eq!(finished.code, Some(1));
    assert!(
        finished.stderr.contains("batches.csv: not found"),
        "{finished:#?}"
    );
}

fn rows(rows: &[&[&str]]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|row| row.iter().map(|field| (*field).to_owned()).collect())
        .collect()
}
