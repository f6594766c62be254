//! Load harness (work in progress).
fn main() {}
