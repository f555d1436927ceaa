//! The module graph stays a DAG, and imports run only in the directions
//! `docs/architecture.md` allows.
//!
//! The graph is read from the sources: a file is a module; an arrow A → B is a
//! path in A (`use` or inline, `crate::`, `super::`, `self::`, and `tenantry::`
//! in the binary) that names B or something B defines. A folder's `mod.rs`
//! that re-exports a child's item (`pub use child::Item`) hands the arrow on to
//! that child, so a module that imports `jobs::Job` depends on the file that
//! defines `Job`. `mod` declarations are not arrows, and unit-test modules
//! (`#[cfg(test)] mod tests` at the end of a file) are left out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

struct Graph {
    /// Module path → its source file.
    files: BTreeMap<Module, PathBuf>,
    /// For a folder module: a re-exported name → the child module defining it.
    reexports: HashMap<Module, HashMap<String, Module>>,
    arrows: BTreeMap<Module, BTreeSet<Module>>,
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

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

fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    match parts.last().map(String::as_str) {
        Some("mod") | Some("lib") => {
            parts.pop();
        }
        Some("main") if parts.len() == 1 => parts = vec!["<main>".into()],
        _ => {}
    }
    parts
}

/// The source without comments, string literals and the trailing test module.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'r'
            && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(b[i] as char);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == b'"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&b'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '"') or a lifetime ('a).
            if b.get(i + 2) == Some(&b'\'') {
                i += 3;
            } else if b.get(i + 1) == Some(&b'\\') {
                i += 2;
                while i < b.len() && b[i] != b'\'' {
                    i += 1;
                }
                i += 1;
            } else {
                out.push('\'');
                i += 1;
            }
            out.push(' ');
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Expands a `use` tree (`a::{b, c::{d as e}, self}`) into its paths, each
/// with the name it is bound to when renamed.
fn expand_use(tree: &str) -> Vec<(Vec<String>, Option<String>)> {
    fn go(prefix: &[String], tree: &str, out: &mut Vec<(Vec<String>, Option<String>)>) {
        let tree = tree.trim();
        if tree.is_empty() {
            return;
        }
        if let Some(open) = tree.find('{') {
            let head: Vec<String> = tree[..open]
                .trim_end_matches(':')
                .split("::")
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            let close = tree.rfind('}').unwrap_or(tree.len());
            let inner = &tree[open + 1..close];
            let mut p = prefix.to_vec();
            p.extend(head);
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        go(&p, &inner[start..i], out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            go(&p, &inner[start..], out);
        } else {
            let (path, alias) = match tree.split_once(" as ") {
                Some((p, a)) => (p, Some(a.trim().to_owned())),
                None => (tree, None),
            };
            let mut p = prefix.to_vec();
            p.extend(path.split("::").map(|s| s.trim().to_owned()));
            if p.last().is_some_and(|s| s == "self") {
                p.pop();
            }
            out.push((p, alias));
        }
    }
    let mut out = Vec::new();
    go(&[], tree, &mut out);
    out
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Inline paths starting with `crate::`, `super::` or `tenantry::`.
fn inline_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for start in ["crate::", "super::", "tenantry::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| is_ident_char(c) || c == ':') {
                continue;
            }
            let rest = &code[at..];
            let end = rest
                .find(|c: char| !(is_ident_char(c) || c == ':'))
                .unwrap_or(rest.len());
            let path: Vec<String> = rest[..end]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            out.push(path);
        }
    }
    out
}

/// `use` declarations (`pub` or not), with whether each is `pub`.
fn use_decls(code: &str) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find("use ") {
        let at = from + i;
        from = at + 4;
        let before = code[..at].trim_end();
        if code[..at].chars().next_back().is_some_and(is_ident_char) {
            continue;
        }
        let public = before.ends_with("pub") || before.ends_with("pub(crate)");
        let statement_start = before.is_empty()
            || before.ends_with(';')
            || before.ends_with('}')
            || before.ends_with('{')
            || before.ends_with(']')
            || public;
        if !statement_start {
            continue;
        }
        let Some(end) = code[from..].find(';') else {
            break;
        };
        out.push((public, code[from..from + end].to_owned()));
        from += end;
    }
    out
}

impl Graph {
    fn read(src: &Path) -> Graph {
        let mut paths = Vec::new();
        rust_files(src, &mut paths);
        let mut files = BTreeMap::new();
        for p in paths {
            files.insert(module_of(src, &p), p);
        }
        let codes: BTreeMap<Module, String> = files
            .iter()
            .map(|(m, p)| (m.clone(), code_of(&std::fs::read_to_string(p).unwrap())))
            .collect();
        let mut graph = Graph {
            files,
            reexports: HashMap::new(),
            arrows: BTreeMap::new(),
        };
        // Re-exports of folder modules first: they hand arrows on.
        for (m, code) in &codes {
            if !graph.is_folder(m) {
                continue;
            }
            for (public, tree) in use_decls(code) {
                if !public {
                    continue;
                }
                for (path, alias) in expand_use(&tree) {
                    let (Some(first), Some(last)) = (path.first(), path.last()) else {
                        continue;
                    };
                    let full = if first == "self" {
                        &path[1..]
                    } else {
                        &path[..]
                    };
                    let mut target = m.clone();
                    target.extend(full.iter().cloned());
                    if let Some(t) = graph.longest_module(&target)
                        && t.len() > m.len()
                    {
                        graph
                            .reexports
                            .entry(m.clone())
                            .or_default()
                            .insert(alias.unwrap_or_else(|| last.clone()), t);
                    }
                }
            }
        }
        for (m, code) in &codes {
            let mut paths: Vec<Vec<String>> = use_decls(code)
                .into_iter()
                .flat_map(|(_, tree)| expand_use(&tree).into_iter().map(|(p, _)| p))
                .collect();
            paths.extend(inline_paths(code));
            for path in paths {
                if let Some(target) = graph.resolve(m, &path)
                    && &target != m
                    && !target.is_empty()
                {
                    graph.arrows.entry(m.clone()).or_default().insert(target);
                }
            }
        }
        graph
    }

    fn is_folder(&self, m: &Module) -> bool {
        self.files
            .get(m)
            .is_some_and(|p| p.ends_with("mod.rs") || p.ends_with("lib.rs"))
    }

    fn longest_module(&self, path: &[String]) -> Option<Module> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|m| self.files.contains_key(m))
    }

    /// The module a path from `from` names (after re-exports).
    fn resolve(&self, from: &Module, path: &[String]) -> Option<Module> {
        let first = path.first()?;
        let mut absolute: Vec<String> = match first.as_str() {
            "crate" => path[1..].to_vec(),
            "tenantry" if from == &vec!["<main>".to_owned()] => path[1..].to_vec(),
            "super" | "self" => {
                let mut base = if self.is_folder(from) {
                    from.clone()
                } else {
                    from[..from.len().saturating_sub(1)].to_vec()
                };
                let mut rest = path;
                if first == "super" {
                    // `super` of a file module is its folder's parent module.
                    if self.is_folder(from) {
                        base.pop();
                    }
                    rest = &rest[1..];
                    while rest.first().is_some_and(|s| s == "super") {
                        base.pop();
                        rest = &rest[1..];
                    }
                } else {
                    base = from.clone();
                    rest = &rest[1..];
                }
                base.extend(rest.iter().cloned());
                base
            }
            _ => return None,
        };
        let mut module = self.longest_module(&absolute)?;
        // Through re-exports of folder modules.
        while let Some(next) = absolute.get(module.len()).and_then(|item| {
            self.reexports
                .get(&module)
                .and_then(|r| r.get(item))
                .cloned()
        }) {
            if next == module {
                break;
            }
            let tail = absolute[module.len() + 1..].to_vec();
            let leaf = absolute[module.len()].clone();
            absolute = next.clone();
            absolute.push(leaf);
            absolute.extend(tail);
            module = next;
        }
        Some(module)
    }

    /// Strongly connected components with more than one module.
    fn cycles(&self) -> Vec<Vec<Module>> {
        struct State<'a> {
            g: &'a Graph,
            index: HashMap<&'a Module, usize>,
            low: HashMap<&'a Module, usize>,
            stack: Vec<&'a Module>,
            on: BTreeSet<&'a Module>,
            next: usize,
            out: Vec<Vec<Module>>,
        }
        fn visit<'a>(s: &mut State<'a>, v: &'a Module) {
            s.index.insert(v, s.next);
            s.low.insert(v, s.next);
            s.next += 1;
            s.stack.push(v);
            s.on.insert(v);
            if let Some(ws) = s.g.arrows.get(v) {
                for w in ws {
                    if !s.index.contains_key(w) {
                        visit(s, w);
                        let l = s.low[w].min(s.low[v]);
                        s.low.insert(v, l);
                    } else if s.on.contains(w) {
                        let l = s.index[w].min(s.low[v]);
                        s.low.insert(v, l);
                    }
                }
            }
            if s.low[v] == s.index[v] {
                let mut comp = Vec::new();
                loop {
                    let w = s.stack.pop().unwrap();
                    s.on.remove(w);
                    comp.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort();
                    s.out.push(comp);
                }
            }
        }
        let mut s = State {
            g: self,
            index: HashMap::new(),
            low: HashMap::new(),
            stack: Vec::new(),
            on: BTreeSet::new(),
            next: 0,
            out: Vec::new(),
        };
        for m in self.files.keys() {
            if !s.index.contains_key(m) {
                visit(&mut s, m);
            }
        }
        s.out
    }
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = Graph::read(&src);
    assert!(g.files.len() > 60, "the sources were not found");
    g
}

#[test]
fn the_module_graph_has_no_cycle() {
    let g = graph();
    let cycles = g.cycles();
    let mut report = String::new();
    for c in &cycles {
        report.push_str(&format!(
            "a cycle of {} modules: {}\n",
            c.len(),
            c.iter().map(name).collect::<Vec<_>>().join(", ")
        ));
        let inside: BTreeSet<&Module> = c.iter().collect();
        for a in c {
            for b in g.arrows.get(a).into_iter().flatten() {
                if inside.contains(b) {
                    report.push_str(&format!("    {} -> {}\n", name(a), name(b)));
                }
            }
        }
    }
    assert!(cycles.is_empty(), "{report}");
}

/// The layers of `docs/architecture.md`: a top-level module imports only the
/// modules listed for it (and its own).
const ALLOWED: &[(&str, &[&str])] = &[
    ("core", &[]),
    ("config", &["core"]),
    ("auth", &["core", "config"]),
    ("jobs", &["core", "config", "auth"]),
    ("mail", &["core", "config", "jobs"]),
    ("users", &["core", "config", "auth"]),
    ("billing", &["core", "config", "auth", "jobs", "mail"]),
    (
        "organizations",
        &["core", "config", "auth", "jobs", "mail", "users", "billing"],
    ),
    ("apikeys", &["core", "config", "auth", "organizations"]),
    (
        "identity",
        &["core", "config", "auth", "jobs", "mail", "users"],
    ),
    ("reports", &["core", "config", "auth", "jobs"]),
    (
        "imports",
        &["core", "config", "auth", "jobs", "organizations"],
    ),
    (
        "app",
        &[
            "core",
            "config",
            "auth",
            "jobs",
            "mail",
            "users",
            "billing",
            "organizations",
            "apikeys",
            "identity",
            "reports",
            "imports",
        ],
    ),
];

#[test]
fn imports_run_only_in_the_allowed_directions() {
    let g = graph();
    let allowed: HashMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for (from, targets) in &g.arrows {
        let Some(top) = from.first() else { continue };
        if top == "<main>" {
            continue;
        }
        let Some(ok) = allowed.get(top.as_str()) else {
            wrong.push(format!(
                "{}: a top-level module the table does not list",
                name(from)
            ));
            continue;
        };
        for to in targets {
            let Some(target_top) = to.first() else {
                continue;
            };
            if target_top != top && !ok.contains(&target_top.as_str()) {
                wrong.push(format!("{} -> {}", name(from), name(to)));
            }
        }
    }
    for m in g.files.keys() {
        if let Some(top) = m.first()
            && top != "<main>"
            && !allowed.contains_key(top.as_str())
        {
            wrong.push(format!(
                "{}: a top-level module the table does not list",
                name(m)
            ));
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "imports against the layers of docs/architecture.md:\n{}",
        wrong.join("\n")
    );
}

/// The guard itself sees arrows: a fixture with a known loop is found.
#[test]
fn the_guard_finds_a_cycle_and_follows_reexports() {
    let dir = std::env::temp_dir().join(format!("tenantry-graph-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::write(dir.join("lib.rs"), "pub mod a;\npub mod b;\n").unwrap();
    std::fs::write(
        dir.join("a/mod.rs"),
        "//! A folder.\nmod x;\nmod y;\npub use x::{Thing, Other as Renamed};\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("a/x.rs"),
        "use crate::b::helper;\npub struct Thing;\npub struct Other;\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("a/y.rs"),
        "// use crate::b::nothing;\nfn f() { let s = \"crate::b::also_nothing\"; }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("b.rs"),
        "pub fn helper() { let _ = crate::a::Renamed; }\n#[cfg(test)]\nmod tests {\n    use crate::a::y;\n}\n",
    )
    .unwrap();
    let g = Graph::read(&dir);
    let m = |s: &str| -> Module { s.split("::").map(str::to_owned).collect() };
    assert!(g.arrows[&m("a::x")].contains(&m("b")));
    // Through the re-export, to the file that defines it; not to `a` itself.
    assert_eq!(g.arrows[&m("b")], BTreeSet::from([m("a::x")]));
    // Comments, strings and test modules draw no arrow.
    assert!(!g.arrows.contains_key(&m("a::y")));
    assert_eq!(g.cycles(), vec![vec![m("a::x"), m("b")]]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The table of layers in `docs/architecture.md` says what `ALLOWED` says.
#[test]
fn the_documented_layers_are_the_guarded_ones() {
    let doc = include_str!("../../docs/architecture.md");
    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in doc.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | layer | module | may import |
        let (Some(module), Some(imports)) = (cells.get(2), cells.get(3)) else {
            continue;
        };
        let ticked = |s: &str| -> Vec<String> {
            s.split('`')
                .skip(1)
                .step_by(2)
                .map(|m| m.trim_end_matches('/').to_owned())
                .collect()
        };
        for m in ticked(module) {
            if m == "main.rs" || m == "app" {
                continue;
            }
            documented.insert(m, ticked(imports).into_iter().collect());
        }
    }
    let guarded: BTreeMap<String, BTreeSet<String>> = ALLOWED
        .iter()
        .filter(|(m, _)| *m != "app")
        .map(|(m, deps)| (m.to_string(), deps.iter().map(|d| d.to_string()).collect()))
        .collect();
    assert_eq!(documented, guarded);
}
