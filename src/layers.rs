//! The crate's modules form layers: each may use only the modules of the layers below it, so
//! the data path reads one way and no two modules depend on each other. This test reads the
//! sources and fails naming every `crate::` path that points up or sideways.
//! Run it alone with `cargo test --lib layers`.

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

fn sources(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable sources") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut upward = Vec::new();
    let mut unplaced = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let module = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|name| name.trim_end_matches(".rs"))
            .expect("a file name");
        if ["lib", "bin", "layers"].contains(&module) {
            continue;
        }
        let Some(own) = layer_of(module) else {
            unplaced.push(module.to_owned());
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("readable source");
        for (number, line) in text.lines().enumerate() {
            for (at, _) in line.match_indices("crate::") {
                let used: String = line[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let bottom = LAYERS.len() - 1;
                match layer_of(&used) {
                    Some(layer)
                        if used != module && (layer < own || (layer == own && own != bottom)) =>
                    {
                        upward.push(format!(
                            "{}:{}: {module} uses crate::{used}",
                            relative.display(),
                            number + 1
                        ))
                    }
                    _ => {}
                }
            }
        }
    }
    assert!(unplaced.is_empty(), "modules in no layer: {unplaced:?}");
    assert!(
        upward.is_empty(),
        "uses of a module in the same or a higher layer:\n{}",
        upward.join("\n")
    );
}
