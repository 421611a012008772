//! The fetcher against a local stand-in HTTP server: a whole download, a
//! download cut half-way and resumed with a Range request, a 404, a file
//! whose checksum is wrong, and dataset names resolved through the mirror
//! variable (`FIRSTRANK_DATA_URL`) to the real registry files, served from
//! the shared test data and checked against the pinned checksums.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use firstrank_data::fetch::fetch_file;
use firstrank_data::registry::{Checksum, DataFile, Role};

/// Serves `routes` (path -> bytes); `/cut/...` sends half the body and hangs
/// up; unknown paths are 404. Records the Range headers it saw.
fn serve(routes: Vec<(String, Vec<u8>)>) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut range_from = None;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    seen.lock().unwrap().push(v.trim().to_string());
                    range_from = v.trim().trim_end_matches('-').parse::<usize>().ok();
                }
            }
            let key = path.strip_prefix("/cut").unwrap_or(&path);
            let Some((_, body)) = routes.iter().find(|(p, _)| p == key) else {
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            };
            let (status, body) = match range_from {
                Some(from) if from < body.len() => ("206 Partial Content", &body[from..]),
                _ => ("200 OK", &body[..]),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            if path.starts_with("/cut") {
                let _ = stream.write_all(&body[..body.len() / 2]);
            } else {
                let _ = stream.write_all(body);
            }
        }
    });
    (addr, ranges)
}

fn content() -> Vec<u8> {
    (0..200_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> &'static str {
    use sha2::Digest;
    let h = sha2::Sha256::digest(bytes);
    Box::leak(
        h.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into_boxed_str(),
    )
}

fn file_of(bytes: &[u8]) -> DataFile {
    DataFile {
        role: Role::Candidates("bm25"),
        file: "bm25-top100.json",
        url: "https://example.invalid/unused",
        size: bytes.len() as u64,
        checksum: Checksum::Sha256(sha256_hex(bytes)),
    }
}

fn no_progress() -> impl FnMut(u64, u64) {
    |_, _| {}
}

#[test]
fn a_whole_download_lands_checked_and_in_place() {
    let body = content();
    let (addr, _) = serve(vec![("/f".into(), body.clone())]);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("set").join("bm25-top100.json");
    let mut calls = 0;
    let got = fetch_file(
        &file_of(&body),
        &format!("http://{addr}/f"),
        &target,
        &mut |done, total| {
            calls += 1;
            assert!(done <= total);
        },
    )
    .unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), body);
    assert!(calls > 0, "no progress reported");
    assert!(!dir.path().join("set/bm25-top100.json.part").exists());
}

#[test]
fn a_cut_download_fails_clearly_and_resumes_with_a_range_request() {
    let body = content();
    let (addr, ranges) = serve(vec![("/f".into(), body.clone())]);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("bm25-top100.json");
    let file = file_of(&body);
    let e = fetch_file(
        &file,
        &format!("http://{addr}/cut/f"),
        &target,
        &mut no_progress(),
    )
    .expect_err("a cut download is an error")
    .to_string();
    assert!(
        e.contains(&format!("http://{addr}/cut/f")) && e.contains("resume"),
        "{e}"
    );
    assert!(!target.exists(), "a half file in place");
    let part = dir.path().join("bm25-top100.json.part");
    let half = std::fs::metadata(&part).unwrap().len();
    assert_eq!(half, body.len() as u64 / 2);
    fetch_file(
        &file,
        &format!("http://{addr}/f"),
        &target,
        &mut no_progress(),
    )
    .unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), body);
    assert_eq!(ranges.lock().unwrap().as_slice(), [format!("{half}-")]);
}

#[test]
fn a_404_and_a_wrong_checksum_name_the_url_and_leave_nothing() {
    let body = content();
    let mut other = body.clone();
    other[1000] ^= 1;
    let (addr, _) = serve(vec![("/wrong".into(), other)]);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("bm25-top100.json");
    let file = file_of(&body);
    let url = format!("http://{addr}/missing");
    let e = fetch_file(&file, &url, &target, &mut no_progress()).unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains(&url) && e.contains("404"), "{e}");
    let url = format!("http://{addr}/wrong");
    let e = format!(
        "{:#}",
        fetch_file(&file, &url, &target, &mut no_progress()).unwrap_err()
    );
    assert!(
        e.contains(&url) && e.contains("SHA-256") && e.contains("not the published one"),
        "{e}"
    );
    let left: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // An unreachable host: the error says how to work offline.
    let e = format!(
        "{:#}",
        fetch_file(
            &file,
            "http://127.0.0.1:9/none",
            &target,
            &mut no_progress()
        )
        .unwrap_err()
    );
    assert!(e.contains("FIRSTRANK_DATA_DIR"), "{e}");
}

fn shared() -> Option<PathBuf> {
    let dir = std::env::var_os("FIRSTRANK_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    if dir.join("data/dl19/qrels.txt").exists() {
        Some(dir)
    } else {
        firstrank_core::testing::skip_or_fail(&format!(
            "shared data not found at {} (set FIRSTRANK_SHARED)",
            dir.display()
        ));
        None
    }
}

/// The one test that sets environment variables (they are process-wide).
#[test]
fn names_resolve_offline_then_through_a_mirror_to_the_pinned_files() {
    let Some(shared) = shared() else { return };
    let data = shared.join("data");
    let routes: Vec<(String, Vec<u8>)> = [
        "dl19/bm25-top100.json",
        "dl19/qrels.txt",
        "dl20/splade-pp-ed-top100.json",
    ]
    .iter()
    .map(|p| (format!("/{p}"), std::fs::read(data.join(p)).unwrap()))
    .collect();
    let (addr, _) = serve(routes);
    let cache = tempfile::tempdir().unwrap();
    std::env::set_var("FIRSTRANK_CACHE", cache.path());
    std::env::remove_var("FIRSTRANK_DATA_DIR");
    std::env::set_var("FIRSTRANK_DATA_URL", format!("http://{addr}"));
    let mut p = |_, _| {};
    let run = firstrank_data::candidates(Path::new("dl19"), "bm25", &mut p).unwrap();
    assert_eq!(run, cache.path().join("data/dl19/bm25-top100.json"));
    assert_eq!(
        std::fs::read(&run).unwrap(),
        std::fs::read(data.join("dl19/bm25-top100.json")).unwrap()
    );
    let q = firstrank_data::qrels(Path::new("dl19"), &mut p).unwrap();
    assert!(q.ends_with("data/dl19/qrels.txt"));
    let s = firstrank_data::candidates(Path::new("dl20"), "splade", &mut p).unwrap();
    assert!(s.ends_with("data/dl20/splade-pp-ed-top100.json"));
    // The offline folder comes first, aliases included; a path always wins.
    std::env::set_var("FIRSTRANK_DATA_DIR", &data);
    let off = firstrank_data::candidates(Path::new("dl22"), "bm25", &mut p).unwrap();
    assert_eq!(off, data.join("dl22-unlabeled/bm25-top100.json"));
    let qrels_file = data.join("dl20/qrels.txt");
    assert_eq!(
        firstrank_data::qrels(&qrels_file, &mut p).unwrap(),
        qrels_file
    );
    // Unknown names and missing parts are clear errors.
    let e = firstrank_data::candidates(Path::new("dl99"), "bm25", &mut p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dl99") && e.contains("dl19"), "{e}");
    let e = firstrank_data::qrels(Path::new("covid"), &mut p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no qrels"), "{e}");
    std::env::remove_var("FIRSTRANK_DATA_URL");
    std::env::remove_var("FIRSTRANK_DATA_DIR");
}
