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
        if let Some(name) = decl.and_then(|d| d.strip_suffix(';'))
            && !test_only
        {
            modules.insert(name.to_string());
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

/// Lines of code (not blank, not a comment) before the file's `#[cfg(test)]` tests.
fn code_lines(text: &str) -> usize {
    text.lines()
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .count()
}

/// `line` without its string and char literals and comments, for counting braces. Block
/// comments spanning lines are tracked in `in_comment`.
fn braces_only(line: &str, in_comment: &mut bool) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if *in_comment {
            if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                *in_comment = false;
                i += 2;
            } else {
                i += 1;
            }
            continue;
        }
        match chars[i] {
            '/' if chars.get(i + 1) == Some(&'/') => break,
            '/' if chars.get(i + 1) == Some(&'*') => {
                *in_comment = true;
                i += 2;
            }
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            // A char literal ('{', '\n'), not a lifetime ('a).
            '\'' if chars.get(i + 2) == Some(&'\'') => i += 3,
            '\'' if chars.get(i + 1) == Some(&'\\') => {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Each function's name, first line and length in lines (signature to closing brace).
fn function_lengths(text: &str) -> Vec<(String, usize, usize)> {
    let mut found = Vec::new();
    let mut open: Vec<(String, usize, i64)> = Vec::new(); // name, start, depth of its body
    let mut pending: Option<(String, usize, i64)> = None;
    let mut depth: i64 = 0;
    let mut in_comment = false;
    for (n, line) in text.lines().enumerate() {
        if pending.is_none() && !in_comment {
            let t = line.trim_start();
            let t = t
                .strip_prefix("pub(crate) ")
                .or_else(|| t.strip_prefix("pub(super) "))
                .or_else(|| t.strip_prefix("pub "))
                .unwrap_or(t);
            let t = t.strip_prefix("const ").unwrap_or(t);
            let t = t.strip_prefix("unsafe ").unwrap_or(t);
            if let Some(rest) = t.strip_prefix("fn ") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                pending = Some((name, n + 1, depth));
            }
        }
        for c in braces_only(line, &mut in_comment).chars() {
            match c {
                '{' => {
                    if let Some((name, start, at)) = pending.take_if(|p| p.2 == depth) {
                        open.push((name, start, at));
                    }
                    depth += 1;
                }
                '}' => {
                    depth -= 1;
                    if open.last().is_some_and(|f| f.2 == depth) {
                        let (name, start, _) = open.pop().unwrap();
                        found.push((name, start, n + 1 - start + 1));
                    }
                }
                ';' if pending.as_ref().is_some_and(|p| p.2 == depth) => pending = None,
                _ => {}
            }
        }
    }
    found
}

#[test]
fn no_source_file_is_over_800_lines_of_code_and_no_function_over_120_lines() {
    let src = Path::new(ROOT).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut over = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        let rel = file.strip_prefix(ROOT).unwrap().display().to_string();
        let lines = code_lines(&text);
        if lines > 800 {
            over.push(format!(
                "{rel}: {lines} lines of code before its tests (at most 800)"
            ));
        }
        for (name, start, len) in function_lengths(&text) {
            if len > 120 {
                over.push(format!(
                    "{rel}:{start}: fn {name} is {len} lines (at most 120)"
                ));
            }
        }
    }
    assert!(
        over.is_empty(),
        "give these a room of their own (ARCHITECTURE.md):\n  {}",
        over.join("\n  ")
    );
}

#[test]
fn the_measures_count_what_they_say() {
    let text = "// a comment\nfn short() {\n    let s = \"}\";\n}\n\nfn long() {\n    if x { y(); }\n    z('{');\n}\n#[cfg(test)]\nmod tests {}\n";
    assert_eq!(code_lines(text), 7);
    let fns = function_lengths(text);
    assert_eq!(
        fns,
        vec![("short".to_string(), 2, 3), ("long".to_string(), 6, 4)]
    );
}
