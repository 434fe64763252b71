//! What every benchmark starts from: a throwaway durable PostgreSQL cluster (fsync on).

use singapay_webhooks::embedded_pg::Cluster;

/// The callback endpoint and the secret every benchmark's receiver is started with.
#[allow(dead_code)]
pub const PATH: &str = "/webhooks/singapay";
#[allow(dead_code)]
pub const SECRET: &str = "bench-secret-0123456789";

/// The `X-Signature` Singapay would send for `body` (signed in PHP's canonical form) with the
/// bearer `token` at `ts`.
#[allow(dead_code)]
pub fn sign(body: &str, token: &str, ts: &str) -> String {
    use singapay_webhooks::singapay::{signature, Body};
    let php = Body::analyse(body.as_bytes()).php.expect("canonical form");
    let key = secrecy::SecretString::from(SECRET.to_owned());
    signature::sign(&key, PATH.as_bytes(), token.as_bytes(), php.as_bytes(), ts.as_bytes())
}

/// A complete HTTP/1.1 request of `body` to [`PATH`], signed as Singapay signs.
#[allow(dead_code)]
pub fn signed_request(body: &str, token: &str, ts: &str) -> Vec<u8> {
    let sig = sign(body, token, ts);
    format!(
        "POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Signature: {sig}\r\nX-Timestamp: {ts}\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

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

/// Reads one HTTP/1.1 response from a keep-alive connection into `buf`; true when it is a
/// 200.
#[allow(dead_code)]
pub async fn response(conn: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    use tokio::io::AsyncReadExt;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).unwrap_or("");
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let ok = head.starts_with("HTTP/1.1 200");
            while buf.len() < end + 4 + length {
                let n = conn.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(ok);
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
