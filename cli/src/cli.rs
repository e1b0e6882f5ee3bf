//! Arguments, parsed once. Every command's help ends with an example.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The top-level example, shared by `-h` and `--help`.
macro_rules! example {
    () => {
        "Example, on a field laptop and at headquarters:
  tide --db field.db init --name field
  tide --db field.db track sites
  tide --db field.db bundle export --peer hq -o to-hq.tide
  tide --db hq.db bundle import to-hq.tide
  tide --db hq.db conflicts list

Start with `tide demo` to watch the whole story in a temporary folder."
    };
}

#[derive(Parser, Debug)]
#[command(
    name = "tide",
    version,
    about = "Offline-first sync for SQLite: signed change bundles, conflicts kept, never lost",
    long_about = "tide captures the writes your application makes to its own SQLite tables, seals them \
into a signed change log, and exchanges changes with peers as .tide bundle files (USB stick, e-mail, \
shared folder). Concurrent edits are never dropped: every replica shows the same winner and keeps the \
other values as conflicts until someone resolves them.",
    after_help = concat!(example!(), " `tide --help` lists exit codes and environment variables."),
    after_long_help = concat!(
        example!(),
        "

Environment: TIDE_DB (the database, like --db), TIDE_HOME (the key store folder),
TIDE_PASSPHRASE (a bundle passphrase; never pass one as an argument).

",
        "Exit codes:
  0  success (an import that records new conflicts succeeds too)
  1  internal error (disk, database, a bug; `tide doctor` finding a failed check)
  2  usage error, nothing was changed: a wrong flag or size, no --db, a database that is
     missing, not SQLite or never initialised (`tide init`), a file argument that is
     missing or a folder, an unknown peer, table or conflict
  3  input rejected, nothing was changed: a damaged or empty bundle or card, bad
     signature, tampering, truncation, wrong key, unknown sender, a bundle addressed to
     another replica, card keys that are not valid keys
  4  prerequisites missing: the bundle needs changes this replica does not have yet
  5  conflicts open (`tide status --check`)"
    )
)]
pub struct Cli {
    /// The replica's database file [default: $TIDE_DB].
    #[arg(long, global = true, env = "TIDE_DB", value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// Machine-readable output on stdout (field names are listed in each command's help).
    #[arg(long, global = true)]
    pub json: bool,
    /// Fewer messages on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More messages on stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Give a database a tide identity and metadata (creates the file if absent).
    #[command(
        after_help = "Example:\n  tide --db app.db init --name field-laptop\n\nA copied or restored database refuses to write under its old identity; give it its own with\n  tide --db copy.db init --new-identity"
    )]
    Init {
        /// A name for this replica, shown to peers.
        #[arg(long)]
        name: Option<String>,
        /// Replace the identity (for a copied or restored database).
        #[arg(long)]
        new_identity: bool,
    },
    /// Start capturing every write to these tables, from any program.
    #[command(
        after_help = "Example:\n  tide --db app.db track sites visits\n\nTables need a declared PRIMARY KEY; AUTOINCREMENT tables are refused."
    )]
    Track {
        /// Table names.
        #[arg(required = true)]
        tables: Vec<String>,
    },
    /// Stop capturing writes to a table (its history stays).
    #[command(after_help = "Example:\n  tide --db app.db untrack scratch")]
    Untrack { table: String },
    /// Run a schema migration with capture paused (for what SQLite refuses while tide tracks a table).
    #[command(
        long_about = "Run a schema migration with capture paused.\n\n\
tide follows most migrations by itself, whatever tool runs them (added, renamed and \
dropped columns, rebuilt tables). SQLite refuses a few statements while tide's capture \
triggers name a column, such as ALTER TABLE ... DROP COLUMN: run those through this \
command. It removes the triggers, runs the SQL in one transaction (leave out BEGIN and \
COMMIT), then puts the triggers back for the new schema and sends the rows the \
migration wrote as ordinary changes. If the SQL fails, nothing changed.",
        after_help = "Examples:\n  tide --db app.db migrate 'ALTER TABLE notes DROP COLUMN draft'\n  tide --db app.db migrate --file migrations/0007.sql"
    )]
    Migrate {
        /// The SQL to run (one or more statements).
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        sql: Option<String>,
        /// Read the SQL from this file instead.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Identity, tracked tables, peers and what they lack, open conflicts, quarantine.
    #[command(
        after_help = "Example:\n  tide --db app.db status\n  tide --db app.db status --json   # fields: id, name, db, tracked, schema_epochs{table: n}, stopped[{table,why}], schema_differences[{table,peer,name,seq,lacks,ahead,renamed[{theirs,here}],dropped}], sealed, peers[{id,name,lacks,last_synced}], conflicts, quarantined, waiting"
    )]
    Status {
        /// Exit with code 5 when conflicts are open.
        #[arg(long)]
        check: bool,
    },
    /// This replica's id, or its card to give to peers.
    #[command(
        after_help = "Example:\n  tide --db app.db id --card > field.card\n  # at headquarters:\n  tide --db hq.db peers add field.card"
    )]
    Id {
        /// Print the card (id, name and public keys) on one line.
        #[arg(long)]
        card: bool,
    },
    /// Trust other replicas: add their cards, list, show, remove.
    #[command(
        subcommand,
        after_help = "Example:\n  tide --db hq.db peers add field.card\n  tide --db hq.db peers list"
    )]
    Peers(PeersCommand),
    /// Write, read, inspect and verify .tide bundle files.
    #[command(
        subcommand,
        after_help = "Example:\n  tide --db field.db bundle export --peer hq -o to-hq.tide\n  tide --db hq.db bundle import to-hq.tide"
    )]
    Bundle(BundleCommand),
    /// List, show and resolve conflicts.
    #[command(
        subcommand,
        after_help = "Example:\n  tide --db hq.db conflicts list\n  tide --db hq.db conflicts resolve 7f3a --keep remote"
    )]
    Conflicts(ConflictsCommand),
    /// The change log, newest first.
    #[command(
        after_help = "Example:\n  tide --db app.db log --limit 20\n  tide --db app.db log --origin hq --table sites --json   # fields: origin, origin_name, seq, hlc, tables, ops, state"
    )]
    Log {
        /// Only changes by this replica (name or id prefix).
        #[arg(long)]
        origin: Option<String>,
        /// Only changes touching this table.
        #[arg(long)]
        table: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Sync through a folder (a USB stick, a shared drive) or over a pipe.
    #[command(
        long_about = "Sync through a folder, or over a pipe to another tide.\n\n\
A folder is a mailbox (TARGET is its path): each replica that visits it imports what it \
lacks, writes what its peers lack (each change once, whoever needs it), acknowledges, \
and deletes what every peer has acknowledged. Carry one stick around a site and every \
device syncs over time, each relaying for the others; a shared or network folder works \
the same way, with no lock. Files are written whole or not at all, so a stick pulled \
out mid-write loses nothing.\n\n\
For one-way links (a data diode), --send-only writes without ever reading what comes \
back and repeats each change in two drops, with a full refresh every tenth; \
--receive-only imports without writing to the folder and reports exactly which changes \
are missing.\n\n\
`-` as TARGET speaks the exchange on stdin/stdout, for the far end of a pipe; --command \
runs the near end: tide --db app.db sync --command 'ssh hq tide --db hq.db sync -'.",
        after_help = "Examples:\n  tide --db app.db sync /media/stick\n  tide --db app.db sync http://hub.example:7474 --watch\n  tide --db app.db sync /media/stick --watch\n  tide --db low.db sync /outbox --send-only\n  tide --db high.db sync /inbox --receive-only\n  tide --db app.db sync --command 'ssh hq tide --db hq.db sync -'\n\n--json fields: pages_received, changes_received, changes_applied, duplicates, quarantined, conflicts_opened, pages_sent, changes_sent, bytes_sent, pruned, garbage, left[{file,why}], missing[{origin,runs[[first,last]]}]"
    )]
    Sync {
        /// A folder (the mailbox is kept in FOLDER/tide-mailbox), a hub's URL (http://HOST:PORT), or `-` for stdin/stdout.
        #[arg(required_unless_present = "command", conflicts_with = "command")]
        target: Option<String>,
        /// Sync with the tide this shell command runs (`... sync -` at the far end).
        #[arg(long, value_name = "CMD")]
        command: Option<String>,
        /// Only write to the folder (the sending side of a one-way link).
        #[arg(long, conflicts_with = "receive_only")]
        send_only: bool,
        /// Only read from the folder, never write to it (the receiving side of a one-way link).
        #[arg(long)]
        receive_only: bool,
        /// Write pages encrypted to each peer instead of shared ones (one copy per peer).
        #[arg(long, conflicts_with = "receive_only")]
        encrypt: bool,
        /// Keep syncing whenever the folder or the database changes, until interrupted.
        #[arg(long)]
        watch: bool,
        /// With --watch, how often to look, in milliseconds.
        #[arg(long, default_value_t = 2000, value_name = "MS")]
        interval: u64,
        /// About how much a page holds (as 512K, 8M, 1G): an interrupted transfer costs at most one page.
        #[arg(long, default_value = "8M", value_name = "SIZE")]
        page_size: String,
    },
    /// Run a hub: replicas sync with it over HTTP (`tide sync http://HOST:PORT`).
    #[command(
        long_about = "Run a hub: a replica that other replicas sync with over HTTP.\n\n\
The hub relays: it holds and passes on every change, including those to tables it does \
not track. Every request is signed by the replica's key over a challenge from the hub \
and counted, so replays are refused; every answer is signed by the hub. A replica the \
hub does not know is refused and listed by `tide peers pending`; `tide peers accept ID` \
admits it. Put a TLS-terminating proxy in front of it for the open network.",
        after_help = "Example:\n  tide --db hub.db init --name hub\n  tide --db hub.db serve --listen 0.0.0.0:7474\n  tide --db field.db sync http://hub.example:7474"
    )]
    Serve {
        /// Address and port to listen on.
        #[arg(long, default_value = "127.0.0.1:7474", value_name = "ADDR")]
        listen: String,
    },
    /// Stream changes as they are sealed or applied, as JSON lines, until interrupted.
    #[command(
        after_help = "Example:\n  tide --db app.db watch | jq .\n\nEach line: {\"origin\",\"origin_name\",\"seq\",\"hlc\",\"tables\",\"ops\",\"state\"}"
    )]
    Watch {
        /// How often to look, in milliseconds.
        #[arg(long, default_value_t = 500)]
        interval: u64,
        /// Stop after this many lines.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Changes that could not be applied: list, retry, discard.
    #[command(
        subcommand,
        after_help = "Example:\n  tide --db hq.db quarantine list\n  tide --db hq.db quarantine retry"
    )]
    Quarantine(QuarantineCommand),
    /// Check every invariant this file can show; repair what is safe.
    #[command(
        after_help = "Example:\n  tide --db app.db doctor\n  tide --db app.db doctor --repair"
    )]
    Doctor {
        /// Re-create missing capture triggers.
        #[arg(long)]
        repair: bool,
    },
    /// The whole offline story, narrated, in a temporary folder.
    #[command(after_help = "Example:\n  tide demo")]
    Demo {
        /// Keep the folder (its path is printed) instead of removing it.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PeersCommand {
    /// Trust a replica: its card from a file, or - for stdin.
    #[command(after_help = "Example:\n  tide --db hq.db peers add field.card --name field-3")]
    Add {
        /// The card file (from `tide id --card`), or - for stdin.
        card: String,
        /// Call it this instead of the name on its card.
        #[arg(long)]
        name: Option<String>,
    },
    /// Every peer.
    #[command(
        after_help = "Example:\n  tide --db hq.db peers list --json   # fields: id, name, lacks"
    )]
    List,
    /// One peer: id, name, keys, what it has acknowledged.
    #[command(after_help = "Example:\n  tide --db hq.db peers show field-3")]
    Show { peer: String },
    /// Stop trusting a peer: its future changes are refused.
    #[command(after_help = "Example:\n  tide --db hq.db peers remove field-3")]
    Remove { peer: String },
    /// Replicas a hub refused because it did not know them, with their cards.
    #[command(
        after_help = "Example:\n  tide --db hub.db peers pending --json   # fields: id, name, first_seen, last_seen"
    )]
    Pending,
    /// Trust a pending replica (see `peers pending`): its next sync goes through.
    #[command(after_help = "Example:\n  tide --db hub.db peers accept 3f9a")]
    Accept {
        /// Its id (or the first characters of it), or the name on its card.
        peer: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum BundleCommand {
    /// Write every change a peer lacks (from every origin) as a bundle.
    #[command(
        after_help = "Examples:\n  tide --db field.db bundle export --peer hq -o to-hq.tide\n  tide --db field.db bundle export --peer hq --encrypt > to-hq.tide\n  tide --db field.db bundle export --peer hq --passphrase-file pass.txt --split 10M -o to-hq.tide"
    )]
    Export(ExportArgs),
    /// Verify and import bundles (files, parts in any order, or - for stdin).
    #[command(
        after_help = "Examples:\n  tide --db hq.db bundle import to-hq.tide\n  tide --db hq.db bundle import to-hq.tide.*.tidepart\n  tide --db hq.db bundle import --dry-run to-hq.tide"
    )]
    Import(ImportArgs),
    /// Show a bundle's header; no signature check, no database needed.
    #[command(
        after_help = "Example:\n  tide bundle inspect to-hq.tide --json   # fields: version, sender, recipient, encrypted, created_ms, changes, ops, image_size, body_size, ack, requires, provides, stanzas, prerequisites_missing (with --db)"
    )]
    Inspect { file: PathBuf },
    /// Check a bundle's signature (and, with --db, that its prerequisites are present).
    #[command(
        after_help = "Examples:\n  tide --db hq.db bundle verify to-hq.tide\n  tide bundle verify to-hq.tide --card field.card"
    )]
    Verify {
        file: PathBuf,
        /// The sender's card, when there is no database to know it from.
        #[arg(long)]
        card: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The peer it is for (name or id prefix).
    #[arg(long, required_unless_present = "all")]
    pub peer: Option<String>,
    /// Write here instead of stdout.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Encrypt to the peer's key (from its card).
    #[arg(long)]
    pub encrypt: bool,
    /// Encrypt under the passphrase in this file (also: $TIDE_PASSPHRASE, or --passphrase to be asked).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Encrypt under a passphrase read from $TIDE_PASSPHRASE or asked on the terminal.
    #[arg(long)]
    pub passphrase: bool,
    /// Cut into parts of at most this size (at least 1K; like 10M, 512K, 1G); needs -o.
    #[arg(long, value_name = "SIZE", requires = "output")]
    pub split: Option<String>,
    /// Everything, not only what the peer lacks.
    #[arg(long)]
    pub all: bool,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Bundle files or parts, or - for stdin.
    #[arg(required = true)]
    pub files: Vec<String>,
    /// The passphrase is in this file (also: $TIDE_PASSPHRASE, or asked on the terminal).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Verify and report without importing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Subcommand, Debug)]
pub enum ConflictsCommand {
    /// Every open conflict.
    #[command(
        after_help = "Example:\n  tide --db hq.db conflicts list --json\n\nJSON: an array of {id, table, key, column, kind, candidates: [{id, value, origin, origin_name, time, hlc, winner, local}]}.\nkind is update, insert, delete, unique, foreign_key, check or not_null; value is null for a deletion."
    )]
    List {
        /// Only this table.
        #[arg(long)]
        table: Option<String>,
    },
    /// One conflict with every candidate.
    #[command(after_help = "Example:\n  tide --db hq.db conflicts show 7f3a")]
    Show { id: String },
    /// Keep one candidate (or write a new value); the resolution syncs like any write.
    #[command(
        after_help = "Examples:\n  tide --db hq.db conflicts resolve 7f3a --keep remote\n  tide --db hq.db conflicts resolve 7f3a --keep 4c2a86fd:3\n  tide --db hq.db conflicts resolve 7f3a --value status=repaired\n  tide --db hq.db conflicts resolve 9b1e --keep held   # bring back a deleted parent\n  tide --db hq.db conflicts resolve --all --keep winner"
    )]
    Resolve {
        /// The conflict id (a unique prefix is enough).
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        /// local, remote, winner, held (the row a constraint keeps out of its table), or a
        /// candidate id (`ORIGIN:SEQ`; the origin may be shortened, as listings show it).
        #[arg(long, required_unless_present = "value")]
        keep: Option<String>,
        /// Write this value instead: COLUMN=VALUE (VALUE: NULL, 42, 1.5, x'00ff', or text).
        #[arg(long, value_name = "COL=VALUE", conflicts_with = "keep")]
        value: Option<String>,
        /// Every open conflict (with --keep winner).
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum QuarantineCommand {
    /// Changes held back, with their reason.
    #[command(
        after_help = "Example:\n  tide --db hq.db quarantine list --json   # fields: number, origin, seq, reason, detail"
    )]
    List,
    /// Try every quarantined change again (after adding a peer or tracking a table).
    #[command(
        after_help = "Example:\n  tide --db hq.db peers add field.card && tide --db hq.db quarantine retry"
    )]
    Retry,
    /// Drop one quarantined change for good.
    #[command(after_help = "Example:\n  tide --db hq.db quarantine discard 3")]
    Discard { number: i64 },
}
