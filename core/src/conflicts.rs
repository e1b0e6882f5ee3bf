//! Listing and resolving conflicts.
//!
//! A conflict is a cell with several heads holding different values (kinds `update` and
//! `insert`), a row both deleted and written concurrently (`delete`), or a row held out
//! of its table by a constraint (`unique`, `foreign_key`, `check`, `not_null`). Resolving
//! is an ordinary new change whose predecessors are all the heads; it syncs like any
//! write and closes the conflict on every replica that applies it.
//!
//! A constraint conflict offers two sides. With a row in the way (`unique`): keep the
//! row that holds the slot (the winner) and discard the held one, or keep the held row
//! and discard the other. With no row in the way, the held row is the only candidate and
//! the table without it is what shows: keeping the winner discards the held row; keeping
//! the held row brings back, for `foreign_key`, every parent it refers to that was
//! deleted here (re-inserted with the values it had), after which the row returns by
//! itself. A row held by `check` or `not_null` returns once someone writes values that
//! satisfy the constraint.

use rusqlite::{OptionalExtension, params};

use crate::change::{CellWrite, Lineage, OpKind, RowOp, TableOps};
use crate::error::{Error, Result};
use crate::ids::{ChangeId, hex};
use crate::merge::{CONSTRAINT_CELL, HELD_FOREIGN_KEY, Merger};
use crate::replica::{Replica, origins_map};
use crate::rowmeta::{CellValues, ROW, RowMeta, Version};
use crate::schema::{self, TableInfo};
use crate::value::{Value, decode_key};

/// A conflict, as every replica names and shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// 32 hex characters, derived from where the conflict is and its candidates.
    pub id: String,
    /// Table name.
    pub table: String,
    /// Primary key values of the row.
    pub key: Vec<Value>,
    /// The column, or `None` for a row-level conflict (delete or constraint).
    pub column: Option<String>,
    /// `update`, `insert`, `delete`, `unique`, `foreign_key`, `check` or `not_null`.
    pub kind: String,
    /// Every candidate, the provisional winner (the value shown now) first, then in the
    /// total order every replica uses.
    pub candidates: Vec<Candidate>,
}

/// One candidate value of a conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The change that wrote it, written `origin-hex:seq`; pass it to `resolve`.
    pub id: String,
    /// The change that wrote it.
    pub change: ChangeId,
    /// The writer's name, as known here.
    pub origin_name: String,
    /// True when this replica wrote it.
    pub local: bool,
    /// The writer's hybrid logical clock (milliseconds since 1970 in the high 48 bits).
    pub hlc: u64,
    /// The value: a cell value, `None` for a deletion.
    pub value: Option<Value>,
    /// True for the candidate shown now (the provisional winner).
    pub winner: bool,
}

/// How to resolve a conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Keep the candidate with this id (or unique id prefix).
    Keep(String),
    /// Keep the provisional winner.
    KeepWinner,
    /// Write this value instead (cell conflicts only).
    Value(Value),
}

impl Candidate {
    fn new(
        replica: &Replica,
        change: ChangeId,
        hlc: u64,
        value: Option<Value>,
        winner: bool,
    ) -> Result<Candidate> {
        let name: String = replica
            .conn
            .query_row(
                "SELECT name FROM _tide_origins WHERE id=?1",
                [&change.origin.0[..]],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or_default();
        Ok(Candidate {
            id: format!("{}:{}", change.origin.to_hex(), change.seq),
            change,
            origin_name: name,
            local: replica.id().ok() == Some(change.origin),
            hlc,
            value,
            winner,
        })
    }
}

impl Replica {
    /// Every open conflict, ordered by table, key and column.
    pub fn conflicts(&self) -> Result<Vec<Conflict>> {
        type Row = (Vec<u8>, i64, Vec<u8>, i64, String);
        let rows: Vec<Row> = self
            .conn
            .prepare("SELECT id, tid, key, col, kind FROM _tide_conflicts ORDER BY tid, key, col")?
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let tables = schema::tracked_tables(&self.conn)?;
        let mut out = Vec::new();
        for (id, tid, key, col, kind) in rows {
            let Some(t) = tables.iter().find(|t| t.tid == tid) else {
                continue;
            };
            out.push(self.describe(t, &hex(&id), &key, col, kind)?);
        }
        Ok(out)
    }

    /// One conflict by id or unique id prefix.
    pub fn conflict(&self, id: &str) -> Result<Conflict> {
        let id = id.trim().to_ascii_lowercase();
        if id.is_empty() {
            // An empty prefix would name whichever conflict happens to be alone.
            return Err(Error::UnknownConflict(id));
        }
        let all = self.conflicts()?;
        let mut found: Vec<Conflict> = match all.iter().position(|c| c.id == id) {
            Some(i) => vec![all[i].clone()],
            None => all.into_iter().filter(|c| c.id.starts_with(&id)).collect(),
        };
        match found.len() {
            0 => Err(Error::UnknownConflict(id)),
            1 => Ok(found.remove(0)),
            _ => Err(Error::AmbiguousConflict(id)),
        }
    }

    fn describe(
        &self,
        t: &TableInfo,
        id: &str,
        key_bytes: &[u8],
        col: i64,
        kind: String,
    ) -> Result<Conflict> {
        let origins = origins_map(&self.conn)?;
        let merger = Merger::new(&self.conn, origins);
        let m = merger
            .load_meta(t, key_bytes)?
            .unwrap_or_else(|| RowMeta::new(t.columns.len()));
        let key = decode_key(key_bytes)?;
        let current = merger.read_row(t, &key)?;
        let (kept, _) = merger.stored_values(t, key_bytes)?;
        let mut candidates = Vec::new();
        let cell = if col == CONSTRAINT_CELL {
            ROW
        } else {
            col as usize
        };
        let winner = m.winner(cell, &merger.origins);
        let cid = |h: &Version| ChangeId {
            origin: merger.origins[&h.origin],
            seq: h.seq,
        };
        let view = RowView {
            t,
            key_bytes,
            m: &m,
            origins: &merger.origins,
            current: current.as_deref(),
            kept: &kept,
        };
        if col == CONSTRAINT_CELL {
            // The held row against the row that keeps the slot.
            let held_values = self.row_values(&RowView {
                current: None,
                ..view
            })?;
            if let Some(w) = winner {
                candidates.push(Candidate::new(
                    self,
                    cid(&w),
                    w.hlc,
                    Some(row_value(&held_values)),
                    false,
                )?);
            }
            let blocker: Option<Vec<u8>> = self
                .conn
                .query_row(
                    "SELECT blocker FROM _tide_held WHERE tid=?1 AND key=?2",
                    params![t.tid, key_bytes],
                    |r| r.get(0),
                )
                .optional()?
                .flatten();
            if let Some(b) = blocker
                && let Some(mb) = merger.load_meta(t, &b)?
                && let Some(wb) = mb.winner(ROW, &merger.origins)
            {
                let bkey = decode_key(&b)?;
                let values = merger.read_row(t, &bkey)?.unwrap_or_default();
                let mut full = bkey.clone();
                full.extend(values);
                candidates.push(Candidate::new(
                    self,
                    cid(&wb),
                    wb.hlc,
                    Some(row_value(&full)),
                    true,
                )?);
            }
        } else {
            for h in &m.cells[cell] {
                let value = if cell == ROW {
                    h.alive.then(|| Value::text("(row kept)"))
                } else {
                    Some(self.head_value(&view, cell, h)?)
                };
                let is_winner = winner.map(|w| w.vref()) == Some(h.vref());
                candidates.push(Candidate::new(self, cid(h), h.hlc, value, is_winner)?);
            }
        }
        // The same order everywhere: the provisional winner first, then down the total order.
        candidates.sort_by_key(|c| std::cmp::Reverse((c.winner, c.hlc, c.change)));
        Ok(Conflict {
            id: id.to_string(),
            table: t.name.clone(),
            key,
            column: (col > 0).then(|| t.columns[col as usize - 1].clone()),
            kind,
            candidates,
        })
    }

    fn head_value(&self, row: &RowView<'_>, cell: usize, h: &Version) -> Result<Value> {
        let at = (cell, h.origin, h.seq);
        if let Some((_, v)) = row.kept.iter().find(|(k, _)| *k == at) {
            return Ok(v.clone());
        }
        if row.m.materialized(row.origins)
            && row.m.winner(cell, row.origins).map(|w| w.vref()) == Some(h.vref())
        {
            return Ok(row
                .current
                .map(|r| r[cell - 1].clone())
                .unwrap_or(Value::Null));
        }
        Ok(Value::Null)
    }

    /// The whole row (key, then columns) as tide would materialize it.
    fn row_values(&self, row: &RowView<'_>) -> Result<Vec<Value>> {
        let mut out = decode_key(row.key_bytes)?;
        for c in 1..=row.t.columns.len() {
            match row.m.winner(c, row.origins) {
                Some(w) => out.push(self.head_value(row, c, &w)?),
                None => out.push(Value::Null),
            }
        }
        Ok(out)
    }

    /// Resolves conflict `id` (or a unique prefix of it) with a new change, applied here
    /// at once and synced like any write. Returns the change's id.
    pub fn resolve(&mut self, id: &str, resolution: Resolution) -> Result<ChangeId> {
        let secret = self.secret_for_sealing()?;
        // One IMMEDIATE transaction from sealing pending writes to applying the
        // resolution: nothing read here can change underneath.
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )?;
        let sealed = crate::seal::seal_pending(&tx, &secret)?;
        let conflict = self.conflict(id)?;
        let tables = schema::tracked_tables(&self.conn)?;
        let t = tables
            .iter()
            .find(|t| t.name == conflict.table)
            .ok_or_else(|| Error::NotTracked(conflict.table.clone()))?;
        let origins = origins_map(&self.conn)?;
        let merger = Merger::new(&self.conn, origins.clone());
        let key_bytes = crate::value::encode_key(&conflict.key);
        let m = merger
            .load_meta(t, &key_bytes)?
            .unwrap_or_else(|| RowMeta::new(t.columns.len()));
        let chosen = match &resolution {
            Resolution::Keep(c) => {
                let c = c.trim().to_ascii_lowercase();
                // `ORIGIN:SEQ` abbreviates the origin only: `…:1` never names `…:12`, so a
                // candidate that is gone is not mistaken for a later one.
                let matching: Vec<&Candidate> = conflict
                    .candidates
                    .iter()
                    .filter(|x| match (c.split_once(':'), x.id.split_once(':')) {
                        (Some((origin, seq)), Some((xo, xs))) => {
                            !origin.is_empty() && xo.starts_with(origin) && xs == seq
                        }
                        _ => !c.is_empty() && x.id.starts_with(&c),
                    })
                    .collect();
                match matching.as_slice() {
                    [one] => Some((*one).clone()),
                    [] => {
                        return Err(Error::UnknownCandidate {
                            conflict: conflict.id.clone(),
                            candidate: c,
                        });
                    }
                    _ => return Err(Error::AmbiguousConflict(c)),
                }
            }
            Resolution::KeepWinner => conflict.candidates.iter().find(|c| c.winner).cloned(),
            Resolution::Value(_) => None,
        };
        let lineage = m.birth(&origins).map(|b| Lineage {
            change: ChangeId {
                origin: origins[&b.origin],
                seq: b.seq,
            },
            hlc: b.hlc,
        });
        let to_id = |h: &Version| ChangeId {
            origin: origins[&h.origin],
            seq: h.seq,
        };
        let all = |cell: usize| m.cells[cell].iter().map(to_id).collect::<Vec<_>>();
        let alive = m.cells[ROW]
            .iter()
            .filter(|h| h.alive)
            .map(to_id)
            .collect::<Vec<_>>();
        let mut ops: Vec<(Vec<Value>, RowOp)> = Vec::new();
        // Rows of other tables the resolution brings back (a held row's parents).
        let mut parents: Vec<(&TableInfo, RowOp)> = Vec::new();
        match conflict.column.as_ref() {
            Some(col) => {
                let c = t
                    .columns
                    .iter()
                    .position(|x| x == col)
                    .expect("conflict columns are tracked columns");
                let value = match (&resolution, &chosen) {
                    (Resolution::Value(v), _) => v.clone(),
                    (_, Some(cand)) => cand.value.clone().unwrap_or(Value::Null),
                    _ => return Err(Error::UnknownConflict(id.into())),
                };
                let live = m.materialized(&origins);
                let kind = if live { OpKind::Update } else { OpKind::Delete };
                let row_preds = if live {
                    alive
                } else {
                    m.cells[ROW]
                        .iter()
                        .filter(|h| !h.alive)
                        .map(to_id)
                        .collect()
                };
                ops.push((
                    conflict.key.clone(),
                    RowOp {
                        kind,
                        key: conflict.key.clone(),
                        row_preds,
                        lineage: if kind == OpKind::Update {
                            lineage
                        } else {
                            None
                        },
                        cells: vec![CellWrite {
                            column: c,
                            value,
                            preds: all(c + 1),
                        }],
                    },
                ));
            }
            None if conflict.kind == "delete" => {
                let Some(cand) = chosen else {
                    return Err(Error::UnknownCandidate {
                        conflict: conflict.id.clone(),
                        candidate: String::new(),
                    });
                };
                let kind = if cand.value.is_some() {
                    OpKind::Update
                } else {
                    OpKind::Delete
                };
                ops.push((
                    conflict.key.clone(),
                    RowOp {
                        kind,
                        key: conflict.key.clone(),
                        row_preds: all(ROW),
                        lineage: if kind == OpKind::Update {
                            lineage
                        } else {
                            None
                        },
                        cells: vec![],
                    },
                ));
            }
            None => {
                // A constraint conflict: keep one row, delete the other. Without a row
                // holding the slot (foreign key, CHECK, NOT NULL) the choice is to discard
                // the held row, or to fix what it breaks (then it comes back by itself).
                let held_wins = match (&resolution, &chosen) {
                    (Resolution::Value(_), _) => {
                        return Err(Error::CannotResolve {
                            conflict: conflict.id.clone(),
                            reason: "a whole row is held; keep one of the candidates".into(),
                        });
                    }
                    (Resolution::KeepWinner, _) => false,
                    (Resolution::Keep(_), Some(cand)) => !cand.winner,
                    (Resolution::Keep(_), None) => unreachable!("Keep found its candidate above"),
                };
                let has_blocker = conflict.candidates.len() > 1;
                if held_wins && !has_blocker && conflict.kind == HELD_FOREIGN_KEY {
                    // Keeping a row held for a missing parent brings the parent back;
                    // settling after the apply then releases the row.
                    parents =
                        self.parents_to_restore(&conflict, t, &key_bytes, &m, &merger, &tables)?;
                } else if held_wins && !has_blocker {
                    return Err(Error::CannotResolve {
                        conflict: conflict.id.clone(),
                        reason: format!(
                            "the row breaks a {} constraint on its own; fix what it refers to or its values \
                             and it returns by itself, or discard it by keeping the winner",
                            conflict.kind
                        ),
                    });
                }
                if held_wins && has_blocker {
                    let blocker: Option<Vec<u8>> = self
                        .conn
                        .query_row(
                            "SELECT blocker FROM _tide_held WHERE tid=?1 AND key=?2",
                            params![t.tid, &key_bytes],
                            |r| r.get(0),
                        )
                        .optional()?
                        .flatten();
                    if let Some(b) = blocker
                        && let Some(mb) = merger.load_meta(t, &b)?
                    {
                        let bkey = decode_key(&b)?;
                        let preds = mb.cells[ROW]
                            .iter()
                            .filter(|h| h.alive)
                            .map(to_id)
                            .collect();
                        ops.push((
                            bkey.clone(),
                            RowOp {
                                kind: OpKind::Delete,
                                key: bkey,
                                row_preds: preds,
                                lineage: None,
                                cells: vec![],
                            },
                        ));
                    }
                } else if !held_wins {
                    ops.push((
                        conflict.key.clone(),
                        RowOp {
                            kind: OpKind::Delete,
                            key: conflict.key.clone(),
                            row_preds: all(ROW),
                            lineage: None,
                            cells: vec![],
                        },
                    ));
                }
            }
        }
        if ops.is_empty() && parents.is_empty() {
            return Err(Error::CannotResolve {
                conflict: conflict.id.clone(),
                reason: "nothing to write: the row it names is gone".into(),
            });
        }
        let change = crate::log::append_own(
            &tx,
            &secret,
            |change| {
                // Parents first: the held row returns once they are back.
                for (pt, op) in parents {
                    match change.tables.iter_mut().find(|x| x.name == pt.name) {
                        Some(ops) => ops.rows.push(op),
                        None => change.tables.push(TableOps {
                            name: pt.name.clone(),
                            key_columns: pt.key_columns.clone(),
                            columns: pt.columns.clone(),
                            rows: vec![op],
                        }),
                    }
                }
                if !ops.is_empty() {
                    change.tables.push(TableOps {
                        name: t.name.clone(),
                        key_columns: t.key_columns.clone(),
                        columns: t.columns.clone(),
                        rows: ops.into_iter().map(|(_, op)| op).collect(),
                    });
                }
            },
            false,
        )?;
        let mut report = crate::log::ImportReport::default();
        crate::log::apply_ready(&tx, Default::default(), &mut report, None, None)?;
        tx.commit()?;
        debug_assert!(sealed.is_none_or(|s| s.seq < change.head.seq));
        self.record_sealed(change.head.seq)?;
        Ok(change.id())
    }
}

impl Replica {
    /// For a row held because a foreign key points at no row: the op that brings back
    /// each missing parent, as a person would by inserting it again with the values it
    /// had (an insert over every head of its existence, each cell over the value it
    /// repeats, so other candidates of its cells stay). Refused, with
    /// what to do instead, when a parent cannot be brought back that way: its table is
    /// not tracked, the key refers to columns other than its primary key, it never was
    /// here, or it is held itself.
    fn parents_to_restore<'t>(
        &self,
        conflict: &Conflict,
        t: &TableInfo,
        key_bytes: &[u8],
        m: &RowMeta,
        merger: &Merger<'_>,
        tables: &'t [TableInfo],
    ) -> Result<Vec<(&'t TableInfo, RowOp)>> {
        let refuse = |reason: String| Error::CannotResolve {
            conflict: conflict.id.clone(),
            reason,
        };
        let (kept, _) = merger.stored_values(t, key_bytes)?;
        let row = self.row_values(&RowView {
            t,
            key_bytes,
            m,
            origins: &merger.origins,
            current: None,
            kept: &kept,
        })?;
        let names: Vec<&String> = t.key_columns.iter().chain(&t.columns).collect();
        let value_of = |col: &str| names.iter().position(|n| *n == col).map(|i| &row[i]);
        let mut keys: Vec<ForeignKey> = Vec::new();
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, \"table\", \"from\", \"to\" FROM pragma_foreign_key_list(?1) ORDER BY id, seq",
        )?;
        let mut rows = stmt.query([&t.name])?;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            if keys.last().is_none_or(|k| k.0 != id) {
                keys.push((id, r.get(1)?, Vec::new(), Vec::new()));
            }
            let k = keys.last_mut().expect("pushed above");
            k.2.push(r.get(2)?);
            k.3.push(r.get(3)?);
        }
        let mut out = Vec::new();
        for (_, parent, from, to) in keys {
            let values: Vec<Value> = from
                .iter()
                .map(|c| value_of(c).cloned().unwrap_or(Value::Null))
                .collect();
            if values.contains(&Value::Null) {
                continue; // a NULL reference needs no parent
            }
            let Some(pt) = tables.iter().find(|x| x.name.eq_ignore_ascii_case(&parent)) else {
                return Err(refuse(format!(
                    "its parent table {parent} is not tracked; add the row it refers to by hand and it returns by itself"
                )));
            };
            // The parent's key, in its key's column order.
            let mut pkey = Vec::new();
            for kc in &pt.key_columns {
                let at = to.iter().enumerate().position(|(i, c)| {
                    c.as_deref()
                        .unwrap_or_else(|| pt.key_columns.get(i).map_or("", |s| s.as_str()))
                        .eq_ignore_ascii_case(kc)
                });
                match at {
                    Some(i) if to.len() == pt.key_columns.len() => pkey.push(values[i].clone()),
                    _ => {
                        return Err(refuse(format!(
                            "it refers to {parent} by columns other than its primary key; restore that row by hand and it returns by itself"
                        )));
                    }
                }
            }
            if merger.read_row(pt, &pkey)?.is_some() {
                continue;
            }
            let shown = pkey
                .iter()
                .map(Value::display)
                .collect::<Vec<_>>()
                .join(", ");
            let pkey_bytes = crate::value::encode_key(&pkey);
            let Some(pm) = merger.load_meta(pt, &pkey_bytes)? else {
                return Err(refuse(format!(
                    "the row it refers to, {parent} [{shown}], was never here; add it by hand and the held row returns by itself"
                )));
            };
            if pm.held {
                return Err(refuse(format!(
                    "the row it refers to, {parent} [{shown}], is held itself; resolve its conflict first"
                )));
            }
            let id = |h: &Version| ChangeId {
                origin: merger.origins[&h.origin],
                seq: h.seq,
            };
            let (pkept, _) = merger.stored_values(pt, &pkey_bytes)?;
            let pvalues = self.row_values(&RowView {
                t: pt,
                key_bytes: &pkey_bytes,
                m: &pm,
                origins: &merger.origins,
                current: None,
                kept: &pkept,
            })?;
            let nkey = pt.key_columns.len();
            let cells = (0..pt.columns.len())
                .map(|c| CellWrite {
                    column: c,
                    value: pvalues[nkey + c].clone(),
                    // The value brought back overwrites the one it repeats; any other
                    // candidate of that cell stays.
                    preds: pm.winner(c + 1, &merger.origins).iter().map(id).collect(),
                })
                .collect();
            out.push((
                pt,
                RowOp {
                    kind: OpKind::Insert,
                    key: pkey,
                    row_preds: pm.cells[ROW].iter().map(id).collect(),
                    lineage: None,
                    cells,
                },
            ));
        }
        if out.is_empty() {
            return Err(refuse(
                "every row it refers to is here; it returns at the next import or seal".into(),
            ));
        }
        Ok(out)
    }
}

/// A foreign key as SQLite lists it: its id, the parent table, the child's columns and
/// the parent's (`None`: the parent's primary key), in key order.
type ForeignKey = (i64, String, Vec<String>, Vec<Option<String>>);

/// One row's metadata and visible values, for reading candidate values.
#[derive(Clone, Copy)]
struct RowView<'a> {
    t: &'a TableInfo,
    key_bytes: &'a [u8],
    m: &'a RowMeta,
    origins: &'a crate::rowmeta::Origins,
    current: Option<&'a [Value]>,
    /// Values of the heads that are not visible.
    kept: &'a CellValues,
}

/// A whole row shown as one value (for constraint conflicts): its values joined.
fn row_value(values: &[Value]) -> Value {
    Value::text(
        values
            .iter()
            .map(Value::display)
            .collect::<Vec<_>>()
            .join(", "),
    )
}
