//! Test harness: a real Postgres (DATABASE_URL, or a throwaway cluster started from the
//! machine's server binaries), a fresh database per test, and the app on a real socket.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use rand::RngCore;
use secrecy::SecretString;
use serde::Deserialize;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};

use chrono::{DateTime, Utc};
use serde_json::json;
use singapay_webhooks::config::Settings;
use singapay_webhooks::embedded_pg::{self, Cluster};
use singapay_webhooks::reconcile::client::{ApiClient, ApiSettings};
use singapay_webhooks::reconcile::ApiCredential;
use singapay_webhooks::singapay::signature::{self, Credential};
use singapay_webhooks::singapay::Body;
use singapay_webhooks::startup::{Application, Signals};
use singapay_webhooks::store;
use singapay_webhooks::tools::sandbox::{self, Logged, Sandbox, SandboxConfig};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
pub struct Vector {
    pub name: String,
    pub secret: String,
    pub access_token: String,
    pub endpoint: String,
    pub timestamp: String,
    pub raw_body: String,
    pub raw_signature: String,
    pub canonical_body: Option<String>,
    pub canonical_signature: Option<String>,
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn load_vectors() -> Vec<Vector> {
    #[derive(Deserialize)]
    struct File {
        vectors: Vec<Vector>,
    }
    let text = std::fs::read_to_string(fixtures().join("vectors.json")).expect("vectors.json");
    serde_json::from_str::<File>(&text).expect("vectors.json parses").vectors
}

pub fn payload(name: &str) -> String {
    std::fs::read_to_string(fixtures().join("payloads").join(format!("{name}.json"))).expect("payload fixture")
}

pub fn credential(label: &str, secret: &str) -> Credential {
    Credential { label: label.to_owned(), secret: secret.to_owned().into() }
}

pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The throwaway cluster shared by every test of a run, started on first use. Its home is
/// `SINGAPAY_TEST_PG_ROOT` (scripts/test makes one and removes it afterwards), else a
/// directory under the temp dir named after this checkout, reused by later runs.
fn shared_cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let root = match std::env::var_os("SINGAPAY_TEST_PG_ROOT") {
            Some(r) => PathBuf::from(r),
            None => {
                use sha2::{Digest, Sha256};
                let key = hex::encode(&Sha256::digest(env!("CARGO_MANIFEST_DIR").as_bytes())[..6]);
                std::env::temp_dir().join(format!("singapay-webhooks-test-pg-{key}"))
            }
        };
        std::fs::create_dir_all(&root).expect("test cluster dir");
        // Test processes run in parallel under nextest: one initialises and starts it.
        let lock = std::fs::File::create(root.join("lock")).expect("lock file");
        lock.lock().expect("lock test cluster");
        let mut cluster = Cluster::open(&root.join("pg"), false).expect("open test cluster");
        cluster.start().expect("start test cluster");
        lock.unlock().expect("unlock");
        cluster
    })
}

/// A server URL (without database) for tests to create databases on.
fn server_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => shared_cluster().url("postgres"),
    }
}

fn with_database(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).expect("DATABASE_URL is a URL");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

/// Every test database's name starts with this; `scripts/test` drops what is left of them
/// on a server named by `DATABASE_URL` when the run ends, whatever the tests did.
pub const TEST_DATABASE_PREFIX: &str = "singapay_test_";

/// A new database on the shared server with nothing in it (no migrations).
pub async fn empty_database() -> (String, PgPool) {
    let server = server_url();
    let name = format!("{TEST_DATABASE_PREFIX}{}", random_hex(8));
    let mut admin = sqlx::PgConnection::connect(&server).await.expect("connect to test server");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create test database");
    admin.close().await.ok();
    let url = with_database(&server, &name);
    let pool = PgPoolOptions::new().max_connections(5).connect(&url).await.expect("connect to test database");
    (url, pool)
}

/// A new, migrated database on the shared server.
pub async fn fresh_database() -> (String, PgPool) {
    let (url, pool) = empty_database().await;
    store::MIGRATOR.run(&pool).await.expect("migrate");
    (url, pool)
}

/// A new database on the shared server with only the migrations older than `version`
/// applied: the schema a deployment had before it (migration tests then run the rest).
pub async fn database_before_migration(version: i64) -> (String, PgPool) {
    let (url, pool) = empty_database().await;
    let (_dir, old) = migrator_before(version).await;
    old.run(&pool).await.expect("migrate to the old schema");
    (url, pool)
}

/// A migrator for the migrations older than `version`; keep the directory while using it.
pub async fn migrator_before(version: i64) -> (tempfile::TempDir, sqlx::migrate::Migrator) {
    let dir = tempfile::tempdir().unwrap();
    let mut copied = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap().flatten() {
        let name = entry.file_name().into_string().unwrap();
        let v: i64 = name.split('_').next().unwrap().parse().unwrap();
        if v < version {
            std::fs::copy(entry.path(), dir.path().join(&name)).unwrap();
            copied += 1;
        }
    }
    assert!(copied > 0 && store::MIGRATOR.iter().any(|m| m.version == version), "{version} is a migration");
    let migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    (dir, migrator)
}

/// The settings `serve` would derive from an environment giving only the secret, plus what
/// the tests need: an ephemeral port, no drain, a pool for heavy concurrency, text logs.
pub fn default_settings(secret: &str) -> Settings {
    let secrets = format!("primary={secret}");
    let vars = [
        ("SINGAPAY_WEBHOOK_SECRETS", secrets.as_str()),
        ("LISTEN_ADDR", "127.0.0.1:0"),
        ("SHUTDOWN_DRAIN_SECS", "0"),
        ("DB_MAX_CONNECTIONS", "40"),
        ("LOG_FORMAT", "text"),
        // No admin listener (tests run side by side; 127.0.0.1:9090 is one port): /metrics
        // on the test's own port, behind the allowlist like everything there.
        ("ADMIN_LISTEN_ADDR", "off"),
    ];
    let get = |k: &str| vars.iter().find(|(name, _)| *name == k).map(|(_, v)| v.to_string());
    singapay_webhooks::config::Env::new(&get).settings(true).expect("the test settings are valid")
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// A separate pool for assertions.
    pub db: PgPool,
    pub secret: String,
    pub clock: Arc<AtomicI64>,
    pub client: reqwest::Client,
}

/// 0 in the test clock means "use the real clock".
const REAL_CLOCK: i64 = 0;

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
        let (database_url, db) = fresh_database().await;
        Self::spawn_on(database_url, db, adjust).await
    }

    pub async fn spawn_on(database_url: String, db: PgPool, adjust: impl FnOnce(&mut Settings)) -> TestApp {
        singapay_webhooks::telemetry::init_for_tests();
        let secret = format!("cs_test_{}", random_hex(12));
        let mut settings = default_settings(&secret);
        adjust(&mut settings);
        let app_pool =
            store::pool(&SecretString::from(database_url.clone()), settings.db_max_connections).expect("app pool");
        let clock = Arc::new(AtomicI64::new(REAL_CLOCK));
        let c = clock.clone();
        // The application `serve` runs, in-process, with a clock the test can set.
        let app = Application::build(settings, app_pool).await.expect("the application builds").with_clock(Arc::new(
            move || match c.load(Ordering::SeqCst) {
                REAL_CLOCK => now(),
                fixed => fixed,
            },
        ));
        let addr = app.address().unwrap();
        tokio::spawn(app.run_until_stopped(Signals::never()));
        TestApp {
            addr,
            db,
            secret,
            clock,
            client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
        }
    }

    pub fn set_clock(&self, secs: i64) {
        self.clock.store(secs, Ordering::SeqCst);
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// POSTs `body` to `endpoint` with the given headers (None = header absent).
    pub async fn post_raw(
        &self,
        endpoint: &str,
        body: impl Into<reqwest::Body>,
        signature: Option<&str>,
        timestamp: Option<&str>,
        authorization: Option<&str>,
    ) -> Reply {
        let mut req = self.client.post(self.url(endpoint)).header("content-type", "application/json").body(body);
        if let Some(s) = signature {
            req = req.header("x-signature", s);
        }
        if let Some(t) = timestamp {
            req = req.header("x-timestamp", t);
        }
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        req = req.header("x-partner-id", "partner-test");
        Reply::from(req.send().await.expect("request sent")).await
    }

    /// Signs the way Singapay does (PHP's canonical form, or the raw bytes where PHP can
    /// form none), with a fresh token, and POSTs.
    pub async fn send(&self, body: &str) -> Reply {
        self.send_at(body, now()).await
    }

    pub async fn send_at(&self, body: &str, timestamp: i64) -> Reply {
        self.send_signed(DEFAULT_PATH, body, timestamp, &self.secret).await
    }

    pub async fn send_signed(&self, endpoint: &str, body: &str, timestamp: i64, secret: &str) -> Reply {
        let token = random_hex(10);
        let ts = timestamp.to_string();
        let sig = sign_php(secret, endpoint, &token, body, &ts);
        self.post_raw(endpoint, body.to_owned(), Some(&sig), Some(&ts), Some(&format!("Bearer {token}"))).await
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM singapay.{table}")).fetch_one(&self.db).await.unwrap()
    }

    pub async fn total_rows(&self) -> i64 {
        let mut n = 0;
        for t in ["deliveries", "transactions", "transaction_events", "rejected_deliveries"] {
            n += self.count(t).await;
        }
        n
    }
}

pub const DEFAULT_PATH: &str = "/webhooks/singapay";

pub fn sign_php(secret: &str, endpoint: &str, token: &str, body: &str, ts: &str) -> String {
    let analysed = Body::analyse(body.as_bytes());
    let hashed = analysed.php.as_deref().unwrap_or(body);
    signature::sign(
        &SecretString::from(secret.to_owned()),
        endpoint.as_bytes(),
        token.as_bytes(),
        hashed.as_bytes(),
        ts.as_bytes(),
    )
}

pub fn sign_raw(secret: &str, endpoint: &str, token: &str, body: &[u8], ts: &str) -> String {
    signature::sign(&SecretString::from(secret.to_owned()), endpoint.as_bytes(), token.as_bytes(), body, ts.as_bytes())
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: serde_json::Value,
}

impl Reply {
    async fn from(r: reqwest::Response) -> Reply {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Reply { status, headers, json }
    }

    pub fn error_code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }

    pub fn delivery_id(&self) -> i64 {
        self.json["delivery_id"].as_i64().unwrap_or_else(|| panic!("no delivery_id in {:?}", self.json))
    }

    pub fn duplicate(&self) -> bool {
        self.json["duplicate"].as_bool().unwrap_or_else(|| panic!("no duplicate flag in {:?}", self.json))
    }
}

/// Owns a private cluster's directory and stops the cluster when dropped, so that a
/// failing (panicking) test leaves no Postgres running.
pub struct ClusterGuard {
    cluster: Cluster,
    _dir: tempfile::TempDir,
}

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        if self.cluster.is_running() {
            let _ = self.cluster.stop();
        }
    }
}

/// A private cluster for a test that must stop and start Postgres itself. Keep the guard
/// in a named binding (`let (_guard, cluster) = …`) for as long as the cluster is used.
pub fn private_cluster() -> (ClusterGuard, Cluster) {
    let dir = tempfile::Builder::new().prefix("singapay-pg-").tempdir_in(std::env::temp_dir()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cluster = Cluster::open(&dir.path().join("pg"), false).expect("open private cluster");
    cluster.start().expect("start private cluster");
    (ClusterGuard { cluster: cluster.clone(), _dir: dir }, cluster)
}

pub async fn database_on(cluster: &Cluster, name: &str) -> (String, PgPool) {
    embedded_pg::ensure_database(cluster, name).await.unwrap();
    let url = cluster.url(name);
    let pool = PgPoolOptions::new().max_connections(3).connect(&url).await.unwrap();
    store::MIGRATOR.run(&pool).await.unwrap();
    (url, pool)
}

/// `transactions` × `versions` events straight into the queue, ids interleaved so that a
/// transaction's versions sit next to each other (what ordering must hold against).
pub async fn seed_events(db: &PgPool, transactions: i32, versions: i32) {
    sqlx::query(
        "WITH d AS (
            INSERT INTO singapay.deliveries
                (content_sha256, webhook_type, outcome, credential, signature_form, signed_at,
                 request_path, x_signature, access_token, body)
            VALUES (sha256(random()::text::bytea), 'disbursement', 'batch', 'seed', 'raw', now(),
                    '/seed', '', '', ''::bytea)
            RETURNING id)
         INSERT INTO singapay.transactions (transaction_key, product, status, version, first_delivery_id, last_delivery_id)
         SELECT 'disbursement:seed-' || g, 'disbursement', 'pending', $2, d.id, d.id
           FROM generate_series(1, $1) g, d",
    )
    .bind(transactions)
    .bind(versions)
    .execute(db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO singapay.transaction_events (event_id, transaction_key, version, webhook_type, to_status, payload)
         SELECT gen_random_uuid(), 'disbursement:seed-' || g, v, 'disbursement', 'pending',
                jsonb_build_object('product', 'disbursement')
           FROM generate_series(1, $1) g, generate_series(1, $2) v
          ORDER BY g, v",
    )
    .bind(transactions)
    .bind(versions)
    .execute(db)
    .await
    .unwrap();
}

/// Backends of the current database waiting for a lock (a callback held up by a test's
/// lock shows here).
pub async fn lock_waiters(db: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(db)
    .await
    .unwrap()
}

/// The value of an unlabelled series in Prometheus text (0 when absent).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

/// The sub-account the sandbox tests ask about.
pub const SANDBOX_ACCOUNT: &str = "01JSANDBOXACCOUNT";

/// The `sandbox` (Singapay's API stand-in) on a real socket, with its control endpoints.
pub struct SandboxApi {
    pub url: String,
    /// Sends the control token (`X-Sandbox-Token`) on every request.
    pub http: reqwest::Client,
    /// The sandbox's control token.
    pub token: String,
}

impl SandboxApi {
    pub async fn start(now: DateTime<Utc>) -> SandboxApi {
        Self::start_with_clock(Arc::new(move || now)).await
    }

    /// A sandbox whose idea of now is `clock`.
    pub async fn start_with_clock(clock: Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>) -> SandboxApi {
        let token = format!("test-control-{}", random_hex(16));
        let sb = Sandbox::new(SandboxConfig {
            client_id: "client-1".into(),
            client_secret: "secret-1".into(),
            partner_id: "partner-1".into(),
            token_ttl_secs: 3600,
            accounts: Vec::new(),
            clock,
            control_token: token.clone(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, sandbox::router(sb)).await });
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(sandbox::TOKEN_HEADER, token.parse().unwrap());
        let http = reqwest::Client::builder().default_headers(headers).build().unwrap();
        SandboxApi { url, http, token }
    }

    pub fn client(&self, now: DateTime<Utc>, timeout: Duration) -> ApiClient {
        let settings = ApiSettings {
            base_url: self.url.clone(),
            client_id: "client-1".into(),
            client_secret: SecretString::from("secret-1".to_owned()),
            partner_id: "partner-1".into(),
            timeout,
            allow_insecure: true,
        };
        ApiClient::new(settings, Arc::new(move || now)).unwrap()
    }

    pub async fn script(&self, id: &str, answers: &[&str]) {
        let r = self
            .http
            .post(format!("{}/_sandbox/transactions", self.url))
            .json(&json!({"id": id, "answers": answers}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    pub async fn control(&self, path: &str, body: serde_json::Value) {
        let r = self.http.post(format!("{}/_sandbox/{path}", self.url)).json(&body).send().await.unwrap();
        assert!(r.status().is_success());
    }

    pub async fn requests(&self) -> Vec<Logged> {
        self.http.get(format!("{}/_sandbox/requests", self.url)).send().await.unwrap().json().await.unwrap()
    }
    /// What `reconcile::ApiSettings` needs to reach this sandbox.
    pub fn settings(&self, timeout: Duration) -> ApiSettings {
        ApiSettings {
            base_url: self.url.clone(),
            client_id: "client-1".into(),
            client_secret: SecretString::from("secret-1".to_owned()),
            partner_id: "partner-1".into(),
            timeout,
            allow_insecure: true,
        }
    }

    /// One credential of reconciliation's settings, owning `accounts`, that reaches this
    /// sandbox.
    pub fn credential(&self, label: &str, accounts: &[&str], timeout: Duration) -> ApiCredential {
        ApiCredential {
            label: label.into(),
            api: self.settings(timeout),
            accounts: accounts.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// The inquiries received so far (token requests left out).
    pub async fn inquiries(&self) -> Vec<Logged> {
        self.requests().await.into_iter().filter(|r| r.kind == "inquiry").collect()
    }
}

/// A money-out callback; `status_code` `None` leaves `transaction_status` out.
pub fn disbursement(id: &str, reference: &str, response_code: &str, status_code: Option<&str>) -> String {
    let mut data = json!({
        "transaction_id": id,
        "reference_number": reference,
        "post_timestamp": "1773645729000",
        "processed_timestamp": "",
        "net_amount": { "currency": "IDR", "value": "10000.00" },
    });
    if let Some(code) = status_code {
        data["transaction_status"] = json!({ "code": code, "desc": "x" });
    }
    json!({ "response_code": response_code, "event": "disbursement", "data": data }).to_string()
}
