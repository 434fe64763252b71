//! One test binary. Module names say what a test drives:
//! - `http_*`: the application in-process (the same `Application` as `serve`), over HTTP;
//! - `db_*`: the SQL surface and the store, against Postgres directly;
//! - `process_*`: the real binary as a child process (commands, signals, containers, docs);
//! - `repo_*`: the repository's own consistency (structure).
//!
//! `helpers` (databases, signing, the in-process app) and `process` (the binary as a child)
//! are shared by the tests beside them.

mod db_group_commit;
mod db_hardening;
mod db_queue;
mod db_retention;
mod helpers;
mod http_allowlist;
mod http_concurrency;
mod http_faults;
mod http_history;
mod http_hostile;
mod http_intake;
mod http_metrics;
mod http_openapi;
mod http_outage;
mod http_reconcile;
mod http_reconcile_fixtures;
mod http_sandbox;
mod http_singapay_api;
mod http_vectors;
mod process;
mod process_configuration;
mod process_connections;
mod process_consumer_example;
mod process_crash;
mod process_deploy;
mod process_dev;
mod process_docs;
mod process_hardening;
mod process_operations;
mod process_reconcile;
mod process_reconcile_world;
mod process_tools;
mod repo_structure;
