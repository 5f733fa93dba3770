//! Fuzz target `signature`: see [`airlock_fuzz::signature`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| airlock_fuzz::signature(data));
