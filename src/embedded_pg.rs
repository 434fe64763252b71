//! A private PostgreSQL cluster run from the machine's own server binaries (`initdb`,
//! `pg_ctl`): `dev`'s embedded default and the test harness. Postgres refuses to run as
//! root, so as root the cluster belongs to an unprivileged user (`postgres`, else `nobody`).

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{anyhow, bail, Context, Result};

#[derive(Debug, Clone)]
pub struct Cluster {
    pub bin_dir: PathBuf,
    /// Holds `data/`, `postgres.log` and `port`.
    pub root: PathBuf,
    pub port: u16,
    /// (uid, gid) the server runs as, when we are root.
    pub run_as: Option<(u32, u32)>,
    pub durable: bool,
}

/// Where `initdb` lives: `PG_BIN_DIR`, then `PATH`, then Debian's `/usr/lib/postgresql/N/bin`
/// (the newest N).
pub fn find_bin_dir() -> Result<PathBuf> {
    let get = |k: &str| std::env::var(k).ok();
    if let Some(dir) = crate::config::Env::new(&get).pg_bin_dir() {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
        bail!("PG_BIN_DIR: {} has no initdb", dir.display());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("initdb");
            if candidate.is_file() {
                let real = fs::canonicalize(&candidate).unwrap_or(candidate);
                if let Some(parent) = real.parent() {
                    if parent.join("pg_ctl").is_file() {
                        return Ok(parent.to_path_buf());
                    }
                }
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        anyhow!("PostgreSQL server binaries not found (no initdb on PATH or in /usr/lib/postgresql/*/bin); install them with: apt-get install postgresql")
    })
}

/// The unprivileged account the server runs as when we are root.
fn unprivileged_user() -> Result<Option<(u32, u32)>> {
    if !is_root() {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for wanted in ["postgres", "nobody"] {
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() >= 4 && f[0] == wanted {
                if let (Ok(uid), Ok(gid)) = (f[2].parse(), f[3].parse()) {
                    return Ok(Some((uid, gid)));
                }
            }
        }
    }
    bail!("running as root, and there is no 'postgres' or 'nobody' user to run PostgreSQL as")
}

fn is_root() -> bool {
    // /proc/self/status has "Uid:\treal\teffective..."; no libc needed.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        .unwrap_or(false)
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Cluster {
    /// A cluster under `root`, created on first use; its port is remembered in `root/port`.
    pub fn open(root: &Path, durable: bool) -> Result<Cluster> {
        let bin_dir = find_bin_dir()?;
        let run_as = unprivileged_user()?;
        fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let root = fs::canonicalize(root)?;
        let port = match fs::read_to_string(root.join("port")).ok().and_then(|p| p.trim().parse().ok()) {
            Some(p) => p,
            None => {
                let p = free_port()?;
                fs::write(root.join("port"), p.to_string())?;
                p
            }
        };
        let cluster = Cluster { bin_dir, root, port, run_as, durable };
        if let Some((uid, _)) = run_as {
            cluster.check_reachable(uid)?;
        }
        Ok(cluster)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, database)
    }

    /// As root, the server's user must be able to walk down to the data directory.
    fn check_reachable(&self, uid: u32) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        for dir in self.root.ancestors().skip(1) {
            let meta = fs::metadata(dir)?;
            if meta.uid() != uid && meta.mode() & 0o001 == 0 {
                bail!(
                    "PostgreSQL runs as an unprivileged user, which cannot reach {}: {} is not searchable by others \
                     (chmod o+x {} or use a data directory elsewhere)",
                    self.root.display(),
                    dir.display(),
                    dir.display()
                );
            }
        }
        Ok(())
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd.env_remove("PGDATA").env("LC_ALL", "C");
        cmd
    }

    fn give_to_server(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.run_as {
            chown(path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))?;
        }
        Ok(())
    }

    pub fn is_initialised(&self) -> bool {
        self.data_dir().join("PG_VERSION").is_file()
    }

    /// `initdb` once: trust auth on 127.0.0.1 only, UTF-8, superuser `postgres`.
    pub fn init(&self) -> Result<()> {
        if self.is_initialised() {
            return Ok(());
        }
        let data = self.data_dir();
        fs::create_dir_all(&data)?;
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700))?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o755))?;
        self.give_to_server(&data)?;
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(&data).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale"]);
        if !self.durable {
            cmd.arg("--no-sync");
        }
        run(cmd, "initdb")?;
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("status").arg("-D").arg(self.data_dir());
        cmd.output().is_ok_and(|o| o.status.success())
    }

    /// Starts the server (a no-op when it already runs) and waits until it accepts connections.
    /// When the remembered port has been taken by something else meanwhile, the cluster
    /// moves to a free one (and remembers that).
    pub fn start(&mut self) -> Result<()> {
        self.init()?;
        if self.is_running() {
            return Ok(());
        }
        if TcpListener::bind(("127.0.0.1", self.port)).is_err() {
            self.port = free_port()?;
            fs::write(self.root.join("port"), self.port.to_string())?;
        }
        let log = self.log_file();
        if !log.exists() {
            fs::write(&log, b"")?;
        }
        self.give_to_server(&log)?;
        let mut opts = format!("-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories=''", self.port);
        if !self.durable {
            opts.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
            // The tests check the change-data-capture publication docs/consuming.md documents
            // by decoding it.
            opts.push_str(" -c wal_level=logical");
        }
        opts.push_str(" -c max_connections=200");
        let mut cmd = self.command("pg_ctl");
        cmd.arg("start")
            .arg("-w")
            .args(["-t", "60"])
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(opts);
        run(cmd, "pg_ctl start").with_context(|| {
            let tail = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(10).collect();
            format!(
                "PostgreSQL did not start; end of {}:\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })?;
        Ok(())
    }

    /// Fast shutdown: open transactions roll back, committed data stays.
    pub fn stop(&self) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop").arg("-w").args(["-m", "fast", "-t", "60"]).arg("-D").arg(self.data_dir());
        run(cmd, "pg_ctl stop")?;
        Ok(())
    }
}

fn run(mut cmd: Command, what: &str) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Creates `database` if it does not exist yet.
pub async fn ensure_database(cluster: &Cluster, database: &str) -> Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&cluster.url("postgres")).await?;
    crate::store::create_database_if_missing(&mut conn, database).await?;
    conn.close().await?;
    Ok(())
}
