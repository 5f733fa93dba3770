//! Fuzz target `public_key`: see [`airlock_fuzz::public_key`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| airlock_fuzz::public_key(data));
