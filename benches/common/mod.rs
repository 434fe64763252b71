//! What every benchmark starts from: a throwaway durable PostgreSQL cluster (fsync on).

use singapay_webhooks::embedded_pg::Cluster;

/// A started cluster in a temporary directory; stopped and removed when dropped.
pub struct BenchCluster {
    pub cluster: Cluster,
    // Dropped after the cluster has stopped (fields drop in order: see `Drop`).
    _dir: tempfile::TempDir,
}

impl BenchCluster {
    pub fn start(prefix: &str) -> BenchCluster {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        // The server runs as an unprivileged user, which must reach the data directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut cluster = Cluster::open(&dir.path().join("pg"), true).expect("cluster");
        cluster.start().expect("start PostgreSQL");
        BenchCluster { cluster, _dir: dir }
    }

    /// A directory for the benchmark's own files (not every benchmark has any).
    #[allow(dead_code)]
    pub fn path(&self) -> &std::path::Path {
        self._dir.path()
    }
}

impl Drop for BenchCluster {
    fn drop(&mut self) {
        let _ = self.cluster.stop();
    }
}

/// A process's peak resident memory (`VmHWM`), MiB.
#[allow(dead_code)]
pub fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

/// The `p` quantile of sorted figures (NaN for none).
#[allow(dead_code)]
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Applies the migrations older than `version` (from a copy of their files in `dir`): the
/// schema a deployment had before it, for a benchmark to fill and then migrate, timed.
#[allow(dead_code)]
pub async fn migrate_before(db: &sqlx::PgPool, dir: &std::path::Path, version: i64) {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap().flatten() {
        let name = entry.file_name().into_string().unwrap();
        let v: i64 = name.split('_').next().unwrap().parse().unwrap();
        if v < version {
            std::fs::copy(entry.path(), dir.join(&name)).unwrap();
        }
    }
    sqlx::migrate::Migrator::new(dir).await.unwrap().run(db).await.unwrap();
}
