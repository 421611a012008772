//! Downloading one registry file into the cache: an HTTP GET into
//! `<file>.part` beside the target, resumed with a `Range` request when a
//! `.part` is already there, checked by size and checksum, then renamed into
//! place (and the directory synced), so a cached file is always complete and
//! a cut download costs only what is missing. Errors name the URL and what
//! went wrong (unreachable host, HTTP status, short body, checksum).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use md5::Md5;
use sha2::{Digest, Sha256};

use crate::registry::{Checksum, DataFile};

/// Reports bytes done and the total as a download goes.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

fn part_path(target: &Path) -> PathBuf {
    let mut s = target.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

/// Downloads `file` from `url` to `target` unless it is there with the right
/// size; returns `target`.
pub fn fetch_file(
    file: &DataFile,
    url: &str,
    target: &Path,
    progress: Progress<'_>,
) -> Result<PathBuf> {
    if fs::metadata(target).is_ok_and(|m| m.len() == file.size) {
        return Ok(target.to_path_buf());
    }
    let dir = target.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let part = part_path(target);
    let mut have = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    if have > file.size {
        fs::remove_file(&part).with_context(|| format!("removing {}", part.display()))?;
        have = 0;
    }
    if have < file.size {
        download(url, &part, have, file.size, progress)?;
    }
    let got = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    if got != file.size {
        bail!(
            "{url}: the download stopped at {got} of {} bytes; run the command again to resume it",
            file.size
        );
    }
    if let Err(e) = verify(&part, file.checksum) {
        let _ = fs::remove_file(&part);
        return Err(e.context(format!(
            "{url}: the downloaded file is not the published one (removed)"
        )));
    }
    fs::rename(&part, target).with_context(|| format!("moving {} into place", target.display()))?;
    #[cfg(unix)]
    File::open(dir).and_then(|d| d.sync_all()).ok();
    Ok(target.to_path_buf())
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(20))
        .timeout_read(Duration::from_secs(60))
        .build()
}

/// Appends bytes `from..size` of `url` to `part` (all of it when the server
/// ignores the range).
fn download(url: &str, part: &Path, from: u64, size: u64, progress: Progress<'_>) -> Result<()> {
    let mut request = agent().get(url);
    if from > 0 {
        request = request.set("Range", &format!("bytes={from}-"));
    }
    let response = match request.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => bail!(
            "{url}: the server answered HTTP {code} {} (is the dataset still published there? \
             FIRSTRANK_DATA_DIR can point at a local copy instead)",
            r.status_text()
        ),
        Err(e) => bail!(
            "{url}: cannot download ({e}); without network, set FIRSTRANK_DATA_DIR to a folder \
             holding <dataset>/<file> (laid out like `firstrank data path`)"
        ),
    };
    let resumed = from > 0 && response.status() == 206;
    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(part)
        .with_context(|| format!("opening {}", part.display()))?;
    let mut done = if resumed { from } else { 0 };
    let mut reader = response.into_reader().take(size.saturating_sub(done) + 1);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            // A cut connection keeps what arrived: the next run resumes.
            Err(e) => {
                out.sync_all().ok();
                bail!(
                    "{url}: the download was cut at {done} of {size} bytes ({e}); run the command \
                     again to resume it"
                );
            }
        };
        out.write_all(&buf[..n])
            .with_context(|| format!("writing {}", part.display()))?;
        done += n as u64;
        progress(done, size);
    }
    out.sync_all()
        .with_context(|| format!("writing {}", part.display()))?;
    Ok(())
}

/// Checks `path` against `checksum`.
pub fn verify(path: &Path, checksum: Checksum) -> Result<()> {
    let mut file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut sha = Sha256::new();
    let mut md5 = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        match checksum {
            Checksum::Sha256(_) => sha.update(&buf[..n]),
            Checksum::Md5(_) => md5.update(&buf[..n]),
        }
    }
    let (kind, want, got) = match checksum {
        Checksum::Sha256(want) => ("SHA-256", want, hex(&sha.finalize())),
        Checksum::Md5(want) => ("MD5", want, hex(&md5.finalize())),
    };
    if got != want {
        bail!("{}: {kind} is {got}, expected {want}", path.display());
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
