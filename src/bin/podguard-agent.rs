//! `podguard-agent`: the per-node DaemonSet entry point.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use podguard::agent::cli::Args;
use podguard::agent::metrics::Metrics;
use podguard::agent::{Agent, AgentConfig, install, run_nodes_file, start_device};
use podguard::netlink::{self, Netlink};
use podguard::wireguard::{BackendChoice, select_backend};

/// Set once the log is up: a fatal error then goes to the log (in its
/// format, so a JSON reader sees it), else to stderr.
static LOGGING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Where the node list comes from.
enum Source {
    /// `--nodes-file`.
    File(std::path::PathBuf),
    /// The Kubernetes API.
    Kube(kube::Client),
}

/// One line for a fatal error, as the `podguard` CLI prints them (anyhow's
/// default printed its cause chain over several lines, and a backtrace
/// when RUST_BACKTRACE was set); exit 1.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let line = podguard::errors::one_line(&e);
            // A log filter may leave errors out (`--log-level off`): then
            // stderr, so a fatal error is never silent.
            if LOGGING.load(std::sync::atomic::Ordering::Relaxed)
                && tracing::enabled!(tracing::Level::ERROR)
            {
                tracing::error!(error = %line, "podguard-agent stopped");
            } else {
                eprintln!("error: {line}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    // RUST_LOG wins over --log-level; held to the same rule (a bare word
    // must be a level), so a typo there cannot silence the agent either.
    // An empty RUST_LOG counts as unset.
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    if let Some(v) = &rust_log
        && let Err(e) = podguard::agent::cli::parse_log_filter(v)
    {
        eprintln!("error: RUST_LOG={v:?}: {e} (or unset RUST_LOG to use --log-level)");
        std::process::exit(2);
    }
    let filter = rust_log
        .map(tracing_subscriber::EnvFilter::new)
        .unwrap_or_else(|| {
            // A bare level keeps defguard's per-call chatter out of info logs.
            let quiet = if args.log_level.contains(['=', ',']) {
                ""
            } else {
                ",defguard_wireguard_rs=warn"
            };
            tracing_subscriber::EnvFilter::new(format!("{}{quiet}", args.log_level))
        });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        podguard::agent::cli::LogFormat::Json => logs.json().init(),
        podguard::agent::cli::LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    LOGGING.store(true, std::sync::atomic::Ordering::Relaxed);

    if args.uninstall {
        let files = podguard::agent::uninstall::Files {
            key_file: args.key_file.clone(),
            state_file: args.state_file.clone(),
            cni_bin_dir: args.cni_bin_dir.clone(),
            cni_conf_dir: args.cni_conf_dir.clone(),
            ipam_dir: args.ipam_dir.clone(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let removed = rt.block_on(async {
            let nl = Netlink::connect()?;
            anyhow::Ok(podguard::agent::uninstall::uninstall(&nl, &files).await?)
        })?;
        for r in &removed {
            println!("removed {r}");
        }
        eprintln!(
            "podguard uninstalled from this node ({} items removed)",
            removed.len()
        );
        return Ok(());
    }
    if args.print_public_key {
        // Read-only: never take rotation steps for a query.
        let (key, created) = keys::store::load_or_create(&args.key_file)
            .with_context(|| format!("loading the node key {}", args.key_file.display()))?;
        if created {
            // A mistyped path must not pass for the node's key unseen.
            eprintln!(
                "no key was at {}: created one (0600)",
                args.key_file.display()
            );
        }
        println!("{}", key.public_key());
        return Ok(());
    }
    // Before anything on the host changes: the name must be a Node's.
    podguard::agent::cli::check_node_name(&args.node_name).map_err(anyhow::Error::msg)?;
    // Finish or roll back a rotation a killed agent left behind, then load
    // the key(s) the device starts with.
    let every = args.rotate_every.map(|d| d.as_secs());
    let policy = keys::rotation::Policy {
        stage_timeout: args
            .rotation_stage_timeout
            .map(|d| d.as_secs())
            .unwrap_or(keys::rotation::Policy::default().stage_timeout),
        retire_timeout: args.rotation_retire_timeout.as_secs(),
        every,
        jitter: every
            .map(|e| keys::rotation::jitter(&args.node_name, e))
            .unwrap_or(0),
    };
    let mut rotator = podguard::agent::rotation::Rotator::new(&args.key_file, policy);
    let (key, extra_key) = rotator
        .recover()
        .with_context(|| format!("loading the node key {}", args.key_file.display()))?;
    tracing::info!(node = %args.node_name, public_key = %key.public_key(), "podguard-agent starting");
    if args.install_cni {
        let plugin = std::env::current_exe()?
            .parent()
            .map(|d| d.join("podguard-cni"))
            .context("locating podguard-cni next to podguard-agent")?;
        let installed = install::install(&plugin, &args.cni_bin_dir, &args.cni_conf_dir)
            .with_context(|| {
                format!(
                    "installing {} into {} and the conflist into {}",
                    plugin.display(),
                    args.cni_bin_dir.display(),
                    args.cni_conf_dir.display()
                )
            })?;
        tracing::info!(bin_dir = %args.cni_bin_dir.display(), conf_dir = %args.cni_conf_dir.display(), portmap = installed.portmap, "CNI plugin installed");
        if !installed.portmap {
            tracing::warn!(bin_dir = %args.cni_bin_dir.display(), "no portmap plugin in the CNI bin dir: hostPort will not work; install the CNI reference plugins (Debian: containernetworking-plugins, kubeadm: kubernetes-cni) and restart the agent");
        }
        if args.install_only {
            return Ok(());
        }
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // What a typo can break is checked before the network changes
        // (forwarding, podguard0, its socket): the node list's source,
        // and the metrics address.
        let source = match args.nodes_file.clone() {
            Some(path) => {
                podguard::agent::nodes_file::load(&path).with_context(|| {
                    format!(
                        "--nodes-file {}: the agent starts only with a readable node list (forwarding and podguard0 were left alone)",
                        path.display()
                    )
                })?;
                Source::File(path)
            }
            None => Source::Kube(podguard::k8s::connect::agent_client().await?),
        };
        let metrics = std::sync::Arc::new(Metrics::default());
        let limits = podguard::agent::metrics::HealthLimits {
            // Ready means a good reconcile within three resyncs.
            stale_after: (args.resync * 3).max(Duration::from_secs(30)),
            grace: args.health_grace,
        };
        metrics
            .clone()
            .serve(args.metrics_addr, &args.node_name, limits)
            .await
            .with_context(|| format!("serving metrics on {}", args.metrics_addr))?;
        let nl = Netlink::connect()?;
        netlink::enable_forwarding(&args.proc_sys_net, &args.cluster_cidrs)?;
        let kernel = match args.backend {
            BackendChoice::Userspace => false,
            _ => nl.kernel_wireguard_available().await,
        };
        let backend = select_backend(args.backend, kernel)?;
        tracing::info!(%backend, "WireGuard backend selected");
        if let Some(link) = nl.link(mesh::WG_IFNAME).await?
            && podguard::wireguard::stale_link(backend, link.kind.as_deref())
        {
            tracing::warn!(
                kind = link.kind.as_deref().unwrap_or("unknown"),
                %backend,
                "replacing {} (a link of another kind, left by the other backend)",
                mesh::WG_IFNAME
            );
            nl.delete_link(mesh::WG_IFNAME).await?;
        }
        let (wg, device) = start_device(backend, &key, args.listen_port, args.crypto_workers)?;
        if let (Some(d), Some(extra)) = (&device, &extra_key) {
            d.set_keys(&key, Some(extra));
        }
        rotator.set_device(device.clone());
        if backend == podguard::wireguard::Backend::Kernel {
            rotator.set_kernel(
                mesh::WG_IFNAME,
                args.rotation_stage_timeout
                    .unwrap_or(Duration::from_secs(keys::kernel_ack::STAGE_TIMEOUT)),
            );
        }
        let cfg = AgentConfig {
            node_name: args.node_name,
            mesh: mesh::MeshConfig {
                cluster_cidrs: args.cluster_cidrs,
                listen_port: args.listen_port,
                underlay_mtu: args.underlay_mtu.unwrap_or(1500),
                persistent_keepalive: (args.keepalive > 0).then_some(args.keepalive),
            },
            state_file: args.state_file,
            masquerade: args.masquerade,
            peer_stale_after: args.peer_stale_after,
            underlay_mtu: podguard::agent::underlay::UnderlayMtu::from_flag(args.underlay_mtu),
        };
        if let Some(d) = device.clone() {
            let _ = metrics.device.set(d);
        }
        let node_name = cfg.node_name.clone();
        let mut agent = Agent::new(cfg, &key, wg, nl).with_device(device);
        if backend == podguard::wireguard::Backend::Kernel {
            agent = agent.with_kernel_recreate(args.key_file.clone(), args.listen_port);
        }
        netlink::watch::spawn(agent.repair_trigger())
            .context("subscribing to netlink events (route, address and link removals)")?;
        let source = async {
            match source {
                Source::File(path) => {
                    if args.rotate_every.is_some() {
                        tracing::warn!(
                            "--rotate-every needs the Kubernetes API; ignored with --nodes-file"
                        );
                    }
                    run_nodes_file(agent, path, args.resync, metrics).await
                }
                Source::Kube(client) => {
                    let sc = podguard::k8s::source::SourceConfig {
                        node_name,
                        listen_port: args.listen_port,
                        resync: args.resync,
                        lease_duration: args.lease_duration,
                        namespace: args.namespace.clone(),
                    };
                    podguard::k8s::source::run(agent, rotator, client, sc, metrics).await
                }
            }
        };
        tokio::select! {
            r = source => r,
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupted; the device and routes stay (fail closed)");
                Ok(())
            }
        }
    })
}
