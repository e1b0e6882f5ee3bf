//! The HTTP exchange with a hub (SPEC.md §5): what the hub and its clients share, the
//! signed messages and the challenge. The hub is behind the `hub` feature, the client
//! behind `http`.

#[cfg(feature = "http")]
pub mod client;
#[cfg(feature = "hub")]
pub mod hub;

use tide_core::ReplicaId;

/// The limits a hub announces in `hello`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body taken, in bytes.
    pub max_request: u64,
    /// About how many bytes of changes an answer holds.
    pub max_page: u64,
    /// Longest wait a request may ask for, in seconds.
    pub max_wait_s: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request: 16 << 20,
            max_page: crate::DEFAULT_PAGE_BYTES,
            max_wait_s: 25,
        }
    }
}

/// The bytes a replica signs for a request (SPEC.md §5.2).
pub fn request_message(
    hub: ReplicaId,
    replica: ReplicaId,
    challenge: &[u8],
    counter: u64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(160 + path_and_query.len());
    m.extend_from_slice(b"tide http request v1\0");
    m.extend_from_slice(&hub.0);
    m.extend_from_slice(&replica.0);
    m.extend_from_slice(challenge);
    m.extend_from_slice(&counter.to_be_bytes());
    m.extend_from_slice(method.as_bytes());
    m.push(0);
    m.extend_from_slice(path_and_query.as_bytes());
    m.push(0);
    m.extend_from_slice(blake3::hash(body).as_bytes());
    m
}

/// The bytes a hub signs for its answer (SPEC.md §5.2).
pub fn response_message(
    replica: ReplicaId,
    challenge: &[u8],
    counter: u64,
    status: u16,
    body: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(b"tide http response v1\0");
    m.extend_from_slice(&replica.0);
    m.extend_from_slice(challenge);
    m.extend_from_slice(&counter.to_be_bytes());
    m.extend_from_slice(&status.to_be_bytes());
    m.extend_from_slice(blake3::hash(body).as_bytes());
    m
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses hex, `None` when it is not.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
