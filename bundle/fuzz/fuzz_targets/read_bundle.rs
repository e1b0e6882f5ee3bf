//! Whole-bundle reading from arbitrary bytes: preamble, header limits, signature path.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tide_bundle::fuzzing::read_any(data);
});
