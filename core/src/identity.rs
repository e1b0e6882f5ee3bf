//! Identities and the key store.
//!
//! A replica's identity is an Ed25519 signing key and an X25519 key. The secret halves
//! live in a key store folder outside the database (`$TIDE_HOME`), one file per identity,
//! mode 0600. The database records only the public halves, so a copied database finds no
//! secret key and cannot seal under the original identity (invariant 11).
//!
//! Beside each secret key the store keeps a *binding*: the database file the identity
//! belongs to and the highest seq it has sealed. A copy on the same machine (another path)
//! or a restored backup (an older log) is thereby refused too.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::error::{DecodeError, Error, Result};
use crate::format::ids::{ReplicaId, hex, parse_hex_array};
pub(crate) use crate::format::signature::verify_signature;

/// The public card of a replica: what peers need to verify its changes and encrypt to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Card {
    /// Derived from `sign_key`.
    pub id: ReplicaId,
    /// A human name ("laptop-3"); not unique, not signed.
    pub name: String,
    /// Ed25519 public key.
    pub sign_key: [u8; 32],
    /// X25519 public key.
    pub box_key: [u8; 32],
}

const CARD_PREFIX: &str = "tide-card-v1";

impl Card {
    /// One line of text: `tide-card-v1 <sign key hex> <box key hex> <name>`.
    pub fn to_line(&self) -> String {
        format!(
            "{CARD_PREFIX} {} {} {}",
            hex(&self.sign_key),
            hex(&self.box_key),
            self.name
        )
    }

    /// Parses a line made by [`Card::to_line`].
    pub fn parse(line: &str) -> Result<Card, DecodeError> {
        let mut parts = line.trim().splitn(4, ' ');
        if parts.next() != Some(CARD_PREFIX) {
            return Err(DecodeError::Malformed(
                "card prefix (expected tide-card-v1)",
            ));
        }
        let sign_key = parse_hex_array(parts.next().unwrap_or(""), "card signing key")?;
        let box_key = parse_hex_array(parts.next().unwrap_or(""), "card encryption key")?;
        check_sign_key(&sign_key)?;
        check_box_key(&box_key)?;
        let name = parts.next().unwrap_or("").to_string();
        Ok(Card {
            id: ReplicaId::for_signing_key(&sign_key),
            name,
            sign_key,
            box_key,
        })
    }
}

/// An Ed25519 public key must be the canonical encoding of a curve point outside the
/// small subgroup: signatures under a small-order key prove nothing, and a non-canonical
/// encoding names the same point as another key.
fn check_sign_key(key: &[u8; 32]) -> Result<(), DecodeError> {
    let bad = || DecodeError::Malformed("card signing key (not a valid Ed25519 public key)");
    let point = VerifyingKey::from_bytes(key).map_err(|_| bad())?;
    if point.is_weak() || point.to_edwards().compress().to_bytes() != *key {
        return Err(bad());
    }
    Ok(())
}

/// An X25519 public key must not be of low order (all-zero among them): a key exchange
/// with it yields the all-zero secret whatever the other side's key, so anyone could
/// open what is encrypted to it.
fn check_box_key(key: &[u8; 32]) -> Result<(), DecodeError> {
    let probe = x25519_dalek::StaticSecret::from([0x5a; 32]);
    let shared = probe.diffie_hellman(&x25519_dalek::PublicKey::from(*key));
    if !shared.was_contributory() {
        return Err(DecodeError::Malformed(
            "card encryption key (not a valid X25519 public key)",
        ));
    }
    Ok(())
}

/// The secret half of an identity. Never stored in the database.
pub struct SecretIdentity {
    signing: SigningKey,
    box_secret: [u8; 32],
}

impl SecretIdentity {
    /// Creates a fresh identity from the operating system's randomness.
    pub fn generate() -> SecretIdentity {
        let mut seed = [0u8; 32];
        let mut box_secret = [0u8; 32];
        getrandom::fill(&mut seed).expect("the OS random source is available");
        getrandom::fill(&mut box_secret).expect("the OS random source is available");
        SecretIdentity {
            signing: SigningKey::from_bytes(&seed),
            box_secret,
        }
    }

    /// An identity from known secret bytes: for published test vectors and for moving
    /// an identity between key stores. Never use fixed bytes for a real replica.
    pub fn from_secrets(sign_seed: [u8; 32], box_secret: [u8; 32]) -> SecretIdentity {
        SecretIdentity {
            signing: SigningKey::from_bytes(&sign_seed),
            box_secret,
        }
    }

    /// This identity's replica id.
    pub fn id(&self) -> ReplicaId {
        ReplicaId::for_signing_key(&self.signing.verifying_key().to_bytes())
    }

    /// The public card, under `name`.
    pub fn card(&self, name: &str) -> Card {
        let box_public =
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(self.box_secret));
        Card {
            id: self.id(),
            name: name.to_string(),
            sign_key: self.signing.verifying_key().to_bytes(),
            box_key: box_public.to_bytes(),
        }
    }

    /// Signs `message` (already domain-separated by the caller).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// The X25519 secret, for the bundle layer's key unwrapping.
    pub fn box_secret(&self) -> [u8; 32] {
        self.box_secret
    }

    fn encode(&self) -> String {
        format!(
            "tide-secret-key-v1\nsign {}\nbox {}\n",
            hex(&self.signing.to_bytes()),
            hex(&self.box_secret)
        )
    }

    fn decode(text: &str) -> Result<SecretIdentity, DecodeError> {
        let mut lines = text.lines();
        if lines.next() != Some("tide-secret-key-v1") {
            return Err(DecodeError::Malformed("secret key file header"));
        }
        let field = |line: Option<&str>, name: &str| -> Result<[u8; 32], DecodeError> {
            let line = line.ok_or(DecodeError::Truncated("secret key file"))?;
            let rest = line
                .strip_prefix(name)
                .ok_or(DecodeError::Malformed("secret key file"))?;
            parse_hex_array(rest, "secret key")
        };
        let seed = field(lines.next(), "sign ")?;
        let box_secret = field(lines.next(), "box ")?;
        Ok(SecretIdentity {
            signing: SigningKey::from_bytes(&seed),
            box_secret,
        })
    }
}

impl crate::format::signature::Signer for SecretIdentity {
    fn id(&self) -> ReplicaId {
        SecretIdentity::id(self)
    }

    fn sign(&self, message: &[u8]) -> [u8; 64] {
        SecretIdentity::sign(self, message)
    }
}

/// Where an identity's secret key is bound: the database file and the last sealed seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Binding {
    pub(crate) db_path: PathBuf,
    pub(crate) sealed_seq: u64,
}

/// A folder of secret keys, one file per identity, readable only by its owner.
#[derive(Clone, Debug)]
pub struct KeyStore {
    dir: PathBuf,
}

impl KeyStore {
    /// A key store in `dir` (created on first write).
    pub fn at(dir: impl Into<PathBuf>) -> KeyStore {
        KeyStore { dir: dir.into() }
    }

    /// `$TIDE_HOME`, or the platform data directory (`$XDG_DATA_HOME/tide`,
    /// `~/.local/share/tide`, `~/Library/Application Support/tide`).
    pub fn from_env() -> KeyStore {
        if let Some(home) = std::env::var_os("TIDE_HOME").filter(|v| !v.is_empty()) {
            return KeyStore::at(home);
        }
        if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return KeyStore::at(PathBuf::from(xdg).join("tide"));
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        if cfg!(target_os = "macos") {
            KeyStore::at(home.join("Library/Application Support/tide"))
        } else {
            KeyStore::at(home.join(".local/share/tide"))
        }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn key_path(&self, id: ReplicaId) -> PathBuf {
        self.dir.join(format!("{}.key", id.to_hex()))
    }

    fn binding_path(&self, id: ReplicaId) -> PathBuf {
        self.dir.join(format!("{}.binding", id.to_hex()))
    }

    fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::KeyStore {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Stores a new secret identity (refuses to overwrite an existing one).
    pub(crate) fn store(&self, secret: &SecretIdentity) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(Self::io_err(&self.dir))?;
        restrict_dir(&self.dir);
        let path = self.key_path(secret.id());
        write_private(&path, secret.encode().as_bytes(), true)
    }

    /// Loads the secret key of `id`, or `None` when this store does not hold it.
    pub(crate) fn load(&self, id: ReplicaId) -> Result<Option<SecretIdentity>> {
        let path = self.key_path(id);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(SecretIdentity::decode(&text)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io_err(&path)(e)),
        }
    }

    pub(crate) fn load_binding(&self, id: ReplicaId) -> Result<Option<Binding>> {
        let path = self.binding_path(id);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::io_err(&path)(e)),
        };
        let mut db_path = None;
        let mut sealed_seq = None;
        for line in text.lines() {
            if let Some(p) = line.strip_prefix("path ") {
                db_path = Some(PathBuf::from(p));
            } else if let Some(s) = line.strip_prefix("sealed ") {
                sealed_seq = s.parse().ok();
            }
        }
        match (db_path, sealed_seq) {
            (Some(db_path), Some(sealed_seq)) => Ok(Some(Binding {
                db_path,
                sealed_seq,
            })),
            _ => Err(DecodeError::Malformed("key store binding file").into()),
        }
    }

    pub(crate) fn store_binding(&self, id: ReplicaId, binding: &Binding) -> Result<()> {
        let text = format!(
            "path {}\nsealed {}\n",
            binding.db_path.display(),
            binding.sealed_seq
        );
        write_private(&self.binding_path(id), text.as_bytes(), false)
    }
}

/// Writes a file readable only by its owner, atomically (temp file + rename) and durably.
fn write_private(path: &Path, bytes: &[u8], create_new: bool) -> Result<()> {
    let err = KeyStore::io_err(path);
    if create_new && path.exists() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "refusing to overwrite a secret key",
        )));
    }
    // A name of its own per write: two processes saving at once must not clobber each other.
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).expect("the OS random source is available");
    let tmp = path.with_extension(format!(
        "tmp.{}.{}",
        std::process::id(),
        crate::format::ids::hex(&nonce)
    ));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(KeyStore::io_err(&tmp))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(KeyStore::io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(err)
}

fn restrict_dir(dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Best effort: a store shared on purpose keeps its mode; the key files are 0600 anyway.
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_round_trips_and_derives_id() {
        let s = SecretIdentity::generate();
        let card = s.card("field laptop");
        let parsed = Card::parse(&card.to_line()).unwrap();
        assert_eq!(parsed, card);
        assert_eq!(parsed.id, s.id());
    }

    #[test]
    fn cards_with_keys_that_are_not_curve_points_are_refused() {
        let good = SecretIdentity::generate().card("x");
        let sign = hex(&good.sign_key);
        let boxk = hex(&good.box_key);
        let identity = format!("01{}", "00".repeat(31));
        for (sign, boxk) in [
            ("ff".repeat(32), boxk.clone()),
            ("00".repeat(32), boxk.clone()),
            (identity.clone(), boxk.clone()),
            (sign.clone(), "00".repeat(32)),
            (sign.clone(), identity.clone()),
        ] {
            let line = format!("{CARD_PREFIX} {sign} {boxk} x");
            assert!(Card::parse(&line).is_err(), "{line}");
        }
    }

    #[test]
    fn signature_verifies_only_for_its_message() {
        let s = SecretIdentity::generate();
        let card = s.card("a");
        let sig = s.sign(b"hello");
        assert!(verify_signature(&card.sign_key, b"hello", &sig));
        assert!(!verify_signature(&card.sign_key, b"hellp", &sig));
    }

    #[test]
    fn key_files_are_private_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::at(dir.path().join("keys"));
        let s = SecretIdentity::generate();
        store.store(&s).unwrap();
        let loaded = store.load(s.id()).unwrap().unwrap();
        assert_eq!(loaded.card("x"), s.card("x"));
        assert!(store.store(&s).is_err(), "never overwrite a secret key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(store.key_path(s.id()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
