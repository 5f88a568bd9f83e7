//! Every `SENTIA_*` variable a service or the CLI reads by name is documented in
//! `.env.example` — set there, or named in a comment (aliases); a prefix such as
//! `SENTIA_KEY_SERVICE` (read as `{PREFIX}_ADDR`, `{PREFIX}_TOKEN`) by its expansions.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `"SENTIA_…"` string literals in `text`.
fn variables(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in text.match_indices("\"SENTIA_") {
        let name: String = text[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !name.ends_with('_') {
            found.insert(name);
        }
    }
    found
}

/// True if `name` occurs in `text` as a whole name or as the prefix of one (`NAME_…`).
fn mentions(text: &str, name: &str) -> bool {
    text.match_indices(name).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + name.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_uppercase() || c == '_')
            && !after.is_some_and(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    })
}

/// Every variable the sources of `group/*/src` read, by whether the crate ships (`.env.example`
/// documents those) or is the test harness (the README's test section documents those).
fn read_by(root: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut shipped, mut harness) = (Vec::new(), Vec::new());
    for group in ["crates", "services"] {
        for member in std::fs::read_dir(root.join(group)).unwrap() {
            let member = member.unwrap().path();
            let src = member.join("src");
            if src.is_dir() {
                let out = if member.ends_with("testkit") {
                    &mut harness
                } else {
                    &mut shipped
                };
                rust_files(&src, out);
            }
        }
    }
    assert!(shipped.len() > 20, "the workspace's sources were found");
    assert!(!harness.is_empty(), "the test harness's sources were found");
    let names = |files: &[PathBuf]| {
        let mut read = BTreeSet::new();
        for f in files {
            read.extend(variables(&std::fs::read_to_string(f).unwrap()));
        }
        read
    };
    (names(&shipped), names(&harness))
}

#[test]
fn every_variable_read_by_name_is_in_env_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let documented = std::fs::read_to_string(root.join(".env.example")).unwrap();
    let (read, _) = read_by(&root);
    assert!(read.contains("SENTIA_MASTER_KEY"), "{read:?}");
    let missing: Vec<_> = read.iter().filter(|v| !mentions(&documented, v)).collect();
    assert!(missing.is_empty(), "not in .env.example: {missing:?}");
}

#[test]
fn every_variable_the_test_harness_reads_is_in_the_readme() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let documented = std::fs::read_to_string(root.join("README.md")).unwrap();
    let (_, read) = read_by(&root);
    assert!(read.contains("SENTIA_TEST_POSTGRES_URL"), "{read:?}");
    // The harness also names the services' own variables (in the configs it builds); its
    // own settings are the SENTIA_TEST_* ones.
    let missing: Vec<_> = read
        .iter()
        .filter(|v| v.starts_with("SENTIA_TEST_") && !mentions(&documented, v))
        .collect();
    assert!(missing.is_empty(), "not in README.md: {missing:?}");
}

#[test]
fn a_name_is_mentioned_whole_or_as_a_prefix_never_inside_a_longer_name() {
    let text = "# aliases: SENTIA_OLD.\nSENTIA_KEY_SERVICE_ADDR=x\nSENTIA_TOKEN_REFRESH=5s\n";
    assert!(mentions(text, "SENTIA_OLD"));
    assert!(mentions(text, "SENTIA_KEY_SERVICE"));
    assert!(
        mentions(text, "SENTIA_TOKEN"),
        "a prefix of a documented name"
    );
    assert!(!mentions(text, "SENTIA_KEY_SERV"));
    assert!(!mentions(text, "SENTIA_TOKEN_REFRESHED"));
}

#[test]
fn names_are_read_from_string_literals_only_whole() {
    let found =
        variables(r#"r.optional("SENTIA_X_Y"); format!("{}", "SENTIA_PREFIX_"); "SENTIA_2FA""#);
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        vec!["SENTIA_2FA".to_string(), "SENTIA_X_Y".to_string()]
    );
}
