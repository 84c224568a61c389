//! libFuzzer target: see [`airlock_fuzz::www_authenticate`] for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    airlock_fuzz::www_authenticate::check(data);
});
