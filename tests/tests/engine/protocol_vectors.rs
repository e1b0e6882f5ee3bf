//! The sync protocol's vectors (`fixtures/protocol/`, made by
//! `transports/examples/make_protocol_vectors.rs`): the signed messages of the HTTP
//! exchange, built here byte by byte as transports/SPEC.md §5.2 writes them and compared
//! with both the recorded bytes and the code's, with their signatures checked; and a
//! turn of the stream exchange read frame by frame as §4 says.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tide_core::{ReplicaId, SecretIdentity};
use tide_transports::http::{request_message, response_message, unhex};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn fields(name: &str) -> HashMap<String, String> {
    std::fs::read_to_string(fixtures().join("protocol").join(name))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn bytes(f: &HashMap<String, String>, k: &str) -> Vec<u8> {
    unhex(&f[k]).unwrap_or_else(|| panic!("{k} is not hex"))
}

fn id(f: &HashMap<String, String>, k: &str) -> ReplicaId {
    ReplicaId::parse_hex(&f[k]).unwrap()
}

/// A published test identity (fixtures/bundles/keys.txt) by name.
fn identity(name: &str) -> SecretIdentity {
    let keys = std::fs::read_to_string(fixtures().join("bundles/keys.txt")).unwrap();
    let line = keys
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap();
    let f: Vec<&str> = line.split(' ').collect();
    SecretIdentity::from_secrets(
        unhex(f[1]).unwrap().try_into().unwrap(),
        unhex(f[2]).unwrap().try_into().unwrap(),
    )
}

#[test]
fn the_request_message_is_built_as_the_spec_says_and_its_signature_holds() {
    let f = fields("request.txt");
    let body = bytes(&f, "body");
    assert_eq!(bytes(&f, "body_hash"), blake3::hash(&body).as_bytes());
    let counter: u64 = f["counter"].parse().unwrap();
    // As SPEC.md §5.2 writes it.
    let mut spec = b"tide http request v1\0".to_vec();
    spec.extend_from_slice(&id(&f, "hub").0);
    spec.extend_from_slice(&id(&f, "replica").0);
    spec.extend_from_slice(&bytes(&f, "challenge"));
    spec.extend_from_slice(&counter.to_be_bytes());
    spec.extend_from_slice(f["method"].as_bytes());
    spec.push(0);
    spec.extend_from_slice(f["path"].as_bytes());
    spec.push(0);
    spec.extend_from_slice(blake3::hash(&body).as_bytes());
    assert_eq!(
        spec,
        bytes(&f, "message"),
        "the recorded message is the spec's"
    );
    let code = request_message(
        id(&f, "hub"),
        id(&f, "replica"),
        &bytes(&f, "challenge"),
        counter,
        &f["method"],
        &f["path"],
        &body,
    );
    assert_eq!(code, spec, "the code builds the spec's message");
    let alice = identity("alice");
    assert_eq!(alice.id(), id(&f, "replica"));
    let sig: [u8; 64] = bytes(&f, "signature").try_into().unwrap();
    assert!(tide_core::verify_signature(
        &alice.card("alice").sign_key,
        &spec,
        &sig
    ));
    let mut other = spec.clone();
    *other.last_mut().unwrap() ^= 1;
    assert!(!tide_core::verify_signature(
        &alice.card("alice").sign_key,
        &other,
        &sig
    ));
}

#[test]
fn the_response_message_is_built_as_the_spec_says_and_its_signature_holds() {
    let f = fields("response.txt");
    let body = bytes(&f, "body");
    let counter: u64 = f["counter"].parse().unwrap();
    let status: u16 = f["status"].parse().unwrap();
    let mut spec = b"tide http response v1\0".to_vec();
    spec.extend_from_slice(&id(&f, "replica").0);
    spec.extend_from_slice(&bytes(&f, "challenge"));
    spec.extend_from_slice(&counter.to_be_bytes());
    spec.extend_from_slice(&status.to_be_bytes());
    spec.extend_from_slice(blake3::hash(&body).as_bytes());
    assert_eq!(spec, bytes(&f, "message"));
    let code = response_message(
        id(&f, "replica"),
        &bytes(&f, "challenge"),
        counter,
        status,
        &body,
    );
    assert_eq!(code, spec);
    let bob = identity("bob");
    let sig: [u8; 64] = bytes(&f, "signature").try_into().unwrap();
    assert!(tide_core::verify_signature(
        &bob.card("bob").sign_key,
        &spec,
        &sig
    ));
}

#[test]
fn a_stream_turn_is_frames_of_bundles_ended_by_an_empty_frame() {
    let turn = std::fs::read(fixtures().join("protocol/turn.frames")).unwrap();
    let ack = std::fs::read(fixtures().join("bundles/acknowledgement.tide")).unwrap();
    let mut at = 0;
    let mut bundles = Vec::new();
    loop {
        let len = u64::from_be_bytes(turn[at..at + 8].try_into().unwrap()) as usize;
        at += 8;
        if len == 0 {
            break;
        }
        bundles.push(&turn[at..at + len]);
        at += len;
    }
    assert_eq!(at, turn.len(), "nothing follows the empty frame");
    assert_eq!(bundles, vec![&ack[..]]);
    let (header, _) = tide_bundle::read_header(&mut &ack[..], 0).unwrap();
    assert_eq!(header.changes, 0, "an acknowledgement carries no changes");
}
