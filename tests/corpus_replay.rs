//! Replays every committed fuzz input (`corpus/<target>/*` seeds and
//! `corpus/regressions/<target>/*` crashes) through its target's library function on stable Rust.

use qparity::gen::fuzz::{run_target, TARGETS};
use std::path::Path;

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn replay(target: &str, dir: &Path) -> usize {
    let fs = files(dir);
    for f in &fs {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("reading {}: {e}", f.display()));
        let r = std::panic::catch_unwind(|| run_target(target, &data));
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{}: {e}", f.display()),
            Err(_) => panic!(
                "{} panicked in target {target} (message above); reproduce with \
                 qparity::gen::fuzz::{target}(&std::fs::read({:?}).unwrap())",
                f.display(),
                f.display()
            ),
        }
    }
    fs.len()
}

#[test]
fn seed_corpus_replays_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for t in TARGETS {
        let n = replay(t, &root.join(t));
        assert!(
            n >= 3,
            "corpus/{t}/ must hold a seed corpus (found {n} files)"
        );
    }
}

#[test]
fn crash_regressions_replay_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/regressions");
    for t in TARGETS {
        replay(t, &root.join(t));
    }
    // Every directory under corpus/regressions names a target.
    let stray = files(&root);
    assert!(
        stray.is_empty(),
        "stray files {stray:?} (expected corpus/regressions/<target>/)"
    );
    if let Ok(rd) = std::fs::read_dir(&root) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                TARGETS.contains(&name.as_str()),
                "unknown target dir {name}"
            );
        }
    }
}

#[test]
fn unknown_target_is_an_error() {
    assert!(run_target("no_such_target", b"").is_err());
}
