//! The crate's modules form layers: each may use only the modules of the layers below it, so
//! the data path reads one way and no two modules depend on each other; inside a module, its
//! files use each other without a cycle. This test reads the sources (each file without its
//! tests, its comments and its strings), resolves every path (`crate::…`, `super::…`,
//! `self::…`, a child module's name, grouped `use a::{b, c::{d}}` imports, and an item a
//! module re-exports, to the file that defines it) and fails naming every use that points up
//! or sideways and every cycle between the files of one module.
//! Run it alone with `cargo test --lib layers`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Top layer first. Modules on one line are one layer and do not use each other.
const LAYERS: &[&[&str]] = &[
    &["export"],
    &["sql"],
    &["queue"],
    &["instance"],
    &["leaf"],
    &["tablegen"],
    &["plan"],
    &["query"],
    &["table"],
    &["statestore"],
    &["storage"],
    // The crate's error type names model types (a key order, a state version) and the model
    // returns it: together they are the bottom.
    &["model", "error"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable sources") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// `plan/merge/reader.rs` is `plan::merge::reader`, `plan/merge/mod.rs` is `plan::merge`.
fn module_of(relative: &Path) -> Vec<String> {
    let mut module: Vec<String> = relative
        .with_extension("")
        .components()
        .filter_map(|c| c.as_os_str().to_str().map(str::to_owned))
        .collect();
    if module.last().is_some_and(|name| name == "mod") {
        module.pop();
    }
    module
}

/// The code of a file before its tests (a `#[cfg(test)]` module, which the crate keeps last),
/// with comments removed and string and character literals emptied.
fn code_of(text: &str) -> String {
    let tests = text
        .match_indices("\n#[cfg(test)]\n")
        .find(|&(at, marker)| {
            let item = text[at + marker.len()..].lines().next().unwrap_or_default();
            item.starts_with("mod ") || item.starts_with("pub") && item.contains(" mod ")
        });
    let text = tests.map_or(text, |(at, _)| &text[..at]);
    let chars: Vec<char> = text.chars().collect();
    let mut code = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let rest = |n: usize| chars.get(i + n).copied();
        match chars[i] {
            '/' if rest(1) == Some('/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if rest(1) == Some('*') => {
                i += 2;
                while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
            }
            'r' if rest(1) == Some('#') || rest(1) == Some('"') => {
                let hashes = (1..).take_while(|&n| rest(n) == Some('#')).count();
                if rest(hashes + 1) != Some('"') {
                    code.push('r');
                    i += 1;
                    continue;
                }
                i += hashes + 2;
                let closes = |at: usize| {
                    chars[at] == '"' && (1..=hashes).all(|n| chars.get(at + n) == Some(&'#'))
                };
                while i < chars.len() && !closes(i) {
                    i += 1;
                }
                i += hashes + 1;
                code.push_str("\"\"");
            }
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                code.push_str("\"\"");
            }
            // A character literal ('x', '\n', '\''); a lifetime ('a) has no closing quote.
            '\'' if rest(1) == Some('\\') => {
                i += 3;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            }
            '\'' if rest(2) == Some('\'') => i += 3,
            c => {
                code.push(c);
                i += 1;
            }
        }
    }
    code
}

/// Every path a `use` tree names, in full: `a::{b, c::{self, d as e}}` is `a::b`, `a::c`,
/// `a::c::d`; each with the name it is known by where it is used (the last segment, or its
/// `as` name).
fn expand_use_tree(tree: &str) -> Vec<(Vec<String>, String)> {
    let tree: String = tree
        .chars()
        .filter(|c| !c.is_whitespace() || *c == ' ')
        .collect();
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let (path, alias) = match tree.split_once(" as ") {
            Some((path, alias)) => (path.trim(), alias.trim()),
            None => (tree, tree.rsplit("::").next().unwrap_or(tree)),
        };
        let segments: Vec<String> = path
            .split("::")
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        return vec![(segments, alias.to_owned())];
    };
    let prefix: Vec<String> = tree[..open]
        .split("::")
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (at, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    let mut paths = Vec::new();
    for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        for (tail, alias) in expand_use_tree(part) {
            let mut full = prefix.clone();
            if tail.first().is_some_and(|s| s == "self") {
                let alias = if alias == "self" {
                    prefix.last().cloned().unwrap_or_default()
                } else {
                    alias
                };
                paths.push((full, alias));
            } else {
                full.extend(tail);
                paths.push((full, alias));
            }
        }
    }
    paths
}

/// One source file: its module, and the paths it names.
struct Source {
    relative: PathBuf,
    module: Vec<String>,
    /// Paths of `use` items, with the names they bring in and whether they are re-exported.
    uses: Vec<(Vec<String>, String, bool)>,
    /// Paths written out in the code (`crate::a::b(…)`, `super::c::D`).
    paths: Vec<Vec<String>>,
}

impl Source {
    fn read(src: &Path, file: &Path) -> Source {
        let relative = file.strip_prefix(src).expect("under src").to_owned();
        let code = code_of(&std::fs::read_to_string(file).expect("readable source"));
        let mut uses = Vec::new();
        let mut rest = code.as_str();
        while let Some(at) = find_word(rest, "use") {
            let before = rest[..at].trim_end();
            let public = ["pub", "pub(crate)", "pub(super)"]
                .iter()
                .any(|visibility| before.ends_with(visibility));
            let statement = &rest[at + 3..];
            let end = statement.find(';').unwrap_or(statement.len());
            for (path, alias) in expand_use_tree(&statement[..end]) {
                uses.push((path, alias, public));
            }
            rest = &statement[end..];
        }
        let mut paths = Vec::new();
        for root in ["crate", "super", "self"] {
            let mut rest = code.as_str();
            while let Some(at) = find_word(rest, root) {
                let path: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let segments: Vec<String> = path
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                if segments.len() > 1 {
                    paths.push(segments);
                }
                rest = &rest[at + root.len()..];
            }
        }
        Source {
            module: module_of(&relative),
            relative,
            uses,
            paths,
        }
    }
}

/// Where `word` starts in `text` as a word of its own.
fn find_word(text: &str, word: &str) -> Option<usize> {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(found) = text[from..].find(word) {
        let at = from + found;
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        if !before.is_some_and(is_word) && !after.is_some_and(is_word) {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// The crate's modules and what each re-exports from its child modules.
struct Crate {
    modules: BTreeSet<Vec<String>>,
    /// (module, name) → the child module that defines the item the module re-exports as `name`.
    reexports: HashMap<(Vec<String>, String), String>,
}

impl Crate {
    /// `path` as named in `module`, from the crate's root; `None` for another crate's path.
    fn resolve(&self, module: &[String], path: &[String]) -> Option<Vec<String>> {
        let first = path.first()?;
        let mut base: Vec<String> = match first.as_str() {
            "crate" => Vec::new(),
            "self" => module.to_vec(),
            "super" => module[..module.len().saturating_sub(1)].to_vec(),
            _ => {
                let mut child = module.to_vec();
                child.push(first.clone());
                return self.modules.contains(&child).then(|| {
                    let mut full = module.to_vec();
                    full.extend(path.iter().cloned());
                    full
                });
            }
        };
        let mut rest = &path[1..];
        while rest.first().is_some_and(|s| s == "super") {
            base.pop();
            rest = &rest[1..];
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    /// The child of `parent` that `target` (below `parent`) comes from: a child module named
    /// in it, or the one that defines an item `parent` re-exports.
    fn child_of(&self, parent: &[String], target: &[String]) -> Option<String> {
        let name = target.get(parent.len())?;
        let mut child = parent.to_vec();
        child.push(name.clone());
        if self.modules.contains(&child) {
            return Some(name.clone());
        }
        self.reexports
            .get(&(parent.to_vec(), name.clone()))
            .cloned()
    }

    /// The modules of `sources`, and what each re-exports.
    fn of(sources: &[Source]) -> Crate {
        let mut krate = Crate {
            modules: sources.iter().map(|s| s.module.clone()).collect(),
            reexports: HashMap::new(),
        };
        for source in sources {
            for (path, alias, public) in &source.uses {
                if let Some(target) = krate.resolve(&source.module, path).filter(|_| *public) {
                    if let Some(child) = krate.child_of(&source.module, &target) {
                        krate
                            .reexports
                            .insert((source.module.clone(), alias.clone()), child);
                    }
                }
            }
        }
        krate
    }
}

/// A cycle in `edges`, as the names along it, if there is one.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

/// Each module's cycle between its files, if it has one.
fn cycles_of(siblings: &BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>>) -> Vec<String> {
    siblings
        .iter()
        .filter_map(|(parent, edges)| {
            find_cycle(edges).map(|cycle| format!("{}: {}", parent.join("::"), cycle.join(" → ")))
        })
        .collect()
}

#[test]
fn every_module_uses_only_the_layers_below_it_and_no_files_of_one_module_use_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let sources: Vec<Source> = files
        .iter()
        .map(|file| Source::read(&src, file))
        .filter(|s| !["lib", "bin", "layers"].contains(&s.module[0].as_str()))
        .collect();
    let krate = Crate::of(&sources);

    let bottom = LAYERS.len() - 1;
    let mut upward = BTreeSet::new();
    let mut unplaced = BTreeSet::new();
    let mut siblings: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for source in &sources {
        let module = &source.module;
        let Some(own) = layer_of(&module[0]) else {
            unplaced.insert(module[0].clone());
            continue;
        };
        let named = source
            .uses
            .iter()
            .map(|(path, _, _)| path)
            .chain(&source.paths);
        for target in named.filter_map(|path| krate.resolve(module, path)) {
            let Some(used) = target.first() else { continue };
            match layer_of(used) {
                Some(layer)
                    if *used != module[0] && (layer < own || (layer == own && own != bottom)) =>
                {
                    upward.insert(format!(
                        "{}: {} uses crate::{}",
                        source.relative.display(),
                        module[0],
                        target.join("::")
                    ));
                }
                _ => {}
            }
            let parent = &module[..module.len() - 1];
            if parent.is_empty() || !target.starts_with(parent) {
                continue;
            }
            if let Some(child) = krate.child_of(parent, &target) {
                let name = module.last().expect("a module name");
                if child != *name {
                    siblings
                        .entry(parent.to_vec())
                        .or_default()
                        .entry(name.clone())
                        .or_default()
                        .insert(child);
                }
            }
        }
    }
    let cycles = cycles_of(&siblings);
    let mut problems = Vec::new();
    if !unplaced.is_empty() {
        problems.push(format!("modules in no layer: {unplaced:?}"));
    }
    if !upward.is_empty() {
        problems.push(format!(
            "uses of a module in the same or a higher layer:\n{}",
            upward.into_iter().collect::<Vec<_>>().join("\n")
        ));
    }
    if !cycles.is_empty() {
        problems.push(format!(
            "files of one module that use each other:\n{}",
            cycles.join("\n")
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The reading of paths the check relies on, on sources written to trip it.
#[test]
fn grouped_imports_super_paths_and_reexports_are_resolved() {
    let code = code_of(
        "use crate::{a::{self, b::C}, d};\n// use crate::commented;\nlet s = \"crate::quoted\";\n\
         let c = '\"'; fn f<'a>() {}\n#[cfg(test)]\nmod tests { use crate::tested; }",
    );
    assert!(!code.contains("commented") && !code.contains("quoted") && !code.contains("tested"));
    assert!(code.contains("fn f<'a>()"), "{code}");
    let uses: Vec<(Vec<String>, String)> = expand_use_tree("crate::{a::{self, b::C as E}, d}");
    let names = |path: &[&str]| path.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        uses,
        vec![
            (names(&["crate", "a"]), "a".to_owned()),
            (names(&["crate", "a", "b", "C"]), "E".to_owned()),
            (names(&["crate", "d"]), "d".to_owned()),
        ]
    );
    let krate = Crate {
        modules: [names(&["m"]), names(&["m", "x"]), names(&["m", "y"])].into(),
        reexports: [((names(&["m"]), "Item".to_owned()), "y".to_owned())].into(),
    };
    let in_x = names(&["m", "x"]);
    let target = krate.resolve(&in_x, &names(&["super", "Item"])).unwrap();
    assert_eq!(
        krate.child_of(&names(&["m"]), &target).as_deref(),
        Some("y")
    );
    let target = krate.resolve(&names(&["m"]), &names(&["y", "Z"])).unwrap();
    assert_eq!(target, names(&["m", "y", "Z"]));
    assert_eq!(krate.resolve(&in_x, &names(&["std", "fmt"])), None);
    let edges: BTreeMap<String, BTreeSet<String>> = [
        ("x".to_owned(), ["y".to_owned()].into()),
        ("y".to_owned(), ["x".to_owned()].into()),
    ]
    .into();
    assert_eq!(find_cycle(&edges), Some(names(&["x", "y", "x"])));
}
