//! The code's shape, checked: Singapay's rules (`src/singapay/`) touch no I/O, and no
//! module imports one that imports it back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every `.rs` file under `dir`, by module path (`http::webhook`), without comment lines.
fn modules(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let name = match (prefix, stem.as_str()) {
            (p, "mod" | "lib" | "main") => p.to_owned(),
            ("", s) => s.to_owned(),
            (p, s) => format!("{p}::{s}"),
        };
        if path.is_dir() {
            modules(&path, &name, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let code: Vec<&str> = Vec::new();
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.lines().filter(|l| !l.trim_start().starts_with("//")).fold(code, |mut v, l| {
                v.push(l);
                v
            });
            out.entry(name).or_default().push_str(&code.join("\n"));
        }
    }
}

fn src() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), "", &mut out);
    out
}

/// The modules `name`'s code refers to through `crate::…` or `super::…`.
fn imports(name: &str, code: &str, all: &BTreeMap<String, String>) -> BTreeSet<String> {
    let parent = name.rsplit_once("::").map_or("", |(p, _)| p);
    let mut out = BTreeSet::new();
    for (marker, base) in [("crate::", String::new()), ("super::", parent.to_owned())] {
        for (at, _) in code.match_indices(marker) {
            if at > 0 && code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let rest = &code[at + marker.len()..];
            let path: Vec<&str> = rest
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .next()
                .unwrap_or("")
                .split("::")
                .collect();
            // The longest prefix that is a module.
            for k in (1..=path.len()).rev() {
                let candidate =
                    if base.is_empty() { path[..k].join("::") } else { format!("{base}::{}", path[..k].join("::")) };
                if all.contains_key(&candidate) {
                    out.insert(candidate);
                    break;
                }
            }
        }
    }
    out.remove(name);
    out
}

#[test]
fn singapay_rules_use_no_io_and_nothing_outside_themselves() {
    let all = src();
    let io = [
        "tokio",
        "axum",
        "hyper",
        "sqlx",
        "reqwest",
        "tower",
        "tracing",
        "metrics",
        "std::fs",
        "std::net",
        "std::process",
    ];
    let mut found = Vec::new();
    for (name, code) in all.iter().filter(|(n, _)| *n == "singapay" || n.starts_with("singapay::")) {
        for krate in io {
            if code.contains(&format!("{krate}::")) || code.contains(&format!("use {krate}")) {
                found.push(format!("{name} uses {krate}"));
            }
        }
        for import in imports(name, code, &all) {
            if !import.starts_with("singapay") {
                found.push(format!("{name} imports {import}"));
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let all = src();
    let graph: BTreeMap<&str, BTreeSet<String>> =
        all.iter().map(|(name, code)| (name.as_str(), imports(name, code, &all))).collect();
    // Cycles of any length: a module that can reach itself.
    let mut cycles = Vec::new();
    for start in graph.keys() {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<(String, Vec<String>)> =
            graph[start].iter().map(|n| (n.clone(), vec![start.to_string(), n.clone()])).collect();
        while let Some((node, path)) = todo.pop() {
            if node == *start {
                cycles.push(path.join(" → "));
                break;
            }
            if !seen.insert(node.clone()) {
                continue;
            }
            for next in graph.get(node.as_str()).into_iter().flatten() {
                let mut p = path.clone();
                p.push(next.clone());
                todo.push((next.clone(), p));
            }
        }
    }
    assert!(cycles.is_empty(), "{cycles:#?}");
    // The check sees imports at all: the callback handler uses the store.
    assert!(graph["http::webhook"].contains("store"), "{:?}", graph["http::webhook"]);
}

/// Every SQL statement lives in `src/store/` (the migrations aside).
#[test]
fn sql_is_written_only_in_the_store() {
    let statements = ["SELECT ", "INSERT INTO ", "UPDATE singapay.", "DELETE FROM ", "CREATE DATABASE"];
    let outside: Vec<String> = src()
        .iter()
        .filter(|(name, _)| *name != "store" && !name.starts_with("store::"))
        .flat_map(|(name, code)| statements.iter().filter(|s| code.contains(*s)).map(move |s| format!("{name}: {s}")))
        .collect();
    assert!(outside.is_empty(), "{outside:#?}");
    assert!(src()["store::batch"].contains("INSERT INTO "), "the check reads the store's statements");
}

/// The closed vocabularies the code writes are exactly what the schema's CHECK constraints
/// allow: every enum value is accepted, and the constraint allows nothing the code lacks.
#[tokio::test]
async fn enums_match_the_check_constraints_they_are_written_to() {
    use singapay_webhooks::singapay::signature::BodyForm;
    use singapay_webhooks::store::{Outcome, RejectionReason};
    let (_, db) = crate::helpers::fresh_database().await;
    let allowed = |table: &'static str, column: &'static str| {
        let db = db.clone();
        async move {
            let defs: Vec<String> = sqlx::query_scalar(
                "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c
                  WHERE c.conrelid = ('singapay.' || $1)::regclass AND c.contype = 'c'
                    AND pg_get_constraintdef(c.oid) LIKE '%(' || $2 || ' %'",
            )
            .bind(table)
            .bind(column)
            .fetch_all(&db)
            .await
            .unwrap();
            assert_eq!(defs.len(), 1, "{table}.{column}: {defs:?}");
            // CHECK ((outcome = ANY (ARRAY['applied'::text, …]))): the quoted literals.
            defs[0].split('\'').skip(1).step_by(2).map(str::to_owned).collect::<BTreeSet<String>>()
        }
    };
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
    let outcomes: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
    assert_eq!(allowed("deliveries", "outcome").await, set(&outcomes));
    let forms: Vec<&str> = BodyForm::ALL.iter().map(|f| f.as_str()).collect();
    assert_eq!(allowed("deliveries", "signature_form").await, set(&forms));
    assert_eq!(allowed("rejected_deliveries", "signature_form").await, set(&forms));
    let reasons: Vec<&str> = RejectionReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(allowed("rejected_deliveries", "reason").await, set(&reasons));
    use singapay_webhooks::singapay::status::Transition;
    use singapay_webhooks::store::inquiries::{CheckReason, ANSWERS};
    let checks: Vec<&str> = CheckReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(allowed("reconcile_checks", "reason").await, set(&checks));
    assert_eq!(allowed("inquiries", "reason").await, set(&checks));
    assert_eq!(allowed("inquiries", "answer").await, set(&ANSWERS));
    let transitions: Vec<&str> = [Transition::Applied, Transition::Unchanged, Transition::Stale, Transition::Conflict]
        .iter()
        .map(|t| t.as_str())
        .collect();
    assert_eq!(allowed("inquiries", "transition").await, set(&transitions));
}
