//! `cargo run --release -p tide-bench -- [--rows N] [--commits M] [--replicas R] [--no-memory]`
//!
//! Prints a Markdown table; every figure is a ratio or rate against plain SQLite in the
//! same run.

const HELP: &str = "\
tide-bench: tide's costs against plain SQLite, measured in the same run.

Usage: cargo run --release -p tide-bench -- [--rows N] [--commits M] [--replicas R] [--no-memory]

  --rows N       rows per bulk measurement (default 100000; BENCHMARKS.md uses 1000000)
  --commits M    single-row commits for the per-commit capture figure (default 2000),
                 and up to 200 of them for the live hub figure
  --replicas R   replicas syncing at once with one hub (default 200)
  --no-memory    skip the peak-memory phases (they run as child processes, as does
                 the hub the replicas sync with, for its peak memory)

Prints a Markdown table: every figure is a ratio or a rate against plain SQLite
(for the folder mailbox, a plain file copy; for the hub, the file bundle path) on
this machine. The size comparison needs the sqlite3 shell. For instruction counts under callgrind, see BENCHMARKS.md (--phase export|import|conflict-setup|import-conflicting|capture-plain|capture-tide).
";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{HELP}");
        return;
    }
    let known = [
        "--rows",
        "--commits",
        "--replicas",
        "--no-memory",
        "--phase",
        "--dir",
    ];
    if let Some(bad) = args
        .iter()
        .skip(1)
        .find(|a| a.starts_with('-') && !known.contains(&a.as_str()))
    {
        eprintln!("tide-bench: unknown option {bad}\n\n{HELP}");
        std::process::exit(2);
    }
    let value = |flag: &str| {
        let i = args.iter().position(|a| a == flag)?;
        match args.get(i + 1).and_then(|v| v.parse::<u64>().ok()) {
            Some(n) => Some(n),
            None => {
                eprintln!("tide-bench: {flag} needs a whole number, as in {flag} 100000");
                std::process::exit(2);
            }
        }
    };
    let rows = value("--rows").unwrap_or(100_000);
    if let Some(i) = args.iter().position(|a| a == "--phase") {
        let dir = args
            .iter()
            .position(|a| a == "--dir")
            .map(|j| std::path::PathBuf::from(&args[j + 1]))
            .expect("--phase needs --dir");
        tide_bench::phase(&args[i + 1], rows, &dir);
        return;
    }
    let config = tide_bench::Config {
        rows,
        commits: value("--commits").unwrap_or(2_000),
        replicas: value("--replicas").unwrap_or(200) as usize,
        memory: if args.iter().any(|a| a == "--no-memory") {
            None
        } else {
            std::env::current_exe().ok()
        },
    };
    eprintln!(
        "tide-bench: {} rows, {} single-row commits, {} replicas at one hub (this takes a while for large N)",
        config.rows, config.commits, config.replicas
    );
    print!("{}", tide_bench::table(&tide_bench::run(&config)));
}
