//! The harness on a small N, as CI's smoke test: every measurement runs and reports a
//! figure. No timing is asserted (a slow machine must not fail a test).

#[test]
fn every_measurement_runs_on_a_small_input() {
    let figures = tide_bench::run(&tide_bench::Config {
        rows: 300,
        commits: 20,
        memory: None,
        replicas: 8,
    });
    let table = tide_bench::table(&figures);
    for measure in [
        "bulk insert",
        "bulk update",
        "bulk delete",
        "one commit each",
        "seal",
        "export",
        "no conflicts",
        "every op conflicting",
        "changeset",
        "metadata",
        "mailbox: send",
        "mailbox: send and receive",
        "mailbox: page bytes",
        "hub: 300 row ops",
        "hub: live",
        "hub: 8 replicas",
    ] {
        assert!(
            figures.iter().any(|f| f.name.contains(measure)),
            "no figure for {measure}:\n{table}"
        );
    }
    let conflicting = figures
        .iter()
        .find(|f| f.name.contains("every op conflicting"))
        .unwrap();
    assert!(
        conflicting.name.contains("(300 conflicts opened)"),
        "every op must conflict: {}",
        conflicting.name
    );
    assert!(!table.contains("not measured"), "{table}");
}
