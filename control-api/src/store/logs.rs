//! The statements of decision-log storage (table `decision_logs`), written once for both
//! databases: batched idempotent inserts, the filtered newest-first query, and retention.

use sqlx::AnyPool;

use super::backend::Backend;
use super::{DecisionEvent, EventQuery, StoreError};

/// Rows per `INSERT`: 7 parameters each, under SQLite's oldest limit of 999 per statement.
const ROWS_PER_INSERT: usize = 64;
const COLUMNS: usize = 7;
const _: () = assert!(ROWS_PER_INSERT * COLUMNS < 999);

/// `INSERT ... VALUES (...), (...) ON CONFLICT (decision_id) DO NOTHING` for `rows` rows.
fn insert_statement(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO decision_logs (decision_id, bundle, revision, route, decision, timestamp_ms, event) VALUES ",
    );
    for r in 0..rows {
        let n = r * COLUMNS;
        let sep = if r == 0 { "" } else { ", " };
        sql.push_str(&format!(
            "{sep}(${}, ${}, ${}, ${}, ${}, ${}, ${})",
            n + 1,
            n + 2,
            n + 3,
            n + 4,
            n + 5,
            n + 6,
            n + 7
        ));
    }
    sql.push_str(" ON CONFLICT (decision_id) DO NOTHING");
    sql
}

/// Stores the events in one transaction; returns how many were new.
pub(super) async fn store(pool: &AnyPool, backend: &Backend, events: &[DecisionEvent]) -> Result<u64, StoreError> {
    if events.is_empty() {
        return Ok(0);
    }
    let mut tx = backend.begin_write(pool).await?;
    let mut stored = 0;
    for chunk in events.chunks(ROWS_PER_INSERT) {
        let sql = insert_statement(chunk.len());
        let mut q = sqlx::query(&sql);
        for e in chunk {
            q = q
                .bind(&e.decision_id)
                .bind(&e.bundle)
                .bind(&e.revision)
                .bind(&e.route)
                .bind(&e.decision)
                .bind(e.timestamp_ms)
                .bind(&e.event);
        }
        stored += q.execute(&mut *tx).await?.rows_affected();
    }
    tx.commit().await?;
    Ok(stored)
}

/// A value bound to a query built at run time.
enum Bind {
    Text(String),
    Int(i64),
}

/// The events matching `q`, newest first.
pub(super) async fn query(pool: &AnyPool, q: &EventQuery) -> Result<Vec<String>, StoreError> {
    let mut sql = String::from("SELECT event FROM decision_logs WHERE 1 = 1");
    let mut binds = Vec::new();
    let mut param = |sql: &mut String, clause: &str, b: Bind| {
        binds.push(b);
        sql.push_str(&clause.replace('?', &format!("${}", binds.len())));
    };
    if !q.bundles.is_empty() {
        sql.push_str(" AND bundle IN (");
        for (i, b) in q.bundles.iter().enumerate() {
            param(&mut sql, if i == 0 { "?" } else { ", ?" }, Bind::Text(b.clone()));
        }
        sql.push(')');
    }
    let columns =
        [("route", &q.route), ("decision", &q.decision), ("revision", &q.revision), ("decision_id", &q.decision_id)];
    for (column, value) in columns {
        if let Some(v) = value {
            param(&mut sql, &format!(" AND {column} = ?"), Bind::Text(v.clone()));
        }
    }
    if let Some(t) = q.since_ms {
        param(&mut sql, " AND timestamp_ms >= ?", Bind::Int(t));
    }
    if let Some(t) = q.until_ms {
        param(&mut sql, " AND timestamp_ms <= ?", Bind::Int(t));
    }
    if let Some(n) = q.max_event_bytes {
        param(&mut sql, " AND LENGTH(event) <= ?", Bind::Int(i64::from(n)));
    }
    param(&mut sql, " ORDER BY timestamp_ms DESC, id DESC LIMIT ?", Bind::Int(i64::from(q.limit)));
    let mut query = sqlx::query_scalar::<_, String>(&sql);
    for b in binds {
        query = match b {
            Bind::Text(t) => query.bind(t),
            Bind::Int(i) => query.bind(i),
        };
    }
    Ok(query.fetch_all(pool).await?)
}

const OLDEST_KEPT: &str =
    "SELECT timestamp_ms, id FROM decision_logs ORDER BY timestamp_ms DESC, id DESC LIMIT 1 OFFSET $1";
const DELETE_FROM: &str = "DELETE FROM decision_logs WHERE timestamp_ms < $1 OR (timestamp_ms = $1 AND id <= $2)";

/// Deletes what retention no longer keeps: events before `before_ms`, then beyond the newest
/// `keep` (when given).
pub(super) async fn prune(
    pool: &AnyPool,
    backend: &Backend,
    before_ms: i64,
    keep: Option<u64>,
) -> Result<u64, StoreError> {
    let mut tx = backend.begin_write(pool).await?;
    let mut deleted = sqlx::query("DELETE FROM decision_logs WHERE timestamp_ms < $1")
        .bind(before_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if let Some(keep) = keep {
        let offset = i64::try_from(keep).unwrap_or(i64::MAX);
        // The newest event past the `keep` newest: it and everything older go.
        let first_gone: Option<(i64, i64)> = sqlx::query_as(OLDEST_KEPT).bind(offset).fetch_optional(&mut *tx).await?;
        if let Some((at, id)) = first_gone {
            deleted += sqlx::query(DELETE_FROM).bind(at).bind(id).execute(&mut *tx).await?.rows_affected();
        }
    }
    tx.commit().await?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_insert_numbers_seven_parameters_per_row() {
        let sql = insert_statement(2);
        assert!(sql.contains("($1, $2, $3, $4, $5, $6, $7), ($8, $9, $10, $11, $12, $13, $14) ON CONFLICT"), "{sql}");
    }
}
