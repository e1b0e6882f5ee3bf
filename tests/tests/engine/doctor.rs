//! The doctor's checks of a replica's own records: log chunks are kept compressed, and
//! one that no longer unpacks or is missing is a finding, not an error that stops it.

use tide_tests::{notes, query_one, series};

/// Chunks are kept compressed in the log; one that no longer unpacks, or is missing, is
/// a finding of the doctor, not an error that stops it.
#[test]
fn the_doctor_lists_a_log_chunk_that_does_not_unpack_or_is_missing() {
    let mut c = notes(1);
    c.replicas[0].set_chunk_target(2048).unwrap();
    c.write(0, &series("notes", 1, 200, "'n' || x, 'title', 'body', x"));
    c.replicas[0].seal().unwrap();
    let chunks: i64 = query_one(&c.path(0), "SELECT count(*) FROM _tide_chunks");
    assert!(chunks > 2, "{chunks} chunks");
    assert_eq!(
        query_one::<i64>(&c.path(0), "SELECT min(packing) FROM _tide_chunks"),
        1,
        "2 KiB chunks are stored compressed"
    );
    assert!(c.replicas[0].doctor(false).unwrap().iter().all(|f| f.ok));
    c.write(
        0,
        "UPDATE _tide_chunks SET data = x'28b52ffd00' WHERE rowid = (SELECT min(rowid) FROM _tide_chunks);
         DELETE FROM _tide_chunks WHERE rowid = (SELECT max(rowid) FROM _tide_chunks);",
    );
    let findings = c.replicas[0].doctor(false).unwrap();
    let chain = findings.iter().find(|f| f.check == "hash chains").unwrap();
    assert!(!chain.ok);
    assert!(
        chain.detail.contains("could not be decompressed") && chain.detail.contains("missing"),
        "{}",
        chain.detail
    );
}
