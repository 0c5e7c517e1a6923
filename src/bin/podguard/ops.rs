//! `podguard rotate`, `audit` and `status`: commands that read or change
//! the cluster through the API and print a table or JSON. Exit 1 when the
//! command ran and found a problem (see the CLI's exit codes).

use anyhow::Context;
use clap::CommandFactory;
use podguard::k8s::ops::{self, Target};
use podguard::lab::check;

use crate::cli::{Cli, FailOn, Output};

/// Rotate the WireGuard key of `node` (or of every node with `all`),
/// waiting for each rotation to finish with `wait`.
pub(crate) fn rotate(
    target: Target,
    agents: &str,
    node: Option<String>,
    all: bool,
    wait: bool,
    timeout: Option<std::time::Duration>,
    output: Output,
) -> anyhow::Result<()> {
    if timeout.is_some() && !wait && !all {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--timeout needs --wait (or --all): without them `rotate` does not wait, so there is nothing to time out",
            )
            .exit();
    }
    let timeout = timeout.unwrap_or(std::time::Duration::from_secs(300));
    let results = ops::with_client(target, |client| async move {
        let names = match node {
            Some(n) => vec![n],
            None if all => ops::all_nodes(&client).await?,
            None => anyhow::bail!("give --node NAME or --all"),
        };
        ops::rotate(&client, agents, &names, all, wait, timeout, &mut |m| {
            eprintln!("{m}")
        })
        .await
    })?;
    match output {
        Output::Table => print!("{}", ops::render_rotate(&results)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&results)?),
    }
    let (expect, what) = if wait || results.len() > 1 {
        ("done", "finished")
    } else {
        ("requested", "requested")
    };
    if results.iter().any(|r| r.result != expect) {
        eprintln!("not every rotation {what}");
        std::process::exit(1);
    }
    Ok(())
}

/// Withdraw the pending rotation request on `node`.
pub(crate) fn cancel_rotation(
    target: Target,
    node: Option<String>,
    output: Output,
) -> anyhow::Result<()> {
    let node = node.context("--cancel needs --node NAME")?;
    let result = ops::with_client(
        target,
        |client| async move { ops::cancel(&client, &node).await },
    )?;
    match output {
        Output::Table => print!("{}", ops::render_rotate(std::slice::from_ref(&result))),
        Output::Json => println!("{}", serde_json::to_string_pretty(&[&result])?),
    }
    Ok(())
}

/// Encryption coverage next to NetworkPolicy; with `probe`, a capture on
/// the lab's underlay proves it.
pub(crate) fn audit(
    target: Target,
    agents: &str,
    fail_on: FailOn,
    pods: bool,
    output: Output,
    probe: bool,
) -> anyhow::Result<()> {
    let (report, warnings) =
        ops::with_client(
            target,
            |client| async move { ops::audit(&client, agents).await },
        )?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let probe_result = if probe {
        let r = check::check(false)?;
        Some(r.capture)
    } else {
        None
    };
    let probe_ok = probe_result
        .as_ref()
        .is_none_or(|c| c.plaintext_packets == 0 && c.marker_hits == 0);
    match output {
        Output::Table => {
            let probe = probe_result.as_ref().map(|c| mesh::audit::Probe {
                encrypted: c.encrypted_packets,
                plaintext: c.plaintext_packets,
                marker_hits: c.marker_hits,
            });
            print!(
                "{}",
                mesh::audit::render(&report, pods, fail_on.threshold(), probe)
            );
        }
        Output::Json => {
            let mut v = serde_json::to_value(&report)?;
            if let Some(c) = &probe_result {
                v["probe"] = serde_json::to_value(c)?;
            }
            v["warnings"] = serde_json::to_value(&warnings)?;
            // `ok`: no high finding; `passed`: none at or above --fail-on
            // (and, with --probe, a clean capture): the exit code's verdict.
            v["passed"] = serde_json::Value::Bool(!report.fails(fail_on.threshold()) && probe_ok);
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
    }
    if report.fails(fail_on.threshold()) || !probe_ok {
        std::process::exit(1);
    }
    Ok(())
}

/// Every node's mesh state, as its agent publishes it (`agents`: the
/// agents' namespace, for their heartbeats).
pub(crate) fn status(target: Target, agents: &str, output: Output) -> anyhow::Result<()> {
    let views = ops::with_client(target, |client| async move {
        ops::node_views(&client, Some(agents)).await
    })?;
    let rows = mesh::status::rows(&views, podguard::agent::rotation::unix_now());
    match output {
        Output::Table => print!("{}", ops::render_status(&rows)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
    }
    if rows.iter().any(mesh::status::Row::finding) {
        std::process::exit(1);
    }
    Ok(())
}
