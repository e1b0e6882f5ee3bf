//! What lies behind the signature, fed arbitrary bytes: capped zstd decompression and
//! the defensive opening of the SQLite image.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tide_bundle::fuzzing::open_body(data);
});
