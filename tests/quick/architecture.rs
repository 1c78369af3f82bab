//! ARCHITECTURE.md's import rule, checked against the code: data flows one way, so each
//! module of the library imports only from the modules before it in the order the document
//! gives (and from the leaves, small helpers that import no other module but leaves). The
//! order is read from the document itself, so the document and this test cannot drift apart.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The words after `label` on the line of ARCHITECTURE.md's `text` block that starts with it.
fn rule_line(doc: &str, label: &str) -> Vec<String> {
    let line = doc
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("ARCHITECTURE.md has no line starting with `{label}`"));
    line[label.len()..]
        .split_whitespace()
        .filter(|w| *w != "→")
        .map(str::to_string)
        .collect()
}

/// The library's top-level modules, as lib.rs declares them (test-only ones left out).
fn declared_modules() -> BTreeSet<String> {
    let lib = fs::read_to_string(Path::new(ROOT).join("src/lib.rs")).unwrap();
    let mut test_only = false;
    let mut modules = BTreeSet::new();
    for line in lib.lines().map(str::trim) {
        if line == "#[cfg(test)]" {
            test_only = true;
            continue;
        }
        let decl = line
            .strip_prefix("pub mod ")
            .or_else(|| line.strip_prefix("pub(crate) mod "))
            .or_else(|| line.strip_prefix("mod "));
        if let Some(name) = decl.and_then(|d| d.strip_suffix(';')) {
            if !test_only {
                modules.insert(name.to_string());
            }
        }
        test_only = false;
    }
    modules
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a file's non-test code names as `crate::NAME`.
fn imports(path: &Path) -> BTreeSet<String> {
    let text = fs::read_to_string(path).unwrap();
    let mut found = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("#[cfg(test)]") {
            break; // the module's tests, at the end of the file
        }
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
            rest = after;
        }
    }
    found
}

#[test]
fn each_module_imports_only_from_the_modules_before_it_in_architecture_md() {
    let doc = fs::read_to_string(Path::new(ROOT).join("ARCHITECTURE.md")).unwrap();
    let order = rule_line(&doc, "order:");
    let leaves = rule_line(&doc, "leaves:");
    let declared = declared_modules();
    let listed: BTreeSet<String> = order.iter().chain(&leaves).cloned().collect();
    assert_eq!(
        listed, declared,
        "ARCHITECTURE.md's `order:` and `leaves:` lines must name every module lib.rs declares, once"
    );
    assert_eq!(
        order.len() + leaves.len(),
        listed.len(),
        "a module is listed twice"
    );

    let src = Path::new(ROOT).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut broken = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = top.trim_end_matches(".rs").to_string();
        let is_test_file = file.file_name().is_some_and(|n| n == "tests.rs");
        if !declared.contains(&module) || is_test_file {
            continue; // lib.rs, main.rs, test-only files
        }
        let place = order.iter().position(|m| *m == module);
        for used in imports(&file) {
            if used == module || !declared.contains(&used) {
                continue;
            }
            let allowed = if leaves.contains(&used) {
                true
            } else {
                match (place, order.iter().position(|m| *m == used)) {
                    (Some(mine), Some(theirs)) => theirs < mine,
                    _ => false, // a leaf importing a module that is not a leaf
                }
            };
            if !allowed {
                broken.push(format!("{} imports crate::{used}", rel.display()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "imports against ARCHITECTURE.md's order:\n  {}",
        broken.join("\n  ")
    );
}
