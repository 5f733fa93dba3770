//! Fuzz target `trust_update`: see [`airlock_fuzz::trust_update`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| airlock_fuzz::trust_update(data));
