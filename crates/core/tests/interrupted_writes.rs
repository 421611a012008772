//! What an interrupt leaves of atomic outputs: `remove_unfinished_outputs`
//! deletes the temp files of open writers by name. Alone in its own test
//! binary, since it clears the process-wide list of open writers.

use std::fs;
use std::io::Write;

use firstrank_core::formats::{remove_unfinished_outputs, AtomicWriter};

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn unfinished_outputs_are_removed_and_finished_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("existing.txt");
    fs::write(&existing, "old\n").unwrap();
    let fresh = dir.path().join("fresh.jsonl");
    let done = dir.path().join("done.txt");

    let mut overwrite = AtomicWriter::create(&existing).unwrap();
    overwrite.write_all(b"half of the new").unwrap();
    overwrite.flush().unwrap();
    let mut new = AtomicWriter::create(&fresh).unwrap();
    new.write_all(b"{\"query\":").unwrap();
    new.flush().unwrap();
    let mut finished = AtomicWriter::create(&done).unwrap();
    finished.write_all(b"complete\n").unwrap();
    finished.commit().unwrap();
    assert_eq!(
        names(dir.path()).len(),
        4,
        "two temp files beside two targets"
    );

    assert_eq!(remove_unfinished_outputs(), 2);
    assert_eq!(names(dir.path()), ["done.txt", "existing.txt"]);
    assert_eq!(fs::read_to_string(&existing).unwrap(), "old\n");
    assert_eq!(fs::read_to_string(&done).unwrap(), "complete\n");

    // A writer whose temp file is gone cannot commit a partial output later.
    let err = overwrite.commit().unwrap_err().to_string();
    assert!(err.contains("existing.txt"), "{err}");
    assert_eq!(fs::read_to_string(&existing).unwrap(), "old\n");
    drop(new);
    assert!(!fresh.exists());
    assert_eq!(remove_unfinished_outputs(), 0, "nothing left open");
}
