//! The library's modules form layers: each may use only the modules before
//! it in [`ORDER`] (ARCHITECTURE.md states the same order). Read from the
//! sources: every `crate::module` path outside comments, per top-level
//! module of `src/` (the binary, which may use everything, is left out).

/// Lower layers first. A module may use those before it, never one after it
/// or beside it.
const ORDER: [&str; 17] = [
    "error", "files", "dtype", "gpu", "tensor", "kernels", "autograd", "ops", "io", "nn", "optim",
    "text", "plot", "assets", "peak", "train", "tasks",
];

/// Names the crate root re-exports, and the module each comes from.
const ROOT_NAMES: [(&str, &str); 6] = [
    ("Error", "error"),
    ("Result", "error"),
    ("DType", "dtype"),
    ("Quant", "dtype"),
    ("Tensor", "tensor"),
    ("Gpu", "gpu"),
];

/// The first path segment after each `crate::` in `code`, with the
/// segments of a `crate::{a, b::c}` group.
fn crate_paths(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            found.push(first_segment(&item));
        } else {
            found.push(first_segment(rest));
        }
    }
    found.retain(|s| !s.is_empty());
    found
}

fn first_segment(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// (file, module, the modules it uses) for every source file of the library.
fn uses() -> Vec<(String, String, Vec<String>)> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut folders = vec![src.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if path.is_dir() {
                if rel != "bin" {
                    folders.push(path);
                }
                continue;
            }
            if !rel.ends_with(".rs") || rel == "lib.rs" {
                continue;
            }
            let module = rel
                .split('/')
                .next()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string();
            let code: String = std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            let used = crate_paths(&code)
                .into_iter()
                .map(|name| {
                    ROOT_NAMES
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map_or(name, |(_, m)| m.to_string())
                })
                .filter(|m| *m != module)
                .collect();
            out.push((rel, module, used));
        }
    }
    out
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let rank = |m: &str| ORDER.iter().position(|o| *o == m);
    let mut failures = Vec::new();
    for (file, module, used) in uses() {
        let Some(own) = rank(&module) else {
            failures.push(format!("src/{file}: module {module} is not in ORDER"));
            continue;
        };
        for u in used {
            match rank(&u) {
                Some(r) if r < own => {}
                Some(_) => {
                    failures.push(format!("src/{file}: {module} uses {u}, a layer above it"))
                }
                None => failures.push(format!("src/{file}: uses crate::{u}, not in ORDER")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The check reads what it should: a group import and a plain path.
#[test]
fn crate_paths_reads_groups_and_plain_paths() {
    let code =
        "use crate::{error::Result, tensor::{DType, Tensor}};\nlet x = crate::ops::add(a, b);";
    assert_eq!(crate_paths(code), ["error", "tensor", "ops"]);
}
