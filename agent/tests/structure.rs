//! The layout docs/architecture.md draws, checked: each part of the agent imports only the
//! parts below it, no two files of a folder import each other in a loop, and no source
//! file grows past what a reader takes in at once. Read off the source text (`crate::`,
//! `super::` and `self::` paths), so it needs no extra tooling.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The parts of the agent, lowest first: a part may use only the parts before it.
const LAYERS: [&str; 12] = [
    "build_info",
    "policy",
    "dns",
    "compiler",
    "datapath",
    "events",
    "observe",
    "rollout",
    "source",
    "control",
    "agent",
    "cli",
];

/// Longest a source file may be (tests apart): about what a reader takes in at once.
const MAX_LINES: usize = 600;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every .rs file below `dir`, as paths relative to `src()`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading the source tree") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path.strip_prefix(src()).expect("below src").to_path_buf());
        }
    }
}

/// The module path of a file: `policy/parse/mod.rs` is [policy, parse].
fn module_of(file: &Path) -> Vec<String> {
    let mut parts: Vec<String> = file
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// Source text without comments, so a path named in a comment is no import.
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module paths a file's code names (`use` trees and plain paths starting with
/// `crate::`, `super::` or `self::`), resolved to absolute module paths.
fn imports(module: &[String], text: &str) -> BTreeSet<Vec<String>> {
    let text = code(text);
    let bytes = text.as_bytes();
    let mut found = BTreeSet::new();
    for (prefix, base) in [
        ("crate::", Vec::new()),
        ("super::", module[..module.len().saturating_sub(1)].to_vec()),
        ("self::", module.to_vec()),
    ] {
        for (i, _) in text.match_indices(prefix) {
            let preceded = text[..i]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
            if preceded {
                continue;
            }
            let mut base = base.clone();
            let mut at = i + prefix.len();
            while text[at..].starts_with("super::") {
                base.pop();
                at += "super::".len();
            }
            use_tree(bytes, at, base, &mut found);
        }
    }
    found.retain(|path| !path.is_empty() && path.as_slice() != module);
    found
}

/// Reads one use tree (`a::b`, `a::{b, c::d}`) at `i`, adding each path to `out`; gives
/// the position after it.
fn use_tree(
    s: &[u8],
    mut i: usize,
    mut path: Vec<String>,
    out: &mut BTreeSet<Vec<String>>,
) -> usize {
    let skip_space = |i: &mut usize| {
        while *i < s.len() && s[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_space(&mut i);
        if i < s.len() && s[i] == b'{' {
            i += 1;
            loop {
                i = use_tree(s, i, path.clone(), out);
                // Past an alias (`x as y`) to the next item or the group's end.
                while i < s.len() && s[i] != b',' && s[i] != b'}' {
                    i += 1;
                }
                if i < s.len() && s[i] == b',' {
                    i += 1;
                    continue;
                }
                return (i + 1).min(s.len());
            }
        }
        let start = i;
        while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'_') {
            i += 1;
        }
        if start == i {
            break;
        }
        let name = String::from_utf8_lossy(&s[start..i]).into_owned();
        if name != "self" {
            path.push(name);
        }
        if s[i..].starts_with(b"::") {
            i += 2;
        } else {
            break;
        }
    }
    out.insert(path);
    i
}

fn sources() -> Vec<(PathBuf, Vec<String>, String)> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(src().join(&f)).expect("reading a source file");
            let module = module_of(&f);
            (f, module, text)
        })
        .collect()
}

#[test]
fn every_part_uses_only_the_parts_below_it() {
    let rank = |part: &str| LAYERS.iter().position(|l| *l == part);
    let mut upward = Vec::new();
    for (file, module, text) in sources() {
        let Some(own) = module.first() else {
            continue; // lib.rs: only declares the parts
        };
        if file == Path::new("main.rs") {
            continue; // the binary: the command line over the library
        }
        let own_rank = rank(own).unwrap_or_else(|| {
            panic!(
                "{}: part `{own}` is not in LAYERS (add it where it belongs)",
                file.display()
            )
        });
        for import in imports(&module, &text) {
            let Some(other) = import.first().and_then(|p| rank(p)) else {
                continue;
            };
            if other > own_rank {
                upward.push(format!(
                    "{} ({own}) uses {} (above it)",
                    file.display(),
                    import.join("::")
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports pointing up:\n{}",
        upward.join("\n")
    );
}

/// Imports between the files (and subfolders) of each folder, mod.rs apart (it is the
/// folder's face: its children may use what it declares). A file in a subfolder counts
/// as the subfolder.
fn folder_graphs() -> BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> {
    let all = sources();
    let mut children: BTreeMap<Vec<String>, BTreeSet<String>> = BTreeMap::new();
    for (_, module, _) in &all {
        for depth in 1..=module.len() {
            children
                .entry(module[..depth - 1].to_vec())
                .or_default()
                .insert(module[depth - 1].clone());
        }
    }
    let mut graphs: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (file, module, text) in &all {
        if file.ends_with("mod.rs") || module.is_empty() {
            continue;
        }
        let found = imports(module, text);
        for depth in 0..module.len() {
            let (folder, node) = (&module[..depth], &module[depth]);
            let uses = found
                .iter()
                .filter(|p| p.len() > depth && p[..depth] == *folder && p[depth] != *node)
                .map(|p| p[depth].clone())
                .filter(|sibling| children[folder].contains(sibling));
            graphs
                .entry(folder.to_vec())
                .or_default()
                .entry(node.clone())
                .or_default()
                .extend(uses);
        }
    }
    graphs
}

#[test]
fn no_two_files_of_a_folder_import_each_other_in_a_loop() {
    let mut loops = Vec::new();
    for (folder, graph) in folder_graphs() {
        // Depth-first search for a cycle.
        fn visit(
            node: &str,
            graph: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
            loops: &mut Vec<String>,
        ) {
            if let Some(i) = path.iter().position(|p| p == node) {
                let mut cycle = path[i..].to_vec();
                cycle.push(node.to_string());
                loops.push(cycle.join(" -> "));
                return;
            }
            if !done.insert(node.to_string()) {
                return;
            }
            path.push(node.to_string());
            for next in graph.get(node).into_iter().flatten() {
                visit(next, graph, path, done, loops);
            }
            path.pop();
        }
        let mut done = BTreeSet::new();
        let mut found = Vec::new();
        for node in graph.keys() {
            visit(node, &graph, &mut Vec::new(), &mut done, &mut found);
        }
        for cycle in found {
            loops.push(format!("{}: {cycle}", folder.join("/")));
        }
    }
    assert!(loops.is_empty(), "import loops:\n{}", loops.join("\n"));
}

#[test]
fn no_source_file_is_longer_than_a_reader_takes_in() {
    let long: Vec<String> = sources()
        .into_iter()
        .filter(|(file, _, _)| !file.ends_with("tests.rs"))
        .filter_map(|(file, _, text)| {
            let lines = text.lines().count();
            (lines > MAX_LINES).then(|| format!("{}: {lines} lines", file.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "longer than {MAX_LINES} lines (split along a seam):\n{}",
        long.join("\n")
    );
}

#[test]
fn the_reader_finds_use_trees_and_paths_but_not_comments() {
    // The reader itself: a `use` of a higher part and a plain path are both found.
    let module = vec!["policy".to_string(), "model".to_string()];
    let found = imports(
        &module,
        "use crate::{\n    compiler::Compiled,\n    datapath::host,\n};\nfn f() { crate::agent::run(); super::parse::x(); }\n// crate::cli::not_code\n",
    );
    let names: BTreeSet<String> = found.iter().map(|p| p.join("::")).collect();
    for expected in [
        "compiler::Compiled",
        "datapath::host",
        "agent::run",
        "policy::parse::x",
    ] {
        assert!(names.contains(expected), "{expected} not in {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("cli")),
        "a comment is no import: {names:?}"
    );
}
