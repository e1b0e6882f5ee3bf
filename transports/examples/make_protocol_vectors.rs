//! Writes the sync protocol's test vectors (transports/SPEC.md) into a folder:
//! `cargo run -p tide-transports --features hub,http --example make_protocol_vectors -- fixtures/protocol`.
//!
//! Everything is fixed (the published test identities of fixtures/bundles/keys.txt, a
//! made-up challenge, a fixed body), and Ed25519 signatures are deterministic, so running
//! it again writes the same bytes.

use std::fmt::Write as _;
use std::path::PathBuf;

use tide_core::SecretIdentity;
use tide_transports::http::{hex, request_message, response_message, unhex};

fn identity(seed: &str, secret: &str) -> SecretIdentity {
    let a: [u8; 32] = unhex(seed).unwrap().try_into().unwrap();
    let b: [u8; 32] = unhex(secret).unwrap().try_into().unwrap();
    SecretIdentity::from_secrets(a, b)
}

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).expect("the folder to write to"));
    std::fs::create_dir_all(&out).unwrap();
    let alice = identity(
        "a592f181831bb8f1c7ea6559b3cb88efe38044b395a3c43a9a93792379de3f6b",
        "0ce28796b1d625b27f5d2b11c7c11ea1da390fa8c17076e32dfa6954f4b71f9f",
    );
    let bob = identity(
        "cb3703cb741a705bed22457470cfb40f24f6e92a8fedb10f73b3de392c78105d",
        "bcac65a1ca9e74de2eaec8842cd30fb7a9eff7736acd6199fd5d5fbd6121411a",
    );
    // expiry 2026-12-31T00:00:00Z, sixteen 0x11 bytes, and a mac of sixteen 0x22 bytes
    // (a client never checks the mac; only the hub that made the challenge can).
    let mut challenge = 1_798_675_200u64.to_be_bytes().to_vec();
    challenge.extend_from_slice(&[0x11; 16]);
    challenge.extend_from_slice(&[0x22; 16]);
    let body = b"a bundle would be here".to_vec();

    let request = request_message(
        bob.id(),
        alice.id(),
        &challenge,
        7,
        "POST",
        "/v1/exchange?wait=5",
        &body,
    );
    let mut t = String::from(
        "# A request of the HTTP exchange (SPEC.md §5.2): alice, the replica, to bob, the hub.\n\
         # `message` is what alice signs; `signature` is alice's Ed25519 over it.\n",
    );
    for (k, v) in [
        ("hub", bob.id().to_hex()),
        ("replica", alice.id().to_hex()),
        ("challenge", hex(&challenge)),
        ("counter", "7".into()),
        ("method", "POST".into()),
        ("path", "/v1/exchange?wait=5".into()),
        ("body", hex(&body)),
        ("body_hash", blake3::hash(&body).to_hex().to_string()),
        ("message", hex(&request)),
        ("signature", hex(&alice.sign(&request))),
    ] {
        writeln!(t, "{k} {v}").unwrap();
    }
    std::fs::write(out.join("request.txt"), t).unwrap();

    let response = response_message(alice.id(), &challenge, 7, 200, &body);
    let mut t = String::from(
        "# The hub's answer to that request (SPEC.md §5.2): `message` is what bob, the hub,\n\
         # signs; `signature` is bob's Ed25519 over it (the Tide-Signature header).\n",
    );
    for (k, v) in [
        ("replica", alice.id().to_hex()),
        ("challenge", hex(&challenge)),
        ("counter", "7".into()),
        ("status", "200".into()),
        ("body", hex(&body)),
        ("message", hex(&response)),
        ("signature", hex(&bob.sign(&response))),
    ] {
        writeln!(t, "{k} {v}").unwrap();
    }
    std::fs::write(out.join("response.txt"), t).unwrap();

    // A turn of the stream exchange (SPEC.md §4): one frame holding alice's published
    // acknowledgement, then the empty frame that ends the turn.
    let ack_path = out.join("../bundles/acknowledgement.tide");
    let ack = std::fs::read(&ack_path).expect("fixtures/bundles/acknowledgement.tide");
    let mut frames = (ack.len() as u64).to_be_bytes().to_vec();
    frames.extend_from_slice(&ack);
    frames.extend_from_slice(&0u64.to_be_bytes());
    std::fs::write(out.join("turn.frames"), frames).unwrap();
}
