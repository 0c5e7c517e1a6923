//! `podguard man`: the manual pages, rendered from the same clap
//! definitions as `--help`, so they cannot drift from the flags. One page
//! per command (`podguard-status(1)` lists status's own flags, which the
//! top page does not), and `podguard-agent(8)` for the daemon, which has
//! no `man` of its own.

use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::cli::Cli;

/// The agent's page name, as `podguard man` accepts it.
const AGENT: &str = "podguard-agent";

/// Every page by the name `podguard man NAME` takes: `podguard`, each
/// command (`status`, `rotate`, `lab-up`, ...) and `podguard-agent`.
/// With each its section: 1 for commands, 8 for the daemon.
fn pages() -> Vec<(String, &'static str, clap_mangen::Man)> {
    let mut top = Cli::command().disable_help_subcommand(true);
    top.build();
    let mut out = vec![("podguard".into(), "1", clap_mangen::Man::new(top.clone()))];
    let mut todo: Vec<clap::Command> = top.get_subcommands().cloned().collect();
    while let Some(sub) = todo.pop() {
        if sub.is_hide_set() {
            continue;
        }
        // build() named it podguard-lab-up: the page is lab-up.
        let full = sub.get_display_name().unwrap_or(sub.get_name()).to_string();
        let name = full.strip_prefix("podguard-").unwrap_or(&full).to_string();
        todo.extend(sub.get_subcommands().cloned());
        out.push((name, "1", clap_mangen::Man::new(sub)));
    }
    out[1..].sort_by(|a, b| a.0.cmp(&b.0));
    let agent = podguard::agent::cli::Args::command();
    out.push((AGENT.into(), "8", clap_mangen::Man::new(agent).section("8")));
    // A command's page would name it and no version ("rotate ").
    let source = concat!("podguard ", env!("CARGO_PKG_VERSION"));
    out.into_iter()
        .map(|(name, section, page)| (name, section, page.source(source)))
        .collect()
}

/// Print page `name` (else `podguard`'s) to stdout, or with `dir` write
/// every page under that manual tree (`man1/`, `man8/`, made if missing)
/// and print the paths written.
pub(crate) fn man(name: Option<&str>, dir: Option<&Path>) -> anyhow::Result<()> {
    let pages = pages();
    if let Some(dir) = dir {
        for (_, section, page) in &pages {
            let sub = dir.join(format!("man{section}"));
            std::fs::create_dir_all(&sub).with_context(|| format!("making {}", sub.display()))?;
            let path = page
                .generate_to(&sub)
                .with_context(|| format!("writing a page into {}", sub.display()))?;
            println!("{}", path.display());
        }
        return Ok(());
    }
    let name = name.unwrap_or("podguard");
    let Some((_, _, page)) = pages.iter().find(|(n, _, _)| n == name) else {
        let known: Vec<&str> = pages.iter().map(|(n, _, _)| n.as_str()).collect();
        Cli::command()
            .error(
                clap::error::ErrorKind::InvalidValue,
                format!("no page {name:?}: one of {}", known.join(", ")),
            )
            .exit();
    };
    match page.render(&mut std::io::stdout()) {
        // `podguard man status | head`: the reader has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing the page to stdout"),
    }
}
