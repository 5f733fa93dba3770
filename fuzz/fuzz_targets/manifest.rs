//! Fuzz target `manifest`: see [`airlock_fuzz::manifest`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| airlock_fuzz::manifest(data));
