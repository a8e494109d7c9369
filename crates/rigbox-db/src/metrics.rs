//! Storage of workspace usage samples (metrics).
//!
//! Raw samples (one per workspace about every 5 s) are kept for
//! [`RAW_KEEP_MS`]; every inserted sample also adds into its 1-minute and
//! 15-minute rollup buckets ([`ROLLUP_STEPS`], kept [`ROLLUP_KEEP_SECS`]), so
//! a week of series for hundreds of workspaces stays in the tens of
//! megabytes and the current bucket is always up to date. Inserting is
//! idempotent: a sample already stored (same workspace and time) is ignored
//! and not added to the rollups twice, so a puller may send a batch again.
//! Logs are not stored here (the serial console stays on the node, the
//! journal in the guest).

use crate::{DbResult, SqliteStore};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

/// Rollup bucket sizes (seconds).
pub const ROLLUP_STEPS: [i64; 2] = [60, 900];
/// How long raw samples are kept (ms).
pub const RAW_KEEP_MS: i64 = 70 * 60 * 1000;
/// How long rollups of each step are kept (seconds), matching [`ROLLUP_STEPS`].
pub const ROLLUP_KEEP_SECS: [i64; 2] = [7 * 3600, 8 * 86400];
/// Bins of the CPU histogram (5% each).
pub const CPU_BINS: usize = 20;

/// One raw usage sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageSampleRow {
    /// Workspace.
    pub workspace_id: String,
    /// Sample time (ms since the epoch).
    pub t_ms: i64,
    /// Time since the workspace's previous sample (ms; 0 for the first).
    pub dt_ms: i64,
    /// CPU busy, percent of the workspace's vCPUs.
    pub cpu: f64,
    /// Memory used (MiB).
    pub mem_used_mb: f64,
    /// Memory of the workspace (MiB).
    pub mem_total_mb: f64,
    /// Root filesystem used (MiB).
    pub disk_used_mb: f64,
    /// Root filesystem size (MiB).
    pub disk_total_mb: f64,
    /// Bytes received during `dt_ms`.
    pub rx_bytes: i64,
    /// Bytes sent during `dt_ms`.
    pub tx_bytes: i64,
    /// Whether the guest agent answered for this sample.
    pub guest_fresh: bool,
}

/// One rollup bucket (or the merge of several).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageBucket {
    /// Bucket start (unix seconds).
    pub t: i64,
    /// Bucket size (seconds).
    pub step: i64,
    /// Samples.
    pub n: i64,
    /// Time the samples cover (ms).
    pub dt_ms: i64,
    /// Sum of CPU percents.
    pub cpu_sum: f64,
    /// Highest CPU percent.
    pub cpu_max: f64,
    /// CPU histogram (5% bins).
    pub cpu_hist: [i64; CPU_BINS],
    /// Sum of memory used (MiB).
    pub mem_used_sum: f64,
    /// Sum of memory size (MiB).
    pub mem_total_sum: f64,
    /// Sum of disk used (MiB).
    pub disk_used_sum: f64,
    /// Sum of disk size (MiB).
    pub disk_total_sum: f64,
    /// Time of the latest sample (ms).
    pub last_t_ms: i64,
    /// Memory used at the latest sample.
    pub mem_used_last: f64,
    /// Memory size at the latest sample.
    pub mem_total_last: f64,
    /// Disk used at the latest sample.
    pub disk_used_last: f64,
    /// Disk size at the latest sample.
    pub disk_total_last: f64,
    /// Bytes received.
    pub rx_bytes: i64,
    /// Bytes sent.
    pub tx_bytes: i64,
    /// Samples with a fresh guest view.
    pub guest_fresh_n: i64,
}

/// The histogram bin of a CPU percent.
pub fn cpu_bin(cpu: f64) -> usize {
    ((cpu.clamp(0.0, 100.0) / (100.0 / CPU_BINS as f64)) as usize).min(CPU_BINS - 1)
}

impl UsageBucket {
    /// The bucket of `step` seconds holding one sample.
    pub fn of_sample(step: i64, s: &UsageSampleRow) -> Self {
        let mut hist = [0; CPU_BINS];
        hist[cpu_bin(s.cpu)] = 1;
        UsageBucket {
            t: s.t_ms.div_euclid(1000 * step) * step,
            step,
            n: 1,
            dt_ms: s.dt_ms,
            cpu_sum: s.cpu,
            cpu_max: s.cpu,
            cpu_hist: hist,
            mem_used_sum: s.mem_used_mb,
            mem_total_sum: s.mem_total_mb,
            disk_used_sum: s.disk_used_mb,
            disk_total_sum: s.disk_total_mb,
            last_t_ms: s.t_ms,
            mem_used_last: s.mem_used_mb,
            mem_total_last: s.mem_total_mb,
            disk_used_last: s.disk_used_mb,
            disk_total_last: s.disk_total_mb,
            rx_bytes: s.rx_bytes,
            tx_bytes: s.tx_bytes,
            guest_fresh_n: i64::from(s.guest_fresh),
        }
    }

    /// Adds `o` into this bucket (the start and step stay).
    pub fn merge(&mut self, o: &UsageBucket) {
        if self.n == 0 {
            let (t, step) = (self.t, self.step);
            *self = o.clone();
            self.t = t;
            self.step = step;
            return;
        }
        self.n += o.n;
        self.dt_ms += o.dt_ms;
        self.cpu_sum += o.cpu_sum;
        self.cpu_max = self.cpu_max.max(o.cpu_max);
        for (a, b) in self.cpu_hist.iter_mut().zip(o.cpu_hist) {
            *a += b;
        }
        self.mem_used_sum += o.mem_used_sum;
        self.mem_total_sum += o.mem_total_sum;
        self.disk_used_sum += o.disk_used_sum;
        self.disk_total_sum += o.disk_total_sum;
        if o.last_t_ms >= self.last_t_ms {
            self.last_t_ms = o.last_t_ms;
            self.mem_used_last = o.mem_used_last;
            self.mem_total_last = o.mem_total_last;
            self.disk_used_last = o.disk_used_last;
            self.disk_total_last = o.disk_total_last;
        }
        self.rx_bytes += o.rx_bytes;
        self.tx_bytes += o.tx_bytes;
        self.guest_fresh_n += o.guest_fresh_n;
    }

    fn avg(&self, sum: f64) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            sum / self.n as f64
        }
    }

    /// Average CPU percent.
    pub fn cpu_avg(&self) -> f64 {
        self.avg(self.cpu_sum)
    }
    /// Average memory used (MiB).
    pub fn mem_used_avg(&self) -> f64 {
        self.avg(self.mem_used_sum)
    }
    /// Average memory size (MiB).
    pub fn mem_total_avg(&self) -> f64 {
        self.avg(self.mem_total_sum)
    }
    /// Average disk used (MiB).
    pub fn disk_used_avg(&self) -> f64 {
        self.avg(self.disk_used_sum)
    }
    /// Average disk size (MiB).
    pub fn disk_total_avg(&self) -> f64 {
        self.avg(self.disk_total_sum)
    }

    /// Bits per second of `bytes` over the covered time (the bucket's
    /// length when the samples carry no interval).
    pub fn bps(&self, bytes: i64) -> f64 {
        let secs = if self.dt_ms > 0 { self.dt_ms as f64 / 1000.0 } else { self.step as f64 };
        if secs <= 0.0 {
            0.0
        } else {
            bytes as f64 * 8.0 / secs
        }
    }

    /// The `p`th percentile of CPU (interpolated inside its 5% bin, capped by the maximum).
    pub fn cpu_percentile(&self, p: f64) -> f64 {
        let total: i64 = self.cpu_hist.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = (p / 100.0 * total as f64).ceil().max(1.0);
        let width = 100.0 / CPU_BINS as f64;
        let mut seen = 0i64;
        for (i, c) in self.cpu_hist.iter().enumerate() {
            if *c == 0 {
                continue;
            }
            if (seen + c) as f64 >= rank {
                let within = (rank - seen as f64) / *c as f64;
                return (i as f64 * width + within * width).min(self.cpu_max);
            }
            seen += c;
        }
        self.cpu_max
    }
}

/// Storage of workspace usage samples.
#[async_trait::async_trait]
pub trait MetricsStore: Send + Sync {
    /// Stores samples and adds each new one into its rollups; samples
    /// already stored are skipped. Returns how many were new.
    async fn insert_usage(&self, rows: &[UsageSampleRow]) -> DbResult<u64>;
    /// Raw samples of a workspace since `since_ms`, oldest first.
    async fn usage_samples(&self, workspace_id: &str, since_ms: i64) -> DbResult<Vec<UsageSampleRow>>;
    /// Rollup buckets of `step` seconds starting at or after `since` (unix seconds), oldest first.
    async fn usage_buckets(&self, workspace_id: &str, step: i64, since: i64) -> DbResult<Vec<UsageBucket>>;
    /// The newest raw sample of a workspace.
    async fn latest_usage(&self, workspace_id: &str) -> DbResult<Option<UsageSampleRow>>;
    /// Removes samples and buckets past their retention; returns rows removed.
    async fn prune_usage(&self, now_ms: i64) -> DbResult<u64>;
    /// (raw samples, rollup buckets) stored.
    async fn usage_row_counts(&self) -> DbResult<(i64, i64)>;
}

fn sample(r: &SqliteRow) -> DbResult<UsageSampleRow> {
    Ok(UsageSampleRow {
        workspace_id: r.try_get("workspace_id")?,
        t_ms: r.try_get("t_ms")?,
        dt_ms: r.try_get("dt_ms")?,
        cpu: r.try_get("cpu")?,
        mem_used_mb: r.try_get("mem_used_mb")?,
        mem_total_mb: r.try_get("mem_total_mb")?,
        disk_used_mb: r.try_get("disk_used_mb")?,
        disk_total_mb: r.try_get("disk_total_mb")?,
        rx_bytes: r.try_get("rx_bytes")?,
        tx_bytes: r.try_get("tx_bytes")?,
        guest_fresh: r.try_get::<i64, _>("guest_fresh")? != 0,
    })
}

fn bucket(r: &SqliteRow) -> DbResult<UsageBucket> {
    let mut hist = [0i64; CPU_BINS];
    for (i, h) in hist.iter_mut().enumerate() {
        *h = r.try_get(format!("h{i}").as_str())?;
    }
    Ok(UsageBucket {
        t: r.try_get("t")?,
        step: r.try_get("step")?,
        n: r.try_get("n")?,
        dt_ms: r.try_get("dt_ms")?,
        cpu_sum: r.try_get("cpu_sum")?,
        cpu_max: r.try_get("cpu_max")?,
        cpu_hist: hist,
        mem_used_sum: r.try_get("mem_used_sum")?,
        mem_total_sum: r.try_get("mem_total_sum")?,
        disk_used_sum: r.try_get("disk_used_sum")?,
        disk_total_sum: r.try_get("disk_total_sum")?,
        last_t_ms: r.try_get("last_t_ms")?,
        mem_used_last: r.try_get("mem_used_last")?,
        mem_total_last: r.try_get("mem_total_last")?,
        disk_used_last: r.try_get("disk_used_last")?,
        disk_total_last: r.try_get("disk_total_last")?,
        rx_bytes: r.try_get("rx_bytes")?,
        tx_bytes: r.try_get("tx_bytes")?,
        guest_fresh_n: r.try_get("guest_fresh_n")?,
    })
}

fn upsert_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let hist: Vec<String> = (0..CPU_BINS).map(|i| format!("h{i}")).collect();
        let cols = format!(
            "workspace_id, step, t, n, dt_ms, cpu_sum, cpu_max, mem_used_sum, mem_total_sum, disk_used_sum, disk_total_sum, \
             last_t_ms, mem_used_last, mem_total_last, disk_used_last, disk_total_last, rx_bytes, tx_bytes, guest_fresh_n, {}",
            hist.join(", ")
        );
        let marks = vec!["?"; 19 + CPU_BINS].join(", ");
        let newer = "excluded.last_t_ms >= last_t_ms";
        let mut set = vec![
            "n = n + excluded.n".to_string(),
            "dt_ms = dt_ms + excluded.dt_ms".into(),
            "cpu_sum = cpu_sum + excluded.cpu_sum".into(),
            "cpu_max = MAX(cpu_max, excluded.cpu_max)".into(),
            "mem_used_sum = mem_used_sum + excluded.mem_used_sum".into(),
            "mem_total_sum = mem_total_sum + excluded.mem_total_sum".into(),
            "disk_used_sum = disk_used_sum + excluded.disk_used_sum".into(),
            "disk_total_sum = disk_total_sum + excluded.disk_total_sum".into(),
            "rx_bytes = rx_bytes + excluded.rx_bytes".into(),
            "tx_bytes = tx_bytes + excluded.tx_bytes".into(),
            "guest_fresh_n = guest_fresh_n + excluded.guest_fresh_n".into(),
        ];
        for c in ["mem_used_last", "mem_total_last", "disk_used_last", "disk_total_last"] {
            set.push(format!("{c} = CASE WHEN {newer} THEN excluded.{c} ELSE {c} END"));
        }
        // Last: the comparison above reads the old last_t_ms.
        set.push("last_t_ms = MAX(last_t_ms, excluded.last_t_ms)".into());
        for h in &hist {
            set.push(format!("{h} = {h} + excluded.{h}"));
        }
        format!(
            "INSERT INTO workspace_usage_rollups ({cols}) VALUES ({marks}) ON CONFLICT(workspace_id, step, t) DO UPDATE SET {}",
            set.join(", ")
        )
    })
}

#[async_trait::async_trait]
impl MetricsStore for SqliteStore {
    async fn insert_usage(&self, rows: &[UsageSampleRow]) -> DbResult<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool().begin().await?;
        let mut new = 0u64;
        for s in rows {
            let r = sqlx::query(
                "INSERT OR IGNORE INTO workspace_usage_samples (workspace_id, t_ms, dt_ms, cpu, mem_used_mb, mem_total_mb, disk_used_mb, disk_total_mb, rx_bytes, tx_bytes, guest_fresh)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&s.workspace_id)
            .bind(s.t_ms)
            .bind(s.dt_ms)
            .bind(s.cpu)
            .bind(s.mem_used_mb)
            .bind(s.mem_total_mb)
            .bind(s.disk_used_mb)
            .bind(s.disk_total_mb)
            .bind(s.rx_bytes)
            .bind(s.tx_bytes)
            .bind(i64::from(s.guest_fresh))
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() == 0 {
                continue;
            }
            new += 1;
            for step in ROLLUP_STEPS {
                let b = UsageBucket::of_sample(step, s);
                let mut q = sqlx::query(upsert_sql())
                    .bind(&s.workspace_id)
                    .bind(b.step)
                    .bind(b.t)
                    .bind(b.n)
                    .bind(b.dt_ms)
                    .bind(b.cpu_sum)
                    .bind(b.cpu_max)
                    .bind(b.mem_used_sum)
                    .bind(b.mem_total_sum)
                    .bind(b.disk_used_sum)
                    .bind(b.disk_total_sum)
                    .bind(b.last_t_ms)
                    .bind(b.mem_used_last)
                    .bind(b.mem_total_last)
                    .bind(b.disk_used_last)
                    .bind(b.disk_total_last)
                    .bind(b.rx_bytes)
                    .bind(b.tx_bytes)
                    .bind(b.guest_fresh_n);
                for h in b.cpu_hist {
                    q = q.bind(h);
                }
                q.execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(new)
    }

    async fn usage_samples(&self, workspace_id: &str, since_ms: i64) -> DbResult<Vec<UsageSampleRow>> {
        sqlx::query("SELECT * FROM workspace_usage_samples WHERE workspace_id = ? AND t_ms >= ? ORDER BY t_ms")
            .bind(workspace_id)
            .bind(since_ms)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(sample)
            .collect()
    }

    async fn usage_buckets(&self, workspace_id: &str, step: i64, since: i64) -> DbResult<Vec<UsageBucket>> {
        sqlx::query("SELECT * FROM workspace_usage_rollups WHERE workspace_id = ? AND step = ? AND t >= ? ORDER BY t")
            .bind(workspace_id)
            .bind(step)
            .bind(since)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(bucket)
            .collect()
    }

    async fn latest_usage(&self, workspace_id: &str) -> DbResult<Option<UsageSampleRow>> {
        sqlx::query("SELECT * FROM workspace_usage_samples WHERE workspace_id = ? ORDER BY t_ms DESC LIMIT 1")
            .bind(workspace_id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(sample)
            .transpose()
    }

    async fn prune_usage(&self, now_ms: i64) -> DbResult<u64> {
        let mut n = sqlx::query("DELETE FROM workspace_usage_samples WHERE t_ms < ?").bind(now_ms - RAW_KEEP_MS).execute(self.pool()).await?.rows_affected();
        for (step, keep) in ROLLUP_STEPS.iter().zip(ROLLUP_KEEP_SECS) {
            n += sqlx::query("DELETE FROM workspace_usage_rollups WHERE step = ? AND t < ?")
                .bind(step)
                .bind(now_ms / 1000 - keep)
                .execute(self.pool())
                .await?
                .rows_affected();
        }
        Ok(n)
    }

    async fn usage_row_counts(&self) -> DbResult<(i64, i64)> {
        let a: i64 = sqlx::query("SELECT COUNT(*) AS n FROM workspace_usage_samples").fetch_one(self.pool()).await?.try_get("n")?;
        let b: i64 = sqlx::query("SELECT COUNT(*) AS n FROM workspace_usage_rollups").fetch_one(self.pool()).await?.try_get("n")?;
        Ok((a, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ws: &str, t_ms: i64, cpu: f64, disk: f64, rx: i64) -> UsageSampleRow {
        UsageSampleRow {
            workspace_id: ws.into(),
            t_ms,
            dt_ms: 5000,
            cpu,
            mem_used_mb: 100.0,
            mem_total_mb: 512.0,
            disk_used_mb: disk,
            disk_total_mb: 2000.0,
            rx_bytes: rx,
            tx_bytes: 1,
            guest_fresh: true,
        }
    }

    #[tokio::test]
    async fn samples_roll_up_once_and_age_out() {
        let d = tempfile::tempdir().unwrap();
        let db = SqliteStore::open(&d.path().join("t.db")).await.unwrap();
        let base = 1_700_000_000_000i64 / 900_000 * 900_000;
        let rows: Vec<_> = (0..24).map(|i| s("ws-a", base + i * 5000, if i < 12 { 10.0 } else { 90.0 }, 100.0 + i as f64, 1000)).collect();
        assert_eq!(db.insert_usage(&rows).await.unwrap(), 24);
        // A batch sent again adds nothing.
        assert_eq!(db.insert_usage(&rows[..5]).await.unwrap(), 0);
        let m = db.usage_buckets("ws-a", 60, 0).await.unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].n, m[0].t * 1000), (12, base));
        assert!((m[0].cpu_avg() - 10.0).abs() < 1e-9 && (m[1].cpu_avg() - 90.0).abs() < 1e-9);
        assert_eq!(m[1].disk_used_last, 123.0);
        assert_eq!(m[0].rx_bytes, 12_000);
        assert!((m[0].bps(m[0].rx_bytes) - 12_000.0 * 8.0 / 60.0).abs() < 1e-9);
        let q = db.usage_buckets("ws-a", 900, 0).await.unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].n, 24);
        let p95 = q[0].cpu_percentile(95.0);
        assert!((85.0..=90.0).contains(&p95), "{p95}");
        assert!((q[0].cpu_percentile(25.0) - 10.0).abs() <= 5.0);
        assert_eq!(db.latest_usage("ws-a").await.unwrap().unwrap().t_ms, base + 23 * 5000);
        assert_eq!(db.usage_samples("ws-a", base + 20 * 5000).await.unwrap().len(), 4);
        // Pruning: raw after 70 minutes, minute buckets after 7 hours, the rest after 8 days.
        let gone = db.prune_usage(base + RAW_KEEP_MS + 200_000).await.unwrap();
        assert_eq!(gone, 24);
        assert_eq!(db.usage_row_counts().await.unwrap(), (0, 3));
        db.prune_usage(base + 8 * 3600 * 1000).await.unwrap();
        assert_eq!(db.usage_row_counts().await.unwrap(), (0, 1));
        db.prune_usage(base + 9 * 86400 * 1000).await.unwrap();
        assert_eq!(db.usage_row_counts().await.unwrap(), (0, 0));
    }

    #[test]
    fn buckets_merge() {
        let mut a = UsageBucket { t: 0, step: 300, ..Default::default() };
        a.merge(&UsageBucket::of_sample(60, &s("w", 61_000, 50.0, 10.0, 5)));
        a.merge(&UsageBucket::of_sample(60, &s("w", 1_000, 100.0, 20.0, 5)));
        assert_eq!((a.t, a.step, a.n, a.rx_bytes), (0, 300, 2, 10));
        assert_eq!(a.disk_used_last, 10.0, "the later sample's level");
        assert_eq!(a.cpu_max, 100.0);
        assert_eq!(cpu_bin(100.0), CPU_BINS - 1);
        assert_eq!(cpu_bin(-3.0), 0);
    }
}
