//! `firstrank data` (list, fetch and locate the datasets known by name) and
//! the resolution of dataset names where commands take a candidates or
//! qrels file (`--input dl19`, `--qrels dl19`), with a download progress bar.
//! The registry and the fetcher are firstrank-data's.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Subcommand;
use firstrank_data::{dataset, local_path, DATASETS};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// List the datasets, their files and where each is found (offline
    /// folder, cache, or not yet fetched).
    List,
    /// Download datasets into the cache (checked by size and checksum,
    /// resumable).
    Fetch {
        /// Dataset names (default: every one).
        names: Vec<String>,
    },
    /// Print the folder a dataset's files are in (fetching them first).
    Path { name: String },
}

/// A byte progress bar for one download (hidden with `quiet`).
fn download_bar(quiet: bool, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
    bar
}

fn with_bar<T>(
    quiet: bool,
    what: &str,
    f: impl FnOnce(&mut dyn FnMut(u64, u64)) -> Result<T>,
) -> Result<T> {
    let bar = download_bar(quiet, what);
    let out = f(&mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    out
}

/// `--input`: a path, or a dataset name with its first stage.
pub fn candidates(arg: &Path, first_stage: &str, quiet: bool) -> Result<PathBuf> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    let what = format!("{} {first_stage}", arg.display());
    with_bar(quiet, &what, |p| {
        firstrank_data::candidates(arg, first_stage, p)
    })
}

/// `--qrels`: a path, or a dataset name.
pub fn qrels(arg: &Path, quiet: bool) -> Result<PathBuf> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    let what = format!("{} qrels", arg.display());
    with_bar(quiet, &what, |p| firstrank_data::qrels(arg, p))
}

pub fn run(cmd: DataCommand, quiet: bool) -> Result<()> {
    match cmd {
        DataCommand::List => {
            println!("cache: {}", firstrank_data::cache_dir().display());
            match std::env::var_os("FIRSTRANK_DATA_DIR") {
                Some(d) => println!(
                    "offline folder (FIRSTRANK_DATA_DIR): {}",
                    PathBuf::from(d).display()
                ),
                None => println!("offline folder: none (set FIRSTRANK_DATA_DIR)"),
            }
            for set in DATASETS {
                println!("{:<8} {}", set.name, set.description);
                for f in set.files {
                    let role = match f.role {
                        firstrank_data::Role::Candidates(s) => format!("{s} top 100"),
                        firstrank_data::Role::Qrels => "qrels".to_string(),
                    };
                    let place = local_path(set, f)
                        .map_or_else(|| "not fetched".to_string(), |p| p.display().to_string());
                    println!("    {role:<14} {:>12} bytes  {place}", f.size);
                }
            }
            Ok(())
        }
        DataCommand::Fetch { names } => {
            let sets: Vec<&'static firstrank_data::Dataset> = if names.is_empty() {
                DATASETS.iter().collect()
            } else {
                names
                    .iter()
                    .map(|n| {
                        dataset(n).ok_or_else(|| {
                            anyhow::anyhow!(
                                "unknown dataset `{n}` (`firstrank data list` shows them)"
                            )
                        })
                    })
                    .collect::<Result<_>>()?
            };
            for set in sets {
                for f in set.files {
                    let what = format!("{} {}", set.name, f.file);
                    let p = with_bar(quiet, &what, |p| firstrank_data::ensure(set, f, p))?;
                    if !quiet {
                        println!("{}", p.display());
                    }
                }
            }
            Ok(())
        }
        DataCommand::Path { name } => {
            let Some(set) = dataset(&name) else {
                bail!("unknown dataset `{name}` (`firstrank data list` shows them)");
            };
            let mut dir = None;
            for f in set.files {
                let what = format!("{} {}", set.name, f.file);
                let p = with_bar(quiet, &what, |p| firstrank_data::ensure(set, f, p))?;
                dir = p.parent().map(Path::to_path_buf);
            }
            if let Some(d) = dir {
                println!("{}", d.display());
            }
            Ok(())
        }
    }
}
