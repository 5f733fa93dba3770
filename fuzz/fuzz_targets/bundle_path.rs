//! Fuzz target `bundle_path`: see [`airlock_fuzz::bundle_path`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| airlock_fuzz::bundle_path(data));
