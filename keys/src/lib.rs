//! WireGuard key material for podguard.
//!
//! Everything here is pure — no clock, no network — except [`store`], which
//! reads and writes the node's private key file. Private keys are zeroized on
//! drop and never appear in `Debug` or `Display` output or in error messages.
//!
//! * [`PrivateKey`] / [`PublicKey`]: X25519 keys as WireGuard uses them.
//! * [`PrivateKey::from_base64`] / [`PublicKey::from_base64`]: strict parsing
//!   (44 characters, standard alphabet, canonical padding).
//! * [`store::load_or_generate`]: the 0600 key file, written atomically.

mod base64key;
pub mod kernel_ack;
mod key;
pub mod rotation;
pub mod store;

pub use base64key::KeyError;
pub use key::{PrivateKey, PublicKey};

/// Length of a WireGuard key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of a WireGuard key in standard base64 (with one `=` of padding).
pub const KEY_B64_LEN: usize = 44;
