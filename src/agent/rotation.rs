//! The shell around `keys::rotation`: read the key files, ask the machine,
//! carry out its one step, give the device the keys it must hold.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use keys::kernel_ack::{Handshakes, Switch};
use keys::rotation::{Ack, Decision, DeviceKeys, Inputs, Phase, Policy, Step, decide};
use keys::store::{Loaded, RotationFiles};
use keys::{PrivateKey, PublicKey};

use crate::wireguard::backend::{Backend, WgClient, WgError};
use crate::wireguard::device::Device;

mod error;
pub use error::RotationError;

/// Now, in unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Drives rotation for this node.
pub struct Rotator {
    files: RotationFiles,
    policy: Policy,
    device: Option<Arc<Device>>,
    applied: Option<DeviceKeys>,
    last_problems: Vec<String>,
    /// Kernel WireGuard interface whose private key follows the primary.
    kernel_ifname: Option<String>,
    /// Kernel WireGuard: the handshakes when it took its current key.
    kernel_switch: Option<Switch>,
    /// Kernel WireGuard: the local keys the companions acknowledge.
    kernel_acks: std::collections::BTreeSet<PublicKey>,
}

impl std::fmt::Debug for Rotator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotator")
            .field("files", &self.files)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

fn pick(loaded: &Loaded, k: &PublicKey) -> Option<PrivateKey> {
    [&loaded.current, &loaded.next, &loaded.old]
        .into_iter()
        .flatten()
        .find(|p| p.public_key() == *k)
        .map(|p| PrivateKey::from_bytes(*p.as_bytes()))
}

/// The kernel device's key and its peers' last handshakes (one read).
fn kernel_state(ifname: &str) -> Result<(Option<PublicKey>, Handshakes), WgError> {
    WgClient::new(Backend::Kernel, ifname)?.key_and_handshakes()
}

impl Rotator {
    /// A rotator for the key at `key_file`.
    pub fn new(key_file: &std::path::Path, policy: Policy) -> Self {
        Self {
            files: RotationFiles::new(key_file),
            policy,
            device: None,
            applied: None,
            last_problems: Vec::new(),
            kernel_ifname: None,
            kernel_switch: None,
            kernel_acks: std::collections::BTreeSet::new(),
        }
    }

    /// Kernel WireGuard: the companions' acks as of the last reconcile
    /// (`Agent::kernel_acks`).
    pub fn set_kernel_acks(&mut self, acks: std::collections::BTreeSet<PublicKey>) {
        self.kernel_acks = acks;
    }

    /// Kernel WireGuard: the key `podguard0` last took in this process and
    /// its handshakes just before.
    pub fn kernel_before(&self) -> Option<(PublicKey, keys::kernel_ack::Handshakes)> {
        self.kernel_switch
            .as_ref()
            .map(|s| (s.primary, s.before.clone()))
    }

    /// Kernel WireGuard: the interface's private key follows the primary
    /// key (`wg set IF private-key FILE`). Kernel WireGuard holds one key,
    /// so the next key lives on a companion interface while the rotation
    /// runs (`mesh::companion`, created by the agent's reconcile), whose
    /// acks the agent hands over ([`Self::set_kernel_acks`]).
    ///
    /// `stage_timeout` replaces the policy's: how long to wait for every
    /// peer on the companion before switching anyway.
    pub fn set_kernel(&mut self, ifname: &str, stage_timeout: std::time::Duration) {
        self.kernel_ifname = Some(ifname.to_string());
        self.policy.stage_timeout = stage_timeout.as_secs();
        // Apply on the first tick, whatever the interface had.
        self.applied = None;
    }

    /// The userspace device whose keys follow the rotation (without one,
    /// the machine runs on timeouts alone).
    pub fn set_device(&mut self, device: Option<Arc<Device>>) {
        self.device = device;
    }

    /// At start-up, before the device exists: finish or roll back whatever
    /// a killed agent left on disk (creating the first key if there is
    /// none), and return the keys the device must start with.
    pub fn recover(&mut self) -> Result<(PrivateKey, Option<PrivateKey>), RotationError> {
        for _ in 0..8 {
            let loaded = self.files.load();
            self.report(&loaded);
            let inputs = Inputs {
                now: unix_now(),
                requested: None,
                done: None,
                ack: Ack::Unknown,
            };
            let d = decide(&loaded.disk, &inputs, &self.policy);
            match d.step {
                // Recovery and cleanup happen now; rotation steps wait for
                // the loop (they need the peers).
                Some(
                    step @ (Step::CreateCurrent
                    | Step::RecoverFromNext
                    | Step::RecoverFromOld
                    | Step::PromoteNext
                    | Step::DropNext
                    | Step::DropOld),
                ) => {
                    tracing::info!(step = %step, reason = d.reason, "key files: recovering");
                    self.carry_out(step)?;
                }
                _ => {
                    let dk = d.device.ok_or_else(|| RotationError::NoUsableKey {
                        path: self.files.current.clone(),
                        problems: loaded
                            .problems
                            .iter()
                            .map(|p| crate::errors::chain_line(p))
                            .collect::<Vec<_>>()
                            .join("; "),
                    })?;
                    let primary =
                        pick(&loaded, &dk.primary).ok_or_else(|| RotationError::Vanished {
                            path: self.files.current.clone(),
                            key: dk.primary.fingerprint(),
                        })?;
                    let extra = dk.extra.and_then(|k| pick(&loaded, &k));
                    if d.phase != Phase::Idle {
                        tracing::info!(phase = d.phase.name(), "resuming a key rotation");
                    }
                    if self.kernel_ifname.is_none() {
                        self.applied = Some(dk);
                    }
                    return Ok((primary, extra));
                }
            }
        }
        Err(RotationError::Unsettled {
            path: self.files.current.clone(),
        })
    }

    fn carry_out(&self, step: Step) -> Result<(), RotationError> {
        self.files
            .carry_out(step)
            .map_err(|source| RotationError::Step {
                step,
                path: self.files.current.clone(),
                source,
            })
    }

    fn report(&mut self, loaded: &Loaded) {
        let problems: Vec<String> = loaded
            .problems
            .iter()
            .map(|p| crate::errors::chain_line(p))
            .collect();
        if problems != self.last_problems {
            for p in &problems {
                tracing::warn!(problem = %p, "key file unusable");
            }
            self.last_problems = problems;
        }
    }

    /// One round: decide, carry out at most one step, decide again on the
    /// new disk, and give the device its keys. The caller publishes the
    /// returned decision's annotations (after the device holds the keys).
    /// `peers_applied`: the device has this process's full peer set (a
    /// reconcile succeeded); before that, an empty device would look like
    /// "every peer acknowledged".
    pub fn tick(
        &mut self,
        now: u64,
        requested: Option<String>,
        done: Option<String>,
        peers_applied: bool,
    ) -> Result<(Decision, bool), RotationError> {
        let loaded = self.files.load();
        self.report(&loaded);
        // Kernel WireGuard: the companions' acks from the last reconcile
        // (`mesh::companion`): every peer on the next key's companion
        // (`Staged`), every peer settled on `podguard0`'s new key (`Switched`).
        let ack = match (&self.device, &self.kernel_ifname) {
            (Some(d), _) if peers_applied => Ack::Keys(d.key_acks()),
            // Keys, not flags: an ack for another key than the one the
            // machine waits for acknowledges nothing.
            (None, Some(_)) if peers_applied => Ack::Keys(self.kernel_acks.clone()),
            _ => Ack::Unknown,
        };
        let inputs = Inputs {
            now,
            requested,
            done,
            ack,
        };
        let mut d = decide(&loaded.disk, &inputs, &self.policy);
        let mut stepped = false;
        let loaded = if let Some(step) = d.step {
            tracing::info!(
                step = %step,
                reason = d.reason,
                phase = d.phase.name(),
                "key rotation step"
            );
            self.carry_out(step)?;
            stepped = true;
            let l = self.files.load();
            d = decide(&l.disk, &inputs, &self.policy);
            l
        } else {
            loaded
        };
        if let Some(dk) = d.device
            && self.applied != Some(dk)
        {
            if let (Some(dev), Some(primary)) = (&self.device, pick(&loaded, &dk.primary)) {
                let extra = dk.extra.and_then(|k| pick(&loaded, &k));
                dev.set_keys(&primary, extra.as_ref());
            }
            if let Some(ifname) = &self.kernel_ifname
                && self.applied.map(|a| a.primary) != Some(dk.primary)
            {
                let path = if loaded.disk.current.key() == Some(dk.primary) {
                    &self.files.current
                } else {
                    &self.files.next
                };
                // Before the switch: only handshakes after it use the new
                // key (`mesh::companion`). Without that snapshot the
                // companions compare with the key file's ctime instead.
                // A device that already holds the key (a restarted agent
                // adopting it) keeps its sessions: `wg set` with the
                // unclamped file bytes would expire them all.
                self.kernel_switch = None;
                let (held, before) = match kernel_state(ifname) {
                    Ok((held, before)) => (held, Some(before)),
                    Err(e) => {
                        tracing::warn!(error = %crate::errors::chain_line(&e), "reading handshakes before the key switch; the rotation goes by its timeouts");
                        (None, None)
                    }
                };
                let st = if held == Some(dk.primary) {
                    None
                } else {
                    let st = std::process::Command::new("wg")
                        .args(["set", ifname, "private-key"])
                        .arg(path)
                        .status()
                        .map_err(|source| RotationError::WgSpawn {
                            ifname: ifname.clone(),
                            path: path.clone(),
                            source,
                        })?;
                    if !st.success() {
                        return Err(RotationError::WgSet {
                            ifname: ifname.clone(),
                            path: path.clone(),
                            status: st,
                        });
                    }
                    Some(st)
                };
                // Adopted (no switch here): the companions go by the key
                // file's ctime instead.
                self.kernel_switch = before.filter(|_| st.is_some()).map(|before| Switch {
                    primary: dk.primary,
                    before,
                });
            }
            tracing::info!(
                primary = %dk.primary.fingerprint(),
                extra = %dk.extra.map(|k| k.fingerprint()).unwrap_or_else(|| "none".into()),
                "device keys"
            );
            self.applied = Some(dk);
        }
        Ok((d, stepped))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A key file the node cannot use stops start-up with an error that
    /// names the file and what is wrong with it, and the file is left as
    /// it was (never replaced by a new key).
    #[test]
    fn an_unusable_key_file_is_named_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("private.key");
        let cases: [(&[u8], u32, &str); 2] = [
            (b"not a key\n", 0o600, "does not hold a valid key"),
            (
                b"aGVsbG8gaGVsbG8gaGVsbG8gaGVsbG8gaGVsbG8gaGU=\n",
                0o644,
                "chmod 600",
            ),
        ];
        for (bytes, mode, why) in cases {
            std::fs::write(&path, bytes).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let mut r = Rotator::new(&path, Policy::default());
            let e = r.recover().expect_err("an unusable key must stop start-up");
            assert!(matches!(e, RotationError::NoUsableKey { .. }), "{e:?}");
            let line = crate::errors::chain_line(&e);
            assert!(line.contains(&path.display().to_string()), "{line}");
            assert!(line.contains(why), "{line}");
            assert_eq!(std::fs::read(&path).expect("read"), bytes, "{line}");
        }
    }
}
