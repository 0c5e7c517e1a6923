//! What can stop key recovery or a rotation step on this node, each
//! variant naming the file, step or interface it concerns.

use std::path::PathBuf;

use keys::rotation::Step;
use keys::store::StoreError;

/// Why the node's keys could not be recovered or a rotation step not
/// carried out. The key files are left as the last step that finished
/// left them: the next round starts from there.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// A step on the key files failed.
    #[error("key rotation step \"{step}\" on {path}")]
    Step {
        /// The step.
        step: Step,
        /// The node's key file.
        path: PathBuf,
        /// What the key store ran into.
        #[source]
        source: StoreError,
    },
    /// None of the key files holds a key the node could use.
    #[error("no usable key at {path}: {problems}")]
    NoUsableKey {
        /// The node's key file.
        path: PathBuf,
        /// What is wrong with each file, joined.
        problems: String,
    },
    /// The files kept changing under recovery (another process at work).
    #[error(
        "the key files under {path} do not settle: is another agent using them? (8 recovery steps did not finish)"
    )]
    Unsettled {
        /// The node's key file.
        path: PathBuf,
    },
    /// The key the decision names was not among the files just loaded:
    /// they changed underneath (another process at work).
    #[error(
        "key {key} vanished from the key files under {path} while they were read: is another agent using them?"
    )]
    Vanished {
        /// The node's key file.
        path: PathBuf,
        /// The key's fingerprint.
        key: String,
    },
    /// `wg` (wireguard-tools) could not be started for the kernel backend.
    #[error("running wg set {ifname} private-key {path} (wireguard-tools) for the kernel backend")]
    WgSpawn {
        /// The kernel interface.
        ifname: String,
        /// The key file it was to be given.
        path: PathBuf,
        /// Why it did not start.
        #[source]
        source: std::io::Error,
    },
    /// `wg set IF private-key FILE` failed.
    #[error("wg set {ifname} private-key {path} failed ({status})")]
    WgSet {
        /// The kernel interface.
        ifname: String,
        /// The key file it was given.
        path: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
    },
}
