//! libFuzzer target: see [`airlock_fuzz::route`] for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    airlock_fuzz::route::check(data);
});
