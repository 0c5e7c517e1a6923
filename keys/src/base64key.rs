//! Strict base64 decoding of 32-byte keys, with errors that never echo input.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::{KEY_B64_LEN, KEY_LEN};

/// Why a string is not a valid base64 WireGuard key.
///
/// No variant carries the input or any character of it: the same parser reads
/// private keys, and an error message must not leak one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The string does not have the 44 characters that 32 bytes take in base64.
    #[error("wrong length: a key is {expected} base64 characters (32 bytes), got {got}")]
    WrongLength {
        /// Expected number of characters (44).
        expected: usize,
        /// Number of characters found.
        got: usize,
    },
    /// A character outside the standard base64 alphabet (this includes
    /// whitespace and the URL-safe `-` and `_`).
    #[error("bad character at position {position}: not in the standard base64 alphabet")]
    BadCharacter {
        /// Zero-based character position of the first offending character.
        position: usize,
    },
    /// Padding is missing, misplaced, or the last character carries bits
    /// beyond the 32 bytes (a non-canonical encoding).
    #[error(
        "non-canonical base64: a key ends in exactly one '=' and its last data character encodes no stray bits"
    )]
    NonCanonical,
}

/// Decode exactly 32 bytes from canonical standard base64.
pub(crate) fn decode_key(s: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    let got = s.chars().count();
    if got != KEY_B64_LEN {
        return Err(KeyError::WrongLength {
            expected: KEY_B64_LEN,
            got,
        });
    }
    if let Some(position) = s
        .chars()
        .position(|c| !(c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '='))
    {
        return Err(KeyError::BadCharacter { position });
    }
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    // STANDARD requires canonical padding and rejects non-zero trailing bits.
    match STANDARD.decode_slice(s.as_bytes(), out.as_mut_slice()) {
        Ok(KEY_LEN) => Ok(out),
        Ok(_) => Err(KeyError::NonCanonical),
        Err(base64::DecodeSliceError::DecodeError(base64::DecodeError::InvalidByte(p, b)))
            if b != b'=' =>
        {
            Err(KeyError::BadCharacter { position: p })
        }
        Err(_) => Err(KeyError::NonCanonical),
    }
}

/// Encode 32 bytes as standard base64 (44 characters).
pub(crate) fn encode_key(bytes: &[u8; KEY_LEN]) -> Zeroizing<String> {
    Zeroizing::new(STANDARD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    #[test]
    fn accepts_canonical_key() {
        assert_eq!(*decode_key(GOOD).unwrap(), [0u8; 32]);
    }

    #[test]
    fn wrong_length_names_counts() {
        let e = decode_key("AAAA").unwrap_err();
        assert_eq!(
            e,
            KeyError::WrongLength {
                expected: 44,
                got: 4
            }
        );
        assert!(e.to_string().contains("got 4"));
        // 33 bytes encode to 44 chars without padding: still wrong.
        let e = decode_key(&format!("{GOOD}A")).unwrap_err();
        assert!(matches!(e, KeyError::WrongLength { got: 45, .. }));
    }

    #[test]
    fn bad_character_names_position_not_character() {
        let mut s = GOOD.to_string();
        s.replace_range(5..6, "-");
        let e = decode_key(&s).unwrap_err();
        assert_eq!(e, KeyError::BadCharacter { position: 5 });
        assert!(!e.to_string().contains('-'));
        let mut s = GOOD.to_string();
        s.replace_range(10..11, " ");
        assert_eq!(
            decode_key(&s).unwrap_err(),
            KeyError::BadCharacter { position: 10 }
        );
    }

    #[test]
    fn rejects_non_canonical_padding_and_trailing_bits() {
        // Missing padding, padding in the middle, stray trailing bits.
        assert_eq!(
            decode_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap_err(),
            KeyError::NonCanonical
        );
        assert_eq!(
            decode_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==").unwrap_err(),
            KeyError::NonCanonical
        );
        assert_eq!(
            decode_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=").unwrap_err(),
            KeyError::NonCanonical
        );
        assert_eq!(
            decode_key("AAAA=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap_err(),
            KeyError::NonCanonical
        );
    }

    #[test]
    fn multibyte_input_is_wrong_length_not_panic() {
        let s = "é".repeat(22);
        assert!(matches!(
            decode_key(&s).unwrap_err(),
            KeyError::WrongLength { .. }
        ));
    }
}
