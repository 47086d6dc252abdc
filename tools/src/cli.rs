//! Pieces shared by the binaries: logging, progress bars, error messages.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Logs go to stderr through `tracing`; `RUST_LOG` overrides the level.
pub fn init_logging(verbose: bool) {
    let default = if verbose { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A progress bar on stderr when it is a terminal, hidden otherwise, so
/// pipes and CI logs stay clean.
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(len),
        if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) = ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {elapsed}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// `error` and its sources, joined by `: `, leaving out a source whose
/// text the message before it already holds (this crate's and
/// `emogate-models`' errors repeat their source's text in their own).
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_says_each_thing_once() {
        let io = std::io::Error::other("disk full");
        let e = crate::Error::io("writing", "/x/out.json", io);
        assert_eq!(describe(&e), "writing /x/out.json: disk full");
        let outer = anyhow::Error::new(e).context("saving the report");
        assert_eq!(
            describe(outer.as_ref()),
            "saving the report: writing /x/out.json: disk full"
        );
    }
}
