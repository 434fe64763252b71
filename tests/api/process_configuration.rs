//! `.env.example` and the code read the same variables, and every bad value stops
//! start-up with one line naming the variable.

use std::collections::BTreeSet;
use std::path::Path;

use singapay_webhooks::config::VARIABLES;

use crate::process::{env, spawn};

/// The line after which `.env.example` lists what only docker-compose.yml reads.
const COMPOSE_SECTION: &str = "# --- docker-compose.yml only";

/// The names `.env.example` lists for the program (`compose: false`) or, in its last
/// section, for docker-compose.yml alone (`compose: true`).
fn env_example_names_of(compose: bool) -> BTreeSet<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example")).unwrap();
    let (program, compose_only) = text.split_once(COMPOSE_SECTION).expect(".env.example has the compose section");
    let text = if compose { compose_only } else { program };
    text.lines()
        .filter_map(|l| {
            let l = l.trim().trim_start_matches('#').trim();
            let (name, _) = l.split_once('=')?;
            (!name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'))
                .then(|| name.to_owned())
        })
        .collect()
}

fn env_example_names() -> BTreeSet<String> {
    env_example_names_of(false)
}

/// Every `${NAME…}` docker-compose.yml fills in is documented in `.env.example`: either a
/// setting of the program, passed through under the same name, or one of the compose
/// section's; and everything in the compose section is used by the compose file.
#[test]
fn the_compose_file_uses_only_variables_env_example_documents() {
    let compose = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml")).unwrap();
    let code: String = compose.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
    let used: BTreeSet<String> = code
        .split("${")
        .skip(1)
        .map(|rest| rest.chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect())
        .collect();
    assert!(used.contains("ALLOWED_SOURCE_CIDRS"), "{used:?}");
    // Secrets reach the containers as files (Compose secrets), never through .env.
    for secret in ["POSTGRES_PASSWORD", "DATABASE_URL", "SINGAPAY_WEBHOOK_SECRETS", "SINGAPAY_CLIENT_SECRET"] {
        assert!(!used.contains(secret), "{secret} is filled in from .env: {used:?}");
    }
    let program: BTreeSet<String> = VARIABLES.iter().map(|v| v.to_string()).collect();
    let compose_only = env_example_names_of(true);
    let undocumented: Vec<&String> =
        used.iter().filter(|n| !program.contains(*n) && !compose_only.contains(*n)).collect();
    assert!(
        undocumented.is_empty(),
        "docker-compose.yml uses variables .env.example does not document: {undocumented:?}"
    );
    let unused: Vec<&String> = compose_only.iter().filter(|n| !used.contains(*n)).collect();
    assert!(
        unused.is_empty(),
        ".env.example's compose section lists variables the compose file does not use: {unused:?}"
    );
    // A program setting passed through keeps its name on both sides.
    for name in used.iter().filter(|n| program.contains(*n)) {
        assert!(code.contains(&format!("{name}: ${{{name}")), "{name} is passed through under another name");
    }
}

/// Names the code reads: the string literals at every environment-reading call site in
/// src/ (`Env::raw/secret/parsed/ranged`, `std::env::var/var_os`).
fn names_read_in_source(dir: &Path, out: &mut BTreeSet<String>) {
    const READERS: [&str; 6] = ["raw(", "secret(", "parsed(", "ranged(", "env::var(", "env::var_os("];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            names_read_in_source(&path, out);
            continue;
        }
        let code = std::fs::read_to_string(&path).unwrap();
        for reader in READERS {
            for (at, _) in code.match_indices(reader) {
                // The call's arguments up to the closing parenthesis; every literal in them.
                let args = &code[at + reader.len()..];
                let args = &args[..args.find(')').unwrap_or(args.len())];
                for (i, piece) in args.split('"').enumerate() {
                    if i % 2 == 1 && !piece.is_empty() && piece.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
                        out.insert(piece.to_owned());
                    }
                }
            }
        }
    }
}

#[test]
fn env_example_lists_exactly_the_variables_the_code_reads() {
    let listed = env_example_names();
    let declared: BTreeSet<String> = VARIABLES.iter().map(|v| v.to_string()).collect();
    assert_eq!(listed, declared, ".env.example and config::VARIABLES differ");
    let mut in_source = BTreeSet::new();
    names_read_in_source(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")), &mut in_source);
    // PATH is the system's (dev looks up initdb on it), not configuration.
    in_source.remove("PATH");
    let undeclared: Vec<&String> = in_source.iter().filter(|n| !declared.contains(*n)).collect();
    assert!(undeclared.is_empty(), "variables named in src/ but missing from config::VARIABLES: {undeclared:?}");
    let unused: Vec<&String> = declared.iter().filter(|n| !in_source.contains(*n)).collect();
    assert!(unused.is_empty(), "declared but never read: {unused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_value_stops_start_up_with_one_line_naming_it() {
    let base =
        [("SINGAPAY_WEBHOOK_SECRETS", "primary=abcdefghijklmnop"), ("DATABASE_URL", "postgres://u@127.0.0.1:1/db")];
    let data_dir = tempfile::tempdir().unwrap();
    let data = data_dir.path().to_str().unwrap();
    let cases: Vec<(&str, &str, Vec<&str>)> = vec![
        ("DATABASE_URL", "mysql://nope", vec!["serve"]),
        ("DATABASE_URL_FILE", "/nonexistent/db-url", vec!["serve"]),
        ("SINGAPAY_WEBHOOK_SECRETS", "a=abcdefghijklmnop1,a=abcdefghijklmnop2", vec!["serve"]),
        ("SINGAPAY_WEBHOOK_SECRETS", "default=", vec!["serve"]),
        ("SINGAPAY_WEBHOOK_SECRETS", "=x", vec!["serve"]),
        ("SINGAPAY_WEBHOOK_SECRETS_FILE", "/nonexistent/secrets", vec!["serve"]),
        ("LISTEN_ADDR", "localhost", vec!["serve"]),
        ("ADMIN_LISTEN_ADDR", "9090", vec!["serve"]),
        ("WEBHOOK_PATH", "webhooks", vec!["serve"]),
        ("SIGNED_PATH_PREFIX", "public/path", vec!["serve"]),
        ("TIMESTAMP_TOLERANCE_SECS", "five minutes", vec!["serve"]),
        ("MAX_BODY_BYTES", "12", vec!["serve"]),
        ("ALLOWED_SOURCE_CIDRS", "10.0.0.0/40", vec!["serve"]),
        ("TRUSTED_PROXY_HOPS", "many", vec!["serve"]),
        ("TRUSTED_PROXY_HOPS", "1", vec!["serve"]),
        ("TRUSTED_PROXY_CIDRS", "10.0.0.0/40", vec!["serve"]),
        ("DB_MAX_CONNECTIONS", "0", vec!["serve"]),
        ("INTAKE_WRITERS", "17", vec!["serve"]),
        ("INTAKE_BATCH_MAX", "0", vec!["serve"]),
        ("INTAKE_QUEUE_CAPACITY", "lots", vec!["serve"]),
        ("LOG_FORMAT", "xml", vec!["serve"]),
        ("RUST_LOG", "info,[", vec!["serve"]),
        ("SHUTDOWN_TIMEOUT_SECS", "0", vec!["serve"]),
        ("SHUTDOWN_DRAIN_SECS", "3601", vec!["serve"]),
        ("MAX_CONNECTIONS", "0", vec!["serve"]),
        ("HEADER_READ_TIMEOUT_SECS", "forever", vec!["serve"]),
        ("BODY_READ_TIMEOUT_SECS", "0", vec!["serve"]),
        ("RETENTION_DAYS", "-3", vec!["prune"]),
        ("BEARER_RETENTION_HOURS", "0", vec!["prune"]),
        ("PG_BIN_DIR", "/nonexistent/pg", vec!["dev", "--data-dir", data]),
        // Half of reconciliation's credentials: the error names what is missing and what
        // turned it on.
        ("SINGAPAY_API_URL", "https://payment-b2b.singapay.id", vec!["serve"]),
        ("SINGAPAY_API_ALLOW_INSECURE", "yes", vec!["serve"]),
        ("SINGAPAY_CLIENT_ID", "client-1", vec!["serve"]),
        ("SINGAPAY_CLIENT_SECRET", "secret-1", vec!["serve"]),
        ("SINGAPAY_CLIENT_SECRET_FILE", "/nonexistent/client-secret", vec!["serve"]),
        ("SINGAPAY_PARTNER_ID", "partner-1", vec!["serve"]),
        ("SINGAPAY_ACCOUNT_ID", "account-1", vec!["serve"]),
        ("SINGAPAY_API_TIMEOUT_SECS", "0", vec!["serve"]),
        ("RECONCILE_MONEY_OUT_OVERDUE_SECS", "15m", vec!["serve"]),
        ("RECONCILE_MONEY_IN_OVERDUE_SECS", "0", vec!["serve"]),
        ("RECONCILE_CONCURRENCY", "0", vec!["serve"]),
        ("RECONCILE_BACKOFF_SECS", "soon", vec!["serve"]),
        ("RECONCILE_BACKOFF_MAX_SECS", "0", vec!["serve"]),
        ("RECONCILE_NOT_FOUND_ATTEMPTS", "0", vec!["serve"]),
        ("RECONCILE_UNREADABLE_ATTEMPTS", "1001", vec!["serve"]),
        ("RECONCILE_INTERVAL_SECS", "3601", vec!["serve"]),
        ("SANDBOX_CONTROL_TOKEN", "short", vec!["sandbox", "--listen", "127.0.0.1:0"]),
        (
            "SANDBOX_CLIENT_SECRET",
            "x",
            vec!["sandbox", "--listen", "127.0.0.1:0", "--client-secret-file", "/nonexistent"],
        ),
    ];
    let tested: BTreeSet<&str> = cases.iter().map(|c| c.0).collect();
    assert_eq!(tested, VARIABLES.iter().copied().collect(), "every variable has a bad-value case");
    for (var, value, args) in cases {
        let mut vars = env(&base);
        vars.retain(|(k, _)| k != var && !(var.ends_with("_FILE") && var.starts_with(k.as_str())));
        vars.push((var.to_owned(), value.to_owned()));
        let child = spawn(&args, &vars);
        // A regression that starts instead of refusing must fail the test, not hang it.
        let pid = child.id();
        let waited = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            tokio::task::spawn_blocking(move || child.wait_with_output()),
        )
        .await;
        let Ok(out) = waited else {
            let _ = std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            panic!("{var}={value:?}: still running after 60 s instead of refusing to start");
        };
        let out = out.unwrap().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value:?} was accepted");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{var}: expected one line, got {stderr:?}");
        assert!(lines[0].contains(var), "{var}: {:?} does not name it", lines[0]);
    }
}
