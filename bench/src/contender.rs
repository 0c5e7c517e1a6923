//! The tunnel implementations the bench compares, how each is named, and
//! what each needs installed (with the command that installs it).

use std::path::{Path, PathBuf};

use podguard::sys::{self, netns_add, run};

use crate::topo::PREFIX;

/// A tunnel implementation under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    /// Routed veth, no encryption: the machine's ceiling.
    Plain,
    /// podguard-agent with its userspace device.
    Podguard,
    /// wireguard-go from the distribution.
    WireguardGo,
    /// wireguard-go 0.0.20231211 (TUN offloads), from Debian trixie.
    WireguardGoNew,
    /// wireguard-go 0.0.20250522 (Debian sid's 0.0.20260522-1), the newest.
    WireguardGoSid,
    /// boringtun-cli with its default threads.
    Boringtun,
    /// boringtun-cli with one thread.
    Boringtun1,
    /// Kernel WireGuard.
    Kernel,
}

impl Contender {
    /// Every contender, in report order.
    pub const ALL: [Contender; 8] = [
        Self::Plain,
        Self::Podguard,
        Self::WireguardGo,
        Self::WireguardGoNew,
        Self::WireguardGoSid,
        Self::Boringtun,
        Self::Boringtun1,
        Self::Kernel,
    ];

    /// Name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain veth (no encryption)",
            Self::Podguard => "podguard (userspace)",
            Self::WireguardGo => "wireguard-go (Debian 12)",
            Self::WireguardGoNew => "wireguard-go 0.0.20231211 (trixie)",
            Self::WireguardGoSid => "wireguard-go 0.0.20250522 (sid)",
            Self::Boringtun => "boringtun-cli 0.7.1",
            Self::Boringtun1 => "boringtun-cli 0.7.1, 1 thread",
            Self::Kernel => "kernel WireGuard",
        }
    }

    /// Short id for --contenders.
    pub fn id(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Podguard => "podguard",
            Self::WireguardGo => "wireguard-go",
            Self::WireguardGoNew => "wireguard-go-new",
            Self::WireguardGoSid => "wireguard-go-sid",
            Self::Boringtun => "boringtun",
            Self::Boringtun1 => "boringtun-1",
            Self::Kernel => "kernel",
        }
    }

    /// Why this contender cannot run here (with the command that fixes it).
    pub fn missing(self, bins: &Path) -> Option<String> {
        let need = |tool: &str, fix: &str| {
            (!sys::have(tool)).then(|| format!("`{tool}` not found: {fix}"))
        };
        match self {
            Self::Plain => None,
            Self::Podguard => (!bins.join("podguard-agent").exists())
                .then(|| "podguard-agent not built: cargo build --release --bins".to_string())
                .or_else(|| need("nft", "apt-get install -y nftables")),
            Self::WireguardGo => need("wireguard-go", "apt-get install -y wireguard-go")
                .or_else(|| need("wg", "apt-get install -y wireguard-tools")),
            Self::WireguardGoNew | Self::WireguardGoSid => {
                let suite = self.debian_suite().unwrap_or_default();
                let bin = wireguard_go_from(suite);
                (!bin.exists())
                    .then(|| {
                        format!(
                            "{} missing: run bench/fetch-wireguard-go.sh {suite}",
                            bin.display()
                        )
                    })
                    .or_else(|| need("wg", "apt-get install -y wireguard-tools"))
            }
            Self::Boringtun | Self::Boringtun1 => need(
                "boringtun-cli",
                "cargo install --locked boringtun-cli --version 0.7.1",
            )
            .or_else(|| need("wg", "apt-get install -y wireguard-tools")),
            Self::Kernel => {
                let probe = format!("{PREFIX}-probe");
                let _ = netns_add(&probe);
                let ok = run(&[
                    "ip",
                    "-n",
                    &probe,
                    "link",
                    "add",
                    "wg0",
                    "type",
                    "wireguard",
                ])
                .is_ok();
                sys::netns_destroy(&probe);
                (!ok).then(|| "this kernel cannot create a wireguard link (no module)".to_string())
            }
        }
    }
}

impl Contender {
    /// The Debian suite a fetched wireguard-go comes from.
    pub fn debian_suite(self) -> Option<&'static str> {
        match self {
            Self::WireguardGoNew => Some("trixie"),
            Self::WireguardGoSid => Some("sid"),
            _ => None,
        }
    }
}

/// Where `bench/fetch-wireguard-go.sh SUITE` puts that suite's wireguard-go
/// (override with PODGUARD_BENCH_WIREGUARD_GO_<SUITE>, e.g. ..._SID).
pub fn wireguard_go_from(suite: &str) -> PathBuf {
    std::env::var_os(format!(
        "PODGUARD_BENCH_WIREGUARD_GO_{}",
        suite.to_uppercase()
    ))
    .map(PathBuf::from)
    .unwrap_or_else(|| PathBuf::from(format!("target/bench-tools/wireguard-go-{suite}")))
}
