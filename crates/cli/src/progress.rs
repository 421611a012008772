//! Progress reporting for long commands: an indicatif bar with queries/s and
//! ETA on a terminal, nothing in quiet mode.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub fn query_bar(total: Option<u64>, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} queries  {per_sec}  ETA {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {pos} queries  {per_sec}  {elapsed}")
                .expect("static template"),
        ),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
    bar
}
