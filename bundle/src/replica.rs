//! Bundles to and from a replica: export what a peer lacks, import what arrives.

use std::io::{Read, Write};

use tide_core::{Chunks, ImportReport, Page, Replica, SignedHead, VersionVector};

use crate::error::{BundleError, Result};
use crate::header::Header;
use crate::read::{ReadOptions, VerifiedBundle, read_bundle};
use crate::write::{Sender, WriteOptions, write_bundle};

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Export {
    /// The bundle's header.
    pub header: Header,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Writes every change a replica holding `since` lacks (from every origin) to `out`,
/// signed by `replica`. Pending writes are sealed first. A copied database refuses.
pub fn export(
    replica: &mut Replica,
    since: &VersionVector,
    options: &WriteOptions,
    out: &mut dyn Write,
) -> Result<Export> {
    let (export, ()) = export_with(replica, options, out, |replica, each| {
        replica.each_change_for(since, each)
    })?;
    Ok(export)
}

/// What [`export_page`] wrote.
#[derive(Debug, Clone)]
pub struct ExportedPage {
    /// The bundle.
    pub export: Export,
    /// What the page carried, and whether more remains.
    pub page: Page,
}

/// Writes one page of what a replica holding `since` lacks: up to about `budget` bytes
/// of changes in causal order ([`Replica::each_change_page`]), so the bundle is a
/// complete unit its receiver applies on arrival. The next page starts from `since`
/// moved up by the bundle's `provides`. Pending writes are sealed first.
pub fn export_page(
    replica: &mut Replica,
    since: &VersionVector,
    budget: u64,
    options: &WriteOptions,
    out: &mut dyn Write,
) -> Result<ExportedPage> {
    let (export, page) = export_with(replica, options, out, |replica, each| {
        replica.each_change_page(since, budget, each)
    })?;
    Ok(ExportedPage { export, page })
}

/// Writes an acknowledgement: a bundle with no changes, whose signed header carries
/// the replica's version vector (SPEC.md §2.3). Pending writes are sealed first, so the
/// vector covers them.
pub fn write_ack(
    replica: &mut Replica,
    options: &WriteOptions,
    out: &mut dyn Write,
) -> Result<Export> {
    let (export, ()) = export_with(replica, options, out, |replica, _| replica.seal().map(drop))?;
    Ok(export)
}

/// A listing of changes as the core offers them: each handed to `each`.
type Each<'e> = &'e mut dyn FnMut(&SignedHead, &mut dyn Chunks) -> tide_core::Result<()>;

/// Writes the changes `list` offers as one bundle signed by `replica`.
fn export_with<R>(
    replica: &mut Replica,
    options: &WriteOptions,
    out: &mut dyn Write,
    list: impl FnOnce(&mut Replica, Each<'_>) -> tide_core::Result<R>,
) -> Result<(Export, R)> {
    replica.seal()?;
    let identity = replica.signing_identity()?;
    let sender = Sender {
        identity: &identity,
        ack: replica.version_vector()?,
        schema: replica.schema_epoch()?,
    };
    let mut listed = None;
    let (header, bytes) = write_bundle(
        &sender,
        |each| {
            let mut failure = None;
            let result = list(replica, &mut |head, chunks| {
                each(head, chunks).map_err(|e| {
                    failure = Some(e);
                    tide_core::Error::Stopped
                })
            });
            match (result, failure) {
                (_, Some(e)) => Err(e),
                (r, None) => {
                    listed = Some(r?);
                    Ok(())
                }
            }
        },
        options,
        out,
    )?;
    let listed = listed.expect("write_bundle lists the changes before it returns");
    Ok((Export { header, bytes }, listed))
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The bundle's header.
    pub header: Header,
    /// What the replica did with the changes.
    pub report: ImportReport,
}

/// Reads a bundle and imports its changes into `replica`, atomically. Refuses bundles
/// from unknown senders, addressed to another replica, altered, or undecryptable, before
/// any write; a change that does not verify, or a header that does not match the
/// changes, refuses the whole import.
pub fn import(
    replica: &mut Replica,
    input: &mut dyn Read,
    passphrase: Option<&[u8]>,
) -> Result<Imported> {
    let (bundle, header) = open_for(replica, input, passphrase)?;
    let report = offer(&bundle, |source| {
        replica.import_each_from(header.sender, &header.ack, source)
    })?;
    Ok(Imported { header, report })
}

/// What [`import`] would do, short of writing: the same reading, the same checks of
/// every change (by the core's [`Replica::check_each`], the code the import's ingest
/// runs) and of the header against the changes. Whatever [`import`] would refuse, this
/// refuses with the same error. Nothing is written to the database; the report says
/// what would be stored, and nothing is applied.
pub fn check_import(
    replica: &Replica,
    input: &mut dyn Read,
    passphrase: Option<&[u8]>,
) -> Result<Imported> {
    let (bundle, header) = open_for(replica, input, passphrase)?;
    let report = offer(&bundle, |source| replica.check_each(source))?;
    Ok(Imported { header, report })
}

/// Reads and verifies a bundle for `replica`: from a known sender, for this replica.
fn open_for(
    replica: &Replica,
    input: &mut dyn Read,
    passphrase: Option<&[u8]>,
) -> Result<(VerifiedBundle, Header)> {
    let options = ReadOptions {
        known: replica.known_cards()?,
        box_secret: replica.reading_identity().ok().map(|s| s.box_secret()),
        passphrase: passphrase.map(<[u8]>::to_vec),
        image_cap: 0,
        temp_dir: None,
    };
    let bundle = read_bundle(input, &options)?;
    let header = bundle.header().clone();
    let this = replica.id()?;
    if let Some(recipient) = header.recipient
        && recipient != this
    {
        return Err(BundleError::NotForThisReplica { recipient, this });
    }
    Ok((bundle, header))
}

/// A change source as the core takes it: a function offering each change to `offer`.
type Offer<'o> = &'o mut dyn FnMut(&SignedHead, &mut dyn Chunks) -> tide_core::Result<()>;

/// Offers every change of `bundle` through `ingest` (the core's import or its check).
/// Changes pass one at a time, a chunk at a time: memory does not grow with the bundle
/// (invariant 12). A bundle's own error (a bad image, a header that does not match)
/// comes back as itself.
fn offer(
    bundle: &VerifiedBundle,
    ingest: impl FnOnce(
        &mut dyn FnMut(Offer<'_>) -> tide_core::Result<()>,
    ) -> tide_core::Result<ImportReport>,
) -> Result<ImportReport> {
    let mut failure = None;
    let result = ingest(&mut |offer| {
        bundle
            .for_each_change(|head, chunks| Ok(offer(head, chunks)?))
            .map_err(|e| match e {
                BundleError::Core(c) => c,
                other => {
                    failure = Some(other);
                    tide_core::Error::Stopped
                }
            })
    });
    match (result, failure) {
        (_, Some(e)) => Err(e),
        (r, None) => Ok(r?),
    }
}

/// The prerequisites of a bundle that `replica` does not hold yet: origin → seq needed.
/// Empty means everything in it can be applied once imported.
pub fn prerequisites_missing(replica: &Replica, header: &Header) -> Result<VersionVector> {
    let have = replica.version_vector()?;
    Ok(header
        .requires
        .iter()
        .filter(|(o, s)| have.get(o).copied().unwrap_or(0) < **s)
        .map(|(o, s)| (*o, *s))
        .collect())
}
