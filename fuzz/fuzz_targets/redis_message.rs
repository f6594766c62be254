//! libFuzzer target: a Redis message (`channel`, newline, payload) through
//! the service's decoder; the checks are in `src/redis_message.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| allocation_fuzz::redis_message::check(input));
