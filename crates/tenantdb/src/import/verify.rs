//! Verification: for every tenant and imported table, the source's rows and the tenant's rows
//! must have the same count and the same content checksum (see [`TableDigest`]), and the
//! tenant must hold the record of this import.

use serde::Serialize;

use crate::catalog::TenantState;
use crate::error::{Context, Result};
use crate::fleet::Fleet;
use crate::import::cell::{Cell, TableDigest};
use crate::import::plan::ImportPlan;
use crate::import::stream::TenantRows;
use crate::import::write;
use crate::tenant_id::TenantId;

pub(crate) enum Check {
    Compared {
        id: TenantId,
        source: Vec<TableDigest>,
        tenant: Vec<TableDigest>,
        recorded: bool,
    },
    Deleted {
        id: TenantId,
    },
    Problem {
        id: TenantId,
        source: Vec<TableDigest>,
        problem: String,
    },
}

pub(crate) fn check_tenant(fleet: &Fleet, plan: &ImportPlan, rows: TenantRows) -> Check {
    let id = rows.id.clone();
    let mut source = vec![TableDigest::default(); plan.tables.len()];
    let complete = rows.for_each(|t, cells| {
        source[t].add(cells.iter().map(Cell::as_value_ref));
        Ok(())
    });
    let problem = |source: Vec<TableDigest>, problem: String| Check::Problem {
        id: id.clone(),
        source,
        problem,
    };
    match complete {
        Ok(true) => {}
        Ok(false) => {
            return problem(
                source,
                "the source stopped before this tenant was read".into(),
            );
        }
        Err(e) => return problem(source, e.to_string()),
    }
    match fleet.catalog().tenant(&id) {
        Ok(Some(r)) if r.state == TenantState::Active => {}
        Ok(Some(_)) => return Check::Deleted { id },
        Ok(None) => return problem(source, "the tenant does not exist (not imported)".into()),
        Err(e) => return problem(source, e.to_string()),
    }
    match read_tenant(fleet, plan, &id) {
        Ok((tenant, recorded)) => Check::Compared {
            id,
            source,
            tenant,
            recorded,
        },
        Err(e) => problem(source, e.to_string()),
    }
}

fn read_tenant(
    fleet: &Fleet,
    plan: &ImportPlan,
    id: &TenantId,
) -> Result<(Vec<TableDigest>, bool)> {
    let conn = write::open_read_only(&fleet.layout().tenant_db(id))?;
    let recorded = write::import_records(&conn)?
        .iter()
        .any(|(sha, _)| *sha == plan.source_sha256);
    let mut digests = vec![TableDigest::default(); plan.tables.len()];
    for (table, digest) in plan.tables.iter().zip(digests.iter_mut()) {
        let Some(sql) = table.tenant_sql().filter(|_| table.written()) else {
            continue;
        };
        let context = format!("reading the tenant's {}", table.table);
        let mut stmt = conn.prepare(&sql).context(context.clone())?;
        let width = stmt.column_count();
        let mut rows = stmt.query([]).context(context.clone())?;
        while let Some(row) = rows.next().context(context.clone())? {
            let values = (0..width)
                .map(|i| row.get_ref(i))
                .collect::<rusqlite::Result<Vec<_>>>()
                .context(context.clone())?;
            digest.add(values);
        }
    }
    Ok((digests, recorded))
}

/// Source and tenant totals for one table, over all tenants.
#[derive(Debug, Clone, Serialize)]
pub struct TableCheck {
    pub table: String,
    pub source_rows: u64,
    pub tenant_rows: u64,
    pub tenants_mismatched: usize,
}

/// One difference between the source and a tenant.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    pub tenant: TenantId,
    /// The table that differs; none when the whole tenant is in question.
    pub table: Option<String>,
    pub problem: String,
    pub source_rows: Option<u64>,
    pub tenant_rows: Option<u64>,
    pub source_checksum: Option<String>,
    pub tenant_checksum: Option<String>,
}

/// The outcome of comparing every tenant with the source.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub source: std::path::PathBuf,
    pub source_sha256: String,
    /// Tenants that have rows in the source.
    pub tenants: usize,
    /// Tenants whose every table matches the source and that record this import.
    pub matched: usize,
    /// Deleted tenants (or retired ids): not imported, so not compared.
    pub deleted: Vec<TenantId>,
    /// Rows compared, as counted in the source.
    pub rows: u64,
    pub tables: Vec<TableCheck>,
    pub mismatches: Vec<Mismatch>,
    pub ok: bool,
    pub seconds: f64,
}

impl VerifyReport {
    pub(crate) fn new(plan: &ImportPlan) -> VerifyReport {
        VerifyReport {
            source: plan.source.clone(),
            source_sha256: plan.source_sha256.clone(),
            tenants: plan.tenants.len(),
            matched: 0,
            deleted: Vec::new(),
            rows: 0,
            tables: plan
                .tables
                .iter()
                .filter(|t| t.written())
                .map(|t| TableCheck {
                    table: t.table.clone(),
                    source_rows: 0,
                    tenant_rows: 0,
                    tenants_mismatched: 0,
                })
                .collect(),
            mismatches: Vec::new(),
            ok: false,
            seconds: 0.0,
        }
    }

    pub(crate) fn record(&mut self, check: Check, plan: &ImportPlan) {
        let written: Vec<usize> = (0..plan.tables.len())
            .filter(|&t| plan.tables[t].written())
            .collect();
        match check {
            Check::Deleted { id } => self.deleted.push(id),
            Check::Problem {
                id,
                source,
                problem,
            } => {
                for (slot, &t) in written.iter().enumerate() {
                    self.tables[slot].source_rows += source[t].rows;
                    self.rows += source[t].rows;
                }
                self.mismatches.push(Mismatch {
                    tenant: id,
                    table: None,
                    problem,
                    source_rows: None,
                    tenant_rows: None,
                    source_checksum: None,
                    tenant_checksum: None,
                });
            }
            Check::Compared {
                id,
                source,
                tenant,
                recorded,
            } => {
                let mut all_match = true;
                for (slot, &t) in written.iter().enumerate() {
                    let (s, d) = (&source[t], &tenant[t]);
                    let totals = &mut self.tables[slot];
                    totals.source_rows += s.rows;
                    totals.tenant_rows += d.rows;
                    self.rows += s.rows;
                    if s == d {
                        continue;
                    }
                    all_match = false;
                    totals.tenants_mismatched += 1;
                    let problem = if s.rows != d.rows {
                        format!("{} rows in the source, {} in the tenant", s.rows, d.rows)
                    } else {
                        "same row count, different content".to_string()
                    };
                    self.mismatches.push(Mismatch {
                        tenant: id.clone(),
                        table: Some(plan.tables[t].table.clone()),
                        problem,
                        source_rows: Some(s.rows),
                        tenant_rows: Some(d.rows),
                        source_checksum: Some(s.checksum()),
                        tenant_checksum: Some(d.checksum()),
                    });
                }
                if !recorded {
                    all_match = false;
                    self.mismatches.push(Mismatch {
                        tenant: id.clone(),
                        table: None,
                        problem: "the tenant holds no record of this import (not imported, or \
                                  imported from another source)"
                            .into(),
                        source_rows: None,
                        tenant_rows: None,
                        source_checksum: None,
                        tenant_checksum: None,
                    });
                }
                self.matched += usize::from(all_match);
            }
        }
    }

    pub(crate) fn finish(&mut self) {
        self.deleted.sort();
        self.mismatches
            .sort_by(|a, b| (&a.tenant, &a.table).cmp(&(&b.tenant, &b.table)));
        self.ok = self.mismatches.is_empty();
    }
}
