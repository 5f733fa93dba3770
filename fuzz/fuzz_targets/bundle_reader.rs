//! Fuzz target `bundle_reader`: see [`airlock_fuzz::bundle_reader`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| airlock_fuzz::bundle_reader(data));
