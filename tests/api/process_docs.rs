//! The walkthroughs in docs/consuming.md and docs/integrating.md, run verbatim against a
//! fresh `dev`, show exactly the results the documents claim. A claimed line `…` stands
//! for any number of lines, and `…` inside a line for any text (values that differ from
//! run to run: hashes, timestamps, random ids).

use std::process::Command;

use crate::process_dev::{start_dev, stop_dev};

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

fn line_matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split('…').collect();
    if parts.len() == 1 {
        return pattern == line;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !line.starts_with(first) || !line[first.len()..].ends_with(last) || line.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &line[first.len()..line.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

fn lines_match(claimed: &[String], actual: &[String]) -> bool {
    match claimed.split_first() {
        None => actual.is_empty(),
        Some((first, rest)) if first == "…" => (0..=actual.len()).any(|skip| lines_match(rest, &actual[skip..])),
        Some((first, rest)) => {
            actual.split_first().is_some_and(|(a, more)| line_matches(first, a) && lines_match(rest, more))
        }
    }
}

async fn run_walkthrough(doc_name: &str) {
    let doc =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join(doc_name)).unwrap();
    let blocks = walkthrough(&doc);
    assert!(blocks.len() >= 5, "{doc_name}: found {} walkthrough blocks", blocks.len());

    let dir = tempfile::Builder::new().prefix("singapay-walk-").tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dev = start_dev(&dir.path().join(".data"));

    const MARK: &str = "@@@ end of block @@@";
    let script: String = blocks.iter().map(|(cmds, _)| format!("{cmds}\necho '{MARK}'\n")).collect();
    // Verbatim: the walkthrough finds the receiver, its database, the dev secret and the
    // binary through the `.data/dev.env` that dev wrote, as a reader's second terminal does.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -eu\n{script}"))
        .current_dir(dir.path())
        .env_remove("SINGAPAY_WEBHOOK_SECRETS")
        .env_remove("DATABASE_URL")
        .env_remove("PGURL")
        .env_remove("SP_URL")
        .output()
        .unwrap();
    stop_dev(dev);
    assert!(out.status.success(), "{doc_name}: walkthrough failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let outputs: Vec<&str> = stdout.split(MARK).collect();
    for (i, (cmds, claimed)) in blocks.iter().enumerate() {
        assert!(
            lines_match(&normalise(claimed), &normalise(outputs[i])),
            "{doc_name} block {i}:\n{cmds}\n--- claimed:\n{claimed}\n--- actual:\n{}\n--- stderr:\n{}",
            outputs[i],
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consuming_walkthrough_runs_verbatim_against_dev() {
    run_walkthrough("consuming.md").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_integrating_guide_runs_verbatim_against_dev() {
    run_walkthrough("integrating.md").await;
}

#[test]
fn wildcards_match_only_what_they_should() {
    assert!(line_matches("a … c", "a b c"));
    assert!(line_matches("byte … of", "byte 123 of"));
    assert!(!line_matches("byte … of", "bytes 123 of"));
    assert!(!line_matches("a", "ab"));
    let claimed: Vec<String> = ["x", "…", "z"].iter().map(|s| s.to_string()).collect();
    let actual: Vec<String> = ["x", "1", "2", "z"].iter().map(|s| s.to_string()).collect();
    assert!(lines_match(&claimed, &actual));
    assert!(!lines_match(&claimed, &actual[..3]));
}
