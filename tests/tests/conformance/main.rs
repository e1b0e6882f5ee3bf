//! One conformance suite for every carrier of tide's bundles (transports/SPEC.md). Each
//! carrier module implements [`Link`], how one replica's changes reach another through
//! it (with a fault done to one page on the way), and instantiates every law with
//! [`conformance!`]:
//!
//! - three replicas converge, and one relays for another it never meets directly;
//! - a page delivered twice changes nothing;
//! - a transfer cut after any page costs at most one page when it resumes;
//! - a page lost on the way is sent again;
//! - a tampered page is refused and leaves the receiver's database as it was;
//! - one-way links deliver everything across lost drops and report the gaps exactly
//!   (carriers that have a one-way mode).
//!
//! The carriers: bundle files carried one at a time ([`file`]), the stream exchange over
//! a pipe ([`stream`]), the folder mailbox ([`mailbox`]), and a hub over HTTP on
//! loopback ([`http`]).

mod file;
mod http;
mod mailbox;
mod stream;

use tide_core::{ReplicaId, SeqRuns, VersionVector};
use tide_tests::Cluster;

/// What a carrier does to one page on its way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Nothing.
    None,
    /// The transfer stops for good after this many pages arrived.
    CutAfter(usize),
    /// This page (counting from 0) never arrives; the others do.
    Lose(usize),
    /// One byte of this page is changed on the way.
    Tamper(usize),
    /// Every page arrives twice.
    Twice,
}

/// What one carry did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Pages (bundles with changes) the sender wrote or sent.
    pub pages_sent: usize,
    /// What went wrong, if anything did (a refused page, a cut connection).
    pub error: Option<String>,
}

/// How a carrier moves changes between two replicas of a cluster.
pub trait Link {
    /// Everything `from` holds that `to` lacks travels to `to`, with `fault` done on the
    /// way, and acknowledgements travel as far as the carrier lets them.
    fn carry(&mut self, c: &mut Cluster, from: usize, to: usize, fault: Fault) -> Outcome;

    /// A one-way link: `from` sends drops that nothing acknowledges, and the drops
    /// whose entry in `delivered` is false are lost; `to` only receives. Returns what `to`
    /// reports missing after each drop, or `None` when the carrier has no one-way mode.
    fn one_way(
        &mut self,
        c: &mut Cluster,
        from: usize,
        to: usize,
        delivered: &[bool],
    ) -> Option<Vec<Vec<(ReplicaId, SeqRuns)>>>;
}

/// Bytes of changes per page in the suite: small, so a few writes make many pages.
pub const PAGE: u64 = 1024;

/// The table every replica of the suite tracks.
const SCHEMA: &str = "CREATE TABLE t(id TEXT PRIMARY KEY, v INTEGER, note TEXT);";

/// `n` replicas of the suite's table that know each other.
pub fn cluster(n: usize) -> Cluster {
    Cluster::new(n, SCHEMA, &["t"])
}

/// Replica `at` writes `seals` changes of `rows` rows each (a seal after each batch), with
/// keys no other write uses.
pub fn write(c: &mut Cluster, at: usize, seals: usize, rows: usize) {
    static BATCH: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    for _ in 0..seals {
        let s = BATCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut sql = String::from("BEGIN;");
        for i in 0..rows {
            sql.push_str(&format!(
                "INSERT INTO t VALUES ('r{at}-{s}-{i}', {i}, '{}');",
                "x".repeat(40)
            ));
        }
        sql.push_str("COMMIT;");
        c.write(at, &sql);
        c.replicas[at].seal().expect("seal");
    }
}

fn rows(c: &Cluster, at: usize) -> i64 {
    tide_tests::query_one(&c.path(at), "SELECT count(*) FROM t")
}

fn converged(c: &Cluster, a: usize, b: usize) -> bool {
    let h = c.hashes();
    h[a] == h[b]
}

/// Three replicas converge; one gets another's changes through a third.
pub fn three_replicas_converge_and_relay(link: &mut dyn Link) {
    let mut c = cluster(3);
    for at in 0..3 {
        write(&mut c, at, 2, 5);
    }
    link.carry(&mut c, 0, 1, Fault::None);
    link.carry(&mut c, 1, 2, Fault::None);
    assert_eq!(
        tide_tests::query_one::<i64>(&c.path(2), "SELECT count(*) FROM t WHERE id LIKE 'r0-%'"),
        10,
        "r2 got r0's rows through r1"
    );
    for (from, to) in [(2, 0), (0, 1), (1, 2), (2, 0), (0, 1)] {
        let out = link.carry(&mut c, from, to, Fault::None);
        assert!(out.error.is_none(), "{from} -> {to}: {:?}", out.error);
    }
    c.assert_converged();
    assert_eq!(rows(&c, 0), 30);
}

/// Every page delivered twice: the second copy changes nothing.
pub fn redelivery_changes_nothing(link: &mut dyn Link) {
    let mut c = cluster(2);
    write(&mut c, 0, 4, 10);
    let once = link.carry(&mut c, 0, 1, Fault::Twice);
    assert!(once.error.is_none(), "{:?}", once.error);
    assert!(converged(&c, 0, 1));
    let before = c.hashes();
    let again = link.carry(&mut c, 0, 1, Fault::Twice);
    assert!(again.error.is_none(), "{:?}", again.error);
    assert_eq!(c.hashes(), before);
}

/// Cut after any page, the next carry sends at most one page more than what was
/// still missing.
pub fn resume_costs_at_most_one_page(link: &mut dyn Link) {
    let total = {
        let mut c = cluster(2);
        write(&mut c, 0, 12, 8);
        link.carry(&mut c, 0, 1, Fault::None).pages_sent
    };
    assert!(total >= 6, "the history spans several pages ({total})");
    for k in [0, 1, total / 2, total - 1] {
        let mut c = cluster(2);
        write(&mut c, 0, 12, 8);
        link.carry(&mut c, 0, 1, Fault::CutAfter(k));
        let resumed = link.carry(&mut c, 0, 1, Fault::None);
        assert!(
            resumed.error.is_none(),
            "after a cut at {k}: {:?}",
            resumed.error
        );
        assert!(
            resumed.pages_sent <= total - k + 1,
            "cut after {k} of {total} pages: the resume sent {}",
            resumed.pages_sent
        );
        assert!(converged(&c, 0, 1), "cut after {k}: not converged");
    }
}

/// A page lost on the way arrives with a later carry.
pub fn a_lost_page_is_sent_again(link: &mut dyn Link) {
    let mut c = cluster(2);
    write(&mut c, 0, 10, 8);
    link.carry(&mut c, 0, 1, Fault::Lose(1));
    for _ in 0..2 {
        link.carry(&mut c, 0, 1, Fault::None);
    }
    assert!(converged(&c, 0, 1));
    assert_eq!(rows(&c, 1), 80);
}

/// A page changed on the way is refused, and the receiver is left exactly as it was;
/// a clean carry then delivers.
pub fn a_tampered_page_is_refused_and_changes_nothing(link: &mut dyn Link) {
    let mut c = cluster(2);
    write(&mut c, 0, 6, 8);
    let hash = c.replicas[1].state_hash().unwrap();
    let vector: VersionVector = c.replicas[1].version_vector().unwrap();
    link.carry(&mut c, 0, 1, Fault::Tamper(0));
    assert_eq!(c.replicas[1].state_hash().unwrap(), hash);
    assert_eq!(c.replicas[1].version_vector().unwrap(), vector);
    for _ in 0..2 {
        link.carry(&mut c, 0, 1, Fault::None);
    }
    assert!(converged(&c, 0, 1));
}

/// One-way: drops are lost at random; the receiver names exactly what it lacks, and
/// repetition and refreshes fill every gap.
pub fn one_way_delivers_and_reports_gaps_exactly(link: &mut dyn Link) {
    let mut c = cluster(2);
    // A change per drop; drops 2 and 3 are lost.
    let delivered = [
        true, true, false, false, true, true, true, true, true, true, true, true,
    ];
    let mut written = Vec::new();
    let reports = {
        let mut reports = Vec::new();
        for (i, d) in delivered.iter().enumerate() {
            write(&mut c, 0, 1, 3);
            written.push(c.replicas[0].version_vector().unwrap());
            let Some(mut r) = link.one_way(&mut c, 0, 1, std::slice::from_ref(d)) else {
                return;
            };
            reports.push((i, r.pop().unwrap_or_default()));
        }
        reports
    };
    let origin = c.replicas[0].id().unwrap();
    for (i, missing) in &reports {
        // Only what r0 had written by then can be missing.
        for (o, runs) in missing {
            assert_eq!(*o, origin, "drop {i}: only r0 writes");
            for (a, b) in runs {
                assert!(a <= b && *b <= written[*i][&origin], "drop {i}: {runs:?}");
            }
        }
    }
    // Drop 2 lost: drop 3 (lost too) would have repeated it; drop 4 repeats drop 3 and
    // brings change 4 and 5, so after drop 4 change 3 is reported missing.
    let after_4 = &reports[4].1;
    assert_eq!(after_4, &vec![(origin, vec![(3, 3)])], "after drop 4");
    let last = &reports.last().unwrap().1;
    assert!(
        last.is_empty(),
        "after the refresh nothing is missing: {last:?}"
    );
    assert!(converged(&c, 0, 1));
}

/// Every law, as tests of the carrier `$link` (an expression making a fresh `Link`).
#[macro_export]
macro_rules! conformance {
    ($link:expr) => {
        #[test]
        fn three_replicas_converge_and_relay() {
            $crate::three_replicas_converge_and_relay(&mut $link);
        }

        #[test]
        fn redelivery_changes_nothing() {
            $crate::redelivery_changes_nothing(&mut $link);
        }

        #[test]
        fn resume_costs_at_most_one_page() {
            $crate::resume_costs_at_most_one_page(&mut $link);
        }

        #[test]
        fn a_lost_page_is_sent_again() {
            $crate::a_lost_page_is_sent_again(&mut $link);
        }

        #[test]
        fn a_tampered_page_is_refused_and_changes_nothing() {
            $crate::a_tampered_page_is_refused_and_changes_nothing(&mut $link);
        }

        #[test]
        fn one_way_delivers_and_reports_gaps_exactly() {
            $crate::one_way_delivers_and_reports_gaps_exactly(&mut $link);
        }
    };
}
