//! Where the workspace allows `unsafe` code. The workspace forbids it; the crates that need a
//! few audited calls deny it instead and allow it on exactly those items, listed here, so
//! that a new `allow` anywhere is a failing test and a review, not a quiet addition.

/// Every Rust source of the workspace that allows `unsafe_code`, with how many times.
const ALLOWED: &[(&str, usize)] = &[
    // mimalloc's C API: the purge delay set at start, and read back by its test.
    ("cli/src/alloc.rs", 2),
    // A prefetch hint in the record loops.
    ("core/src/prefetch.rs", 1),
    // The designer: glibc's malloc told to keep freed memory (`mallopt`), and a child
    // `flow run` ended with its parent (`prctl`).
    ("designer/src/main.rs", 1),
    ("designer/src/session.rs", 1),
];

fn walk(root: &std::path::Path, dir: &std::path::Path, found: &mut Vec<(String, usize)>) {
    let entries = std::fs::read_dir(dir).expect("readable source directory");
    for e in entries {
        let path = e.expect("directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            // Build outputs and version control are not sources.
            if !matches!(name, "target" | ".git") {
                walk(root, &path, found);
            }
        } else if name.ends_with(".rs") {
            let text = std::fs::read_to_string(&path).expect("readable source");
            let n = text.matches(concat!("allow(", "unsafe_code")).count();
            if n > 0 {
                let rel = path.strip_prefix(root).expect("under the root");
                found.push((rel.display().to_string(), n));
            }
        }
    }
}

#[test]
fn unsafe_code_is_allowed_only_where_listed() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace's root");
    let mut found = Vec::new();
    walk(root, root, &mut found);
    found.sort();
    let allowed: Vec<(String, usize)> = ALLOWED.iter().map(|&(f, n)| (f.to_owned(), n)).collect();
    assert_eq!(found, allowed);
}
