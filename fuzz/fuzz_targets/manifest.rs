//! libFuzzer target: see [`airlock_fuzz::manifest`] for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    airlock_fuzz::manifest::check(data);
});
