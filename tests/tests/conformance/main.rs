//! smoke
use tide_core::Replica;
use tide_tests::Cluster;
use tide_transports::Carrier;
use tide_transports::mailbox::{Mailbox, MailboxOptions};

#[test]
fn smoke_mailbox() {
    let mut c = Cluster::new(3, "CREATE TABLE t(id TEXT PRIMARY KEY, v);", &["t"]);
    let dir = tempfile::tempdir().unwrap();
    c.write(0, "INSERT INTO t VALUES ('a', 1)");
    c.write(1, "INSERT INTO t VALUES ('b', 2)");
    c.write(2, "INSERT INTO t VALUES ('c', 3)");
    let mut m = Mailbox::new(
        dir.path(),
        MailboxOptions {
            page_bytes: 100,
            ..Default::default()
        },
    );
    for _ in 0..3 {
        for i in 0..3 {
            let r: &mut Replica = &mut c.replicas[i];
            let rep = m.sync(r).unwrap();
            eprintln!("{i}: {rep:?}");
        }
    }
    c.assert_converged();
    let left: Vec<_> = std::fs::read_dir(dir.path().join("tide-mailbox/seg"))
        .unwrap()
        .collect();
    eprintln!("left {}", left.len());
}
