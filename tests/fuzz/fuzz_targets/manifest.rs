#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| emogate_fuzz::run(emogate_fuzz::targets::manifest, data));
