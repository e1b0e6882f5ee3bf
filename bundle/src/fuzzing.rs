//! Entry points for the fuzz targets (`bundle/fuzz`) and for the test that replays every
//! input they ever crashed on (`fixtures/crashes/`). Each must return, never panic.

use std::io::Cursor;

use tide_core::SecretIdentity;

use crate::read::{ReadOptions, read_bundle};

/// Reads `data` as a bundle from a fixed known sender, with a key and a passphrase.
pub fn read_any(data: &[u8]) {
    let sender = SecretIdentity::from_secrets([1; 32], [2; 32]);
    let reader = SecretIdentity::from_secrets([3; 32], [4; 32]);
    let options = ReadOptions {
        known: vec![sender.card("sender"), reader.card("reader")],
        box_secret: Some(reader.box_secret()),
        passphrase: Some(b"fuzz".to_vec()),
        image_cap: 1 << 20,
        temp_dir: None,
    };
    let _ = crate::read::read_header(&mut Cursor::new(data), 1 << 20);
    let _ = read_bundle(&mut Cursor::new(data), &options);
}

/// Treats `data` as a verified plain body: decompress (capped), open the image, list
/// its changes. The first 8 bytes, when present, give the declared image size.
pub fn open_body(data: &[u8]) {
    let (declared, body) = if data.len() >= 8 {
        (
            u64::from_le_bytes(data[..8].try_into().expect("8 bytes")) % (1 << 20),
            &data[8..],
        )
    } else {
        (0, data)
    };
    let _ = crate::read::open_plain_body(body, declared, 4);
}
