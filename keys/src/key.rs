//! X25519 key types as WireGuard uses them.

use std::fmt;
use std::str::FromStr;

use rand_core::OsRng;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::KEY_LEN;
use crate::base64key::{KeyError, decode_key, encode_key};

/// A WireGuard private key. Zeroized on drop; `Debug` and `Display` print
/// only the public half, never the secret.
#[derive(Clone)]
pub struct PrivateKey(StaticSecret);

impl PrivateKey {
    /// Generate a fresh key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        Self(StaticSecret::random_from_rng(OsRng))
    }

    /// Build from 32 raw bytes (clamping happens when the key is used, as in
    /// WireGuard). The caller should zeroize its copy.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(StaticSecret::from(bytes))
    }

    /// Strictly parse the base64 form (`wg genkey` output without newline).
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        let bytes = decode_key(s)?;
        Ok(Self::from_bytes(*bytes))
    }

    /// The base64 form, in a buffer that is zeroized when dropped.
    pub fn to_base64(&self) -> Zeroizing<String> {
        encode_key(self.0.as_bytes())
    }

    /// The raw secret bytes. Use only to hand the key to a WireGuard
    /// implementation; zeroize any copy.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        self.0.as_bytes()
    }

    /// The underlying x25519-dalek secret (the type boringtun takes).
    pub fn as_static_secret(&self) -> &StaticSecret {
        &self.0
    }

    /// The public key derived from this private key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(<redacted>, public={})", self.public_key())
    }
}

impl fmt::Display for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted private key>")
    }
}

/// A WireGuard public key: 32 bytes, shown as standard base64.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// Build from 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Strictly parse the base64 form (as in the `podguard.dev/public-key`
    /// annotation).
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        Ok(Self(*decode_key(s)?))
    }

    /// The base64 form.
    pub fn to_base64(&self) -> String {
        encode_key(&self.0).to_string()
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The lowercase hex form, as the UAPI configuration protocol uses it.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A short fingerprint for tables and logs: the first 8 base64 characters.
    pub fn fingerprint(&self) -> String {
        self.to_base64()[..8].to_string()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_base64(s)
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_keys_differ_and_roundtrip() {
        let a = PrivateKey::generate();
        let b = PrivateKey::generate();
        assert_ne!(a.public_key(), b.public_key());
        let again = PrivateKey::from_base64(&a.to_base64()).unwrap();
        assert_eq!(again.public_key(), a.public_key());
    }

    #[test]
    fn debug_and_display_never_show_secret() {
        let k = PrivateKey::generate();
        let secret = k.to_base64();
        let dbg = format!("{k:?}");
        let disp = format!("{k}");
        assert!(!dbg.contains(secret.as_str()), "{dbg}");
        assert!(!disp.contains(secret.as_str()), "{disp}");
        assert!(dbg.contains("redacted"));
        assert!(dbg.contains(&k.public_key().to_base64()));
        // Not even a chunk of the secret.
        assert!(!dbg.contains(&secret[..12]));
    }

    #[test]
    fn known_vector_rfc7748() {
        // RFC 7748 section 6.1: Alice's private and public key.
        let hex = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
        let mut b = [0u8; 32];
        for i in 0..32 {
            b[i] = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        let k = PrivateKey::from_bytes(b);
        assert_eq!(
            k.public_key().to_hex(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn public_key_serde_is_base64_and_validated() {
        let p = PrivateKey::generate().public_key();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, format!("\"{p}\""));
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), p);
        let err = serde_json::from_str::<PublicKey>("\"short\"").unwrap_err();
        assert!(err.to_string().contains("wrong length"), "{err}");
    }

    #[test]
    fn private_key_error_does_not_echo_input() {
        let k = PrivateKey::generate();
        let mut s = k.to_base64().to_string();
        s.replace_range(0..1, "*");
        let e = PrivateKey::from_base64(&s).unwrap_err().to_string();
        assert!(!e.contains(&s[1..10]), "{e}");
    }

    proptest! {
        #[test]
        fn base64_roundtrip(bytes in any::<[u8; 32]>()) {
            let p = PublicKey::from_bytes(bytes);
            prop_assert_eq!(PublicKey::from_base64(&p.to_base64()).unwrap(), p);
        }

        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,60}") {
            let _ = PublicKey::from_base64(&s);
            let _ = PrivateKey::from_base64(&s);
        }
    }
}
