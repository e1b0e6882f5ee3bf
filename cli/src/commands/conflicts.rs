//! `tide conflicts list | show | resolve`.

use anyhow::Result;
use serde_json::json;
use tide_core::{Replica, Resolution};

use super::Out;
use crate::cli::ConflictsCommand;
use crate::failure::usage;
use crate::render::{conflict_json, conflict_text, parse_value};

pub fn run(out: &Out, r: &mut Replica, cmd: ConflictsCommand) -> Result<u8> {
    match cmd {
        ConflictsCommand::List { table } => {
            let list: Vec<_> = r
                .conflicts()?
                .into_iter()
                .filter(|c| table.as_ref().is_none_or(|t| &c.table == t))
                .collect();
            if out.json {
                out.json(&json!(list.iter().map(conflict_json).collect::<Vec<_>>()));
            } else if list.is_empty() {
                out.say("No open conflicts.");
            } else {
                for c in &list {
                    print!("{}", conflict_text(c));
                }
                out.say(format!(
                    "{} open conflict(s). Every replica shows the same value; keep another with\n  tide conflicts resolve ID --keep CANDIDATE   (or --keep local|remote, --value COL=VALUE)",
                    list.len()
                ));
            }
        }
        ConflictsCommand::Show { id } => {
            let c = r.conflict(&id)?;
            if out.json {
                out.json(&conflict_json(&c));
            } else {
                print!("{}", conflict_text(&c));
            }
        }
        ConflictsCommand::Resolve {
            id,
            keep,
            value,
            all,
        } => {
            if all {
                if keep.as_deref() != Some("winner") {
                    return Err(usage(
                        "--all resolves only with --keep winner",
                        Some("tide conflicts resolve --all --keep winner"),
                    ));
                }
                let list = r.conflicts()?;
                for c in &list {
                    r.resolve(&c.id, Resolution::KeepWinner)?;
                }
                out.say(format!("Resolved {} conflict(s), keeping what every replica showed. The resolutions sync like any write.", list.len()));
                return Ok(0);
            }
            let id = id.expect("clap requires an id unless --all");
            let conflict = r.conflict(&id)?;
            let resolution = match (keep.as_deref(), value) {
                (_, Some(v)) => {
                    let (col, val) = v.split_once('=').ok_or_else(|| {
                        usage(
                            format!("--value {v:?} is not COL=VALUE"),
                            Some("for example --value status=repaired"),
                        )
                    })?;
                    if conflict.column.as_deref() != Some(col) {
                        return Err(usage(
                            format!(
                                "conflict {} is on {}, not on column {col}",
                                &conflict.id[..8],
                                conflict.column.as_deref().unwrap_or("the whole row")
                            ),
                            Some("tide conflicts show ID"),
                        ));
                    }
                    Resolution::Value(parse_value(val))
                }
                (Some("winner"), None) => Resolution::KeepWinner,
                (Some("held"), None) => {
                    let held = conflict.candidates.iter().find(|c| !c.winner);
                    match held {
                        Some(h)
                            if conflict.column.is_none()
                                && conflict.kind != tide_core::ConflictKind::Delete =>
                        {
                            Resolution::Keep(h.id.clone())
                        }
                        _ => {
                            return Err(usage(
                                format!(
                                    "conflict {} holds no row out of its table",
                                    &conflict.id[..8]
                                ),
                                Some(
                                    "--keep held is for constraint conflicts; tide conflicts show ID lists the candidates",
                                ),
                            ));
                        }
                    }
                }
                (Some(side @ ("local" | "remote")), None) => {
                    let want_local = side == "local";
                    let matching: Vec<_> = conflict
                        .candidates
                        .iter()
                        .filter(|c| c.local == want_local)
                        .collect();
                    match matching.as_slice() {
                        [one] => Resolution::Keep(one.id.clone()),
                        [] => {
                            return Err(usage(
                                format!("no {side} candidate in conflict {}", &conflict.id[..8]),
                                Some("tide conflicts show ID; keep a candidate by its id"),
                            ));
                        }
                        _ => {
                            return Err(usage(
                                format!(
                                    "several {side} candidates in conflict {}",
                                    &conflict.id[..8]
                                ),
                                Some("tide conflicts show ID; keep a candidate by its id"),
                            ));
                        }
                    }
                }
                (Some(candidate), None) => Resolution::Keep(candidate.to_string()),
                (None, None) => unreachable!("clap requires --keep or --value"),
            };
            let change = r.resolve(&conflict.id, resolution)?;
            out.say(format!(
                "Resolved {} with change #{}; it closes the conflict on every replica that receives it (next export).",
                &conflict.id[..8],
                change.seq
            ));
        }
    }
    Ok(0)
}
