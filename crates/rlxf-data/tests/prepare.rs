//! `prepare`: byte-identical output for a seed, atomic output folder, manifest contents.

use std::path::Path;

use rlxf_data::{
    prepare, read_pairs_jsonl, ContextRules, DataError, LoadOptions, PrepareOptions, Source,
    SplitRatios, MANIFEST_FILE, SPLIT_FILES,
};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn options(rules: &ContextRules, seed: u64) -> PrepareOptions<'_> {
    PrepareOptions {
        seed,
        split: SplitRatios::default(),
        max_samples: Some(40),
        dedupe: true,
        token_budget: None,
        contexts: rules,
        contexts_label: "embedded".into(),
        overwrite: false,
    }
}

fn read_folder(dir: &Path) -> Vec<(String, Vec<u8>)> {
    SPLIT_FILES
        .iter()
        .chain([&MANIFEST_FILE])
        .map(|name| (name.to_string(), std::fs::read(dir.join(name)).unwrap()))
        .collect()
}

#[test]
fn same_seed_gives_byte_identical_output() {
    let rules = ContextRules::embedded();
    let root = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        root.path().join("a"),
        root.path().join("b"),
        root.path().join("c"),
    );
    let load = LoadOptions::default();
    let manifest = prepare(&Source::Embedded, &load, &options(&rules, 5), &a).unwrap();
    prepare(&Source::Embedded, &load, &options(&rules, 5), &b).unwrap();
    prepare(&Source::Embedded, &load, &options(&rules, 6), &c).unwrap();
    assert_eq!(read_folder(&a), read_folder(&b));
    assert_ne!(
        read_folder(&a)[0],
        read_folder(&c)[0],
        "another seed, another train split"
    );

    let counts = &manifest.counts;
    assert_eq!((counts.train, counts.validation, counts.test), (32, 4, 4));
    assert_eq!(
        counts.capped_out,
        counts.pairs_loaded - counts.duplicates_removed - 40
    );
    let train = read_pairs_jsonl(&a.join("train.jsonl")).unwrap();
    assert_eq!(train.len(), 32);
    assert!(train.iter().all(|p| p.context.is_some()));
    // Nothing but the three splits and the manifest is left behind, here or next to it.
    assert_eq!(std::fs::read_dir(&a).unwrap().count(), 4);
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 3);
}

#[test]
fn manifest_records_inputs_options_and_counts() {
    let rules = ContextRules::embedded();
    let out = tempfile::tempdir().unwrap().path().join("prepared");
    let source = Source::Path(Path::new(FIXTURES).join("rm_static_sample.parquet"));
    let mut opts = options(&rules, 1);
    opts.max_samples = None;
    prepare(&source, &LoadOptions::default(), &opts, &out).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(MANIFEST_FILE)).unwrap()).unwrap();
    assert_eq!(manifest["rlxf_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(manifest["options"]["seed"], 1);
    assert_eq!(manifest["options"]["contexts_sha256"], rules.sha256());
    assert_eq!(manifest["counts"]["pairs_loaded"], 5);
    assert_eq!(manifest["inputs"][0]["format"], "parquet");
    let sha = rlxf_data::load::sha256_file(&Path::new(FIXTURES).join("rm_static_sample.parquet"))
        .unwrap();
    assert_eq!(manifest["inputs"][0]["sha256"], sha);
    assert_eq!(sha.len(), 64);
    // Tags come from the rules for data without contexts: the lonely prompt is emotional support.
    assert_eq!(manifest["contexts"]["emotional_support"], 1);
}

#[test]
fn failure_leaves_no_partial_output() {
    let rules = ContextRules::embedded();
    let root = tempfile::tempdir().unwrap();
    let bad = root.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\": \"p\", \"chosen\": \" a\", \"rejected\": \" b\"}\n{oops\n",
    )
    .unwrap();
    let out = root.path().join("out");
    let err = prepare(
        &Source::Path(bad),
        &LoadOptions::default(),
        &options(&rules, 1),
        &out,
    )
    .unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(root.path()).unwrap().count(),
        1,
        "no temp folder left behind"
    );
}

#[test]
fn existing_output_is_kept_unless_overwrite() {
    let rules = ContextRules::embedded();
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let err = prepare(
        &Source::Embedded,
        &LoadOptions::default(),
        &options(&rules, 1),
        &out,
    )
    .unwrap_err();
    assert!(matches!(err, DataError::OutputExists { .. }), "{err}");
    assert!(out.join("keep.txt").exists());

    let mut replace = options(&rules, 1);
    replace.overwrite = true;
    prepare(&Source::Embedded, &LoadOptions::default(), &replace, &out).unwrap();
    assert!(!out.join("keep.txt").exists());
    assert!(out.join("train.jsonl").exists());
    assert_eq!(
        std::fs::read_dir(root.path()).unwrap().count(),
        1,
        "old output removed"
    );
}
