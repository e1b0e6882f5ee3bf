//! `cargo run --release -p tide-bench -- [--rows N] [--commits M] [--no-memory]`
//!
//! Prints a Markdown table; every figure is a ratio or rate against plain SQLite in the
//! same run.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
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
        memory: if args.iter().any(|a| a == "--no-memory") {
            None
        } else {
            std::env::current_exe().ok()
        },
    };
    eprintln!(
        "tide-bench: {} rows, {} single-row commits (this takes a while for large N)",
        config.rows, config.commits
    );
    print!("{}", tide_bench::table(&tide_bench::run(&config)));
}
