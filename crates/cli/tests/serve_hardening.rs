//! `firstrank serve` as a process against hostile clients: 2,000 connections
//! that send half a header and stall, against a server limited to 1,024 open
//! files, must not lock out `/health` or a normal request, and SIGTERM must
//! end the process within the drain bound; an empty API key refuses to start.
//! Uses the model-free diagnostic scorer, so it needs no model.

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{firstrank, request, spawn_serve, stderr, Serving};

/// Starts `serve` under `ulimit -n 1024` on a free port; returns it and the
/// address it logged.
fn serve_with_1024_files(extra: &[&str]) -> (Serving, SocketAddr) {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 1024 && exec \"$0\" \"$@\"")
        .arg(assert_cmd::cargo::cargo_bin("firstrank"))
        .args([
            "serve",
            "--diagnostic-scorer",
            "lexical",
            "--port",
            "0",
            "--header-read-timeout",
            "5",
            "--shutdown-timeout",
            "5",
        ])
        .args(extra);
    spawn_serve(cmd)
}

#[cfg(unix)]
fn raise_own_file_limit(wanted: u64) -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        if rl.rlim_cur < wanted {
            rl.rlim_cur = wanted.min(rl.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
    }
    rl.rlim_cur
}

#[cfg(unix)]
#[test]
fn stalled_clients_do_not_lock_out_health_and_sigterm_exits_within_the_bound() {
    const STALLERS: usize = 2000;
    let limit = raise_own_file_limit(STALLERS as u64 + 256);
    assert!(
        limit >= STALLERS as u64 + 64,
        "this test opens {STALLERS} connections; the open-file limit is {limit}"
    );
    let (mut server, addr) = serve_with_1024_files(&[]);
    let started = Instant::now();
    let mut stalled = Vec::with_capacity(STALLERS);
    for _ in 0..STALLERS {
        if let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            if c.write_all(b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-")
                .is_ok()
            {
                stalled.push(c);
            }
        }
    }
    assert!(
        stalled.len() >= STALLERS / 2,
        "only {} of {STALLERS} stalling connections opened",
        stalled.len()
    );
    let health = loop {
        if let Some(r) = request(addr, "GET /health", "") {
            if r.starts_with("HTTP/1.1 200") {
                break started.elapsed();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "/health did not answer within 15 s of {} stalled connections",
            stalled.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let body = r#"{"query": "capital of France", "documents": ["Berlin", "Paris is the capital of France"]}"#;
    let r = request(addr, "POST /v1/rerank", body).expect("a rerank answer");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");

    // SIGTERM with stalled connections still open: exits within the bound.
    let more: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    let term = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = loop {
        if let Some(s) = server.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            term.elapsed() < Duration::from_secs(8),
            "serve still running 8 s after SIGTERM (--shutdown-timeout 5)"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    eprintln!(
        "{} stalled connections: /health answered after {health:?}; exit {:?} after SIGTERM",
        stalled.len(),
        term.elapsed()
    );
    drop((stalled, more));
}

#[test]
fn an_empty_api_key_refuses_to_start() {
    for args in [
        vec!["serve", "--diagnostic-scorer", "lexical", "--api-key", ""],
        vec!["serve", "--diagnostic-scorer", "lexical", "--api-key", "  "],
    ] {
        let o = firstrank(&args);
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains("the API key is empty"),
            "{}",
            stderr(&o)
        );
    }
    let o = Command::new(assert_cmd::cargo::cargo_bin("firstrank"))
        .args(["serve", "--diagnostic-scorer", "lexical", "--port", "0"])
        .env("FIRSTRANK_API_KEY", "")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("FIRSTRANK_API_KEY"), "{}", stderr(&o));
}
