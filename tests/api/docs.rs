//! The psql walkthrough in docs/consuming.md, run verbatim against a fresh `dev`, shows
//! exactly the results the document claims.

use std::process::Command;

use crate::dev::{start_dev, stop_dev};
use singapay_webhooks::embedded_pg::free_port;

/// (commands, claimed output) for every ```sh walkthrough block.
fn walkthrough(doc: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut lines = doc.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() != "```sh walkthrough" {
            continue;
        }
        let script: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        while lines.peek().is_some_and(|l| l.trim().is_empty()) {
            lines.next();
        }
        assert_eq!(lines.next().map(str::trim), Some("```text"), "a walkthrough block is followed by its output");
        let output: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        blocks.push((script.join("\n"), output.join("\n")));
    }
    blocks
}

/// psql's alignment padding depends on column widths; the content must match exactly.
fn normalise(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            let l = l.split_whitespace().collect::<Vec<_>>().join(" ");
            if !l.is_empty() && l.chars().all(|c| c == '-' || c == '+') {
                l.split('+').map(|_| "-").collect::<Vec<_>>().join("+")
            } else {
                l
            }
        })
        .filter(|l| !l.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consuming_walkthrough_runs_verbatim_against_dev() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/consuming.md")).unwrap();
    let blocks = walkthrough(&doc);
    assert!(blocks.len() >= 6, "found {} walkthrough blocks", blocks.len());

    let dir = tempfile::Builder::new().prefix("singapay-walk-").tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port().unwrap();
    let dev = start_dev(&dir.path().join(".data"), port);

    const MARK: &str = "@@@ end of block @@@";
    let script: String = blocks.iter().map(|(cmds, _)| format!("{cmds}\necho '{MARK}'\n")).collect();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -eu\n{script}"))
        .current_dir(dir.path())
        .env("PGURL", &dev.psql_url)
        .env("SP_URL", format!("http://127.0.0.1:{port}/webhooks/singapay"))
        .output()
        .unwrap();
    stop_dev(dev);
    assert!(out.status.success(), "walkthrough failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let outputs: Vec<&str> = stdout.split(MARK).collect();
    for (i, (cmds, claimed)) in blocks.iter().enumerate() {
        assert_eq!(normalise(outputs[i]), normalise(claimed), "block {i}:\n{cmds}\n--- actual:\n{}", outputs[i]);
    }
}
