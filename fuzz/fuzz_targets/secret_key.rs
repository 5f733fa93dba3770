//! Fuzz target `secret_key`: see [`airlock_fuzz::secret_key`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| airlock_fuzz::secret_key(data));
