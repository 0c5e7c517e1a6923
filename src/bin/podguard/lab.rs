//! `podguard lab ...`: the local multi-node lab in network namespaces
//! (build, check, demo, kubeconfig, remove) and the embedded API server
//! it runs.

use podguard::lab::{check, cluster};

use crate::cli::{Lab, Output};

fn print_report(r: &check::Report, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Table => print!("{}", check::render(r)),
        Output::Json => println!("{}", serde_json::to_string_pretty(r)?),
    }
    Ok(())
}

/// Run one `podguard lab` subcommand.
pub(crate) fn run(cmd: Lab) -> anyhow::Result<()> {
    match cmd {
        Lab::Up { up } => {
            let bins = cluster::Binaries::find()?;
            eprintln!("podguard lab up: building the lab");
            let state = cluster::up(&up.spec(), &bins)?;
            eprintln!(
                "lab is up: {} pods; next: podguard lab check",
                state.pods.len()
            );
            Ok(())
        }
        Lab::Check { output } => {
            let report = check::check(output == Output::Table)?;
            print_report(&report, output)?;
            if !report.ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Lab::Kubeconfig => {
            let p = std::path::Path::new(cluster::STATE_DIR).join("kubeconfig");
            let text = std::fs::read_to_string(&p).map_err(|e| {
                anyhow::anyhow!("no lab is up ({}: {e}): run `podguard lab up`", p.display())
            })?;
            print!("{text}");
            eprintln!(
                "(the API server is reachable inside the lab's underlay: sudo ip netns exec {} kubectl --kubeconfig {} get nodes)",
                podguard::lab::plan::underlay_netns(),
                p.display()
            );
            Ok(())
        }
        Lab::Down => {
            let n = cluster::down()?;
            eprintln!("lab removed ({n} namespaces)");
            Ok(())
        }
        Lab::Demo { up, output } => {
            let start = std::time::Instant::now();
            let bins = cluster::Binaries::find()?;
            let spec = up.spec();
            // Someone else's lab is left alone: refuse before touching it.
            if cluster::exists() {
                anyhow::bail!(
                    "a lab already exists (namespaces pglab-*, {}): the demo builds and removes its own; run `podguard lab down` first if that lab is yours",
                    cluster::STATE_DIR
                );
            }
            eprintln!(
                "[1/3] building a lab: {} nodes x {} pods, {}",
                spec.nodes,
                spec.pods_per_node,
                if spec.dual_stack {
                    "dual-stack"
                } else {
                    "IPv4 only"
                }
            );
            let result = cluster::up(&spec, &bins).and_then(|_| {
                eprintln!(
                    "[2/3] checking reachability, NAT and encryption ({:.1}s)",
                    start.elapsed().as_secs_f64()
                );
                check::check(true)
            });
            eprintln!("[3/3] tearing down ({:.1}s)", start.elapsed().as_secs_f64());
            let _ = cluster::down();
            let report = result?;
            if output == Output::Table {
                println!();
            }
            print_report(&report, output)?;
            eprintln!("(lab demo took {:.1}s)", start.elapsed().as_secs_f64());
            if !report.ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Lab::ApiServer { listen, state } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(podguard::lab::apiserver::ApiServer::new(state).serve(listen))?;
            Ok(())
        }
    }
}
