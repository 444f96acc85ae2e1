//! Hub sources without network: the fallback to an already-cached snapshot when the Hub cannot be
//! reached, and the error when nothing usable is cached.

use std::path::Path;

use rlxf_data::{load_pairs, DataError, HubOptions, HubSource, LoadOptions, Source};

/// Lays out a cache the way hf-hub and huggingface_hub do:
/// `datasets--OWNER--NAME/{refs/REVISION, snapshots/COMMIT/FILES}`.
fn cached_repo(cache: &Path, revision: &str, commit: &str, files: &[&str]) {
    let repo = cache.join("datasets--Dahoas--rm-static");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join(revision), commit).unwrap();
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rm_static_sample.parquet");
    for file in files {
        let path = repo.join("snapshots").join(commit).join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::copy(&fixture, path).unwrap();
    }
}

/// An endpoint nothing listens on, so any request fails at once (as it does offline).
fn offline(cache: &Path) -> HubOptions {
    HubOptions {
        cache_dir: Some(cache.to_path_buf()),
        endpoint: Some("http://127.0.0.1:9".into()),
        progress: false,
    }
}

#[test]
fn unreachable_hub_falls_back_to_the_cached_snapshot() {
    let cache = tempfile::tempdir().unwrap();
    let files = [
        "data/test-00000-of-00001.parquet",
        "data/train-00000-of-00001.parquet",
    ];
    cached_repo(cache.path(), "main", "abc123", &files);
    let options = offline(cache.path());

    let all: HubSource = "hf://datasets/Dahoas/rm-static".parse().unwrap();
    let resolved = all.resolve(&options).unwrap();
    assert_eq!(resolved.len(), 2);
    assert!(resolved[0].ends_with("snapshots/abc123/data/test-00000-of-00001.parquet"));

    let test_split: HubSource = "hf://datasets/Dahoas/rm-static/test".parse().unwrap();
    let resolved = test_split.resolve(&options).unwrap();
    assert_eq!(resolved.len(), 1);
    assert!(resolved[0].ends_with("test-00000-of-00001.parquet"));

    // The whole load path works on the cached source.
    let load = LoadOptions {
        hub: options.clone(),
        ..LoadOptions::default()
    };
    let loaded = load_pairs(&Source::Hub(test_split), &load).unwrap();
    assert_eq!(loaded.pairs.len(), 5);
}

#[test]
fn a_revision_that_is_a_commit_finds_its_snapshot() {
    let cache = tempfile::tempdir().unwrap();
    cached_repo(cache.path(), "main", "deadbeef", &["data/test.parquet"]);
    let pinned: HubSource = "hf://datasets/Dahoas/rm-static@deadbeef".parse().unwrap();
    assert_eq!(pinned.resolve(&offline(cache.path())).unwrap().len(), 1);
}

#[test]
fn uncached_source_without_network_says_what_to_do() {
    let cache = tempfile::tempdir().unwrap();
    cached_repo(
        cache.path(),
        "main",
        "abc123",
        &["data/train-00000-of-00001.parquet"],
    );
    // Cached, but not the requested split: a request is needed and fails.
    let source: HubSource = "hf://datasets/Dahoas/rm-static/test".parse().unwrap();
    let err = source.resolve(&offline(cache.path())).unwrap_err();
    assert!(matches!(err, DataError::Hub { .. }), "{err}");
    assert!(
        !err.is_bad_input(),
        "a missing network is a runtime failure"
    );
    let message = err.to_string();
    assert!(
        message.contains("hf://datasets/Dahoas/rm-static/test"),
        "{message}"
    );
    assert!(
        message.contains("download the dataset files yourself"),
        "{message}"
    );
    assert!(message.contains("local path"), "{message}");
}
