//! The signature primitive changes are signed with (Ed25519), kept apart from key
//! storage and trust policy: the format only needs to sign a message and check one.

use ed25519_dalek::{Verifier, VerifyingKey};

use crate::format::ids::ReplicaId;

/// Whoever signs changes: a replica's secret identity.
pub trait Signer {
    /// The replica whose changes these are.
    fn id(&self) -> ReplicaId;
    /// An Ed25519 signature over `message`.
    fn sign(&self, message: &[u8]) -> [u8; 64];
}

/// Verifies an Ed25519 signature by `public` over `message`.
pub fn verify_signature(public: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(public) else {
        return false;
    };
    let sig = ed25519_dalek::Signature::from_bytes(signature);
    key.verify(message, &sig).is_ok()
}
