//! libFuzzer target: an HTTP request (`METHOD PATH`, content type, body, one
//! per line) through the real router; the checks are in `src/http_request.rs`.
#![no_main]

use std::sync::LazyLock;

use tokio::runtime::{Builder, Runtime};

/// One runtime for the whole run: building one per input would dominate.
static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime")
});

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    RUNTIME.block_on(allocation_fuzz::http_request::check(input));
});
