//! What the doctor reports: one finding per check, what failed and which kind of way
//! out applies. Which command to run is for the caller to say.

/// One check of [`Replica::doctor`](crate::Replica::doctor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked.
    pub check: Check,
    /// True when it holds.
    pub ok: bool,
    /// What is wrong, for a person (`ok` when nothing is).
    pub detail: String,
    /// True when the doctor repaired it.
    pub repaired: bool,
    /// The way out when it fails.
    pub remedy: Remedy,
}

/// A check of the doctor, in the order it runs them. Its [`name`](Check::name) is what
/// the CLI prints and `--json` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Check {
    /// `sqlite integrity`: SQLite reads every page of the file. When it fails, no other
    /// check runs: they would read the damaged pages.
    FileIntact,
    /// `hash chains`: every stored change has its content hash, names the change before
    /// it, and has every chunk, whole (invariant 3).
    LogChain,
    /// `signatures`: every stored change from a known origin carries that origin's
    /// signature (invariant 7).
    Signatures,
    /// `rows match metadata`: every row's metadata and kept values read, a row tide holds
    /// live is in its table and no other is, and every spilled value is one a row names.
    RowsMatchMetadata,
    /// `shown values are the winners`: every table shows the values the merge says win.
    ShownValuesWin,
    /// `capture triggers`: every tracked table has its capture triggers (invariant 9).
    Triggers,
    /// `identity`: this file may seal under its identity (invariant 11).
    Identity,
    /// `schemas followed`: tide follows every tracked table's schema (none stopped
    /// capture, DESIGN.md §2.12). Its detail also gives each table's schema epoch and
    /// where peers' last changes show another schema.
    Schemas,
}

impl Check {
    /// Every check, in the order the doctor runs them.
    pub const ALL: [Check; 8] = [
        Check::FileIntact,
        Check::LogChain,
        Check::Signatures,
        Check::RowsMatchMetadata,
        Check::ShownValuesWin,
        Check::Triggers,
        Check::Identity,
        Check::Schemas,
    ];

    /// Its name, as printed and written in `--json` output.
    pub fn name(self) -> &'static str {
        match self {
            Check::FileIntact => "sqlite integrity",
            Check::LogChain => "hash chains",
            Check::Signatures => "signatures",
            Check::RowsMatchMetadata => "rows match metadata",
            Check::ShownValuesWin => "shown values are the winners",
            Check::Triggers => "capture triggers",
            Check::Identity => "identity",
            Check::Schemas => "schemas followed",
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// Compares with a printed name.
impl PartialEq<&str> for Check {
    fn eq(&self, name: &&str) -> bool {
        self.name() == *name
    }
}

/// The kind of way out of a failed check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Remedy {
    /// The doctor repairs it when asked to (`repair`): re-creating capture triggers.
    Repair,
    /// The file is damaged. Keep a copy of it as it is; restore the replica from a
    /// backup, or make a new replica and import from its peers, which hold every change
    /// this replica sent them.
    RestoreOrRebuild,
    /// The log or the tables differ from what tide wrote. Keep a copy of the file and
    /// report it; a new replica that imports from this one's peers holds every change
    /// they received.
    Report,
    /// The identity is not this file's to seal under, as when the file is a copy or a
    /// restored backup: it needs an identity of its own.
    NewIdentity,
    /// The database has no tide identity yet: it is to be initialized.
    Init,
    /// A table's capture stopped at a schema change tide cannot follow: once every
    /// replica has migrated, untrack it and track it again.
    Retrack,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_are_distinct_and_compare_with_text() {
        for (i, a) in Check::ALL.iter().enumerate() {
            assert_eq!(*a, a.name());
            assert_eq!(a.to_string(), a.name());
            for b in &Check::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
        assert_eq!(format!("{:<20}|", Check::Identity), "identity            |");
    }
}
