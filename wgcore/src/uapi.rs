//! The WireGuard cross-platform userspace configuration protocol ("UAPI"),
//! as `wg(8)` speaks it over `/var/run/wireguard/<ifname>.sock`.
//!
//! This module parses `set=1` requests into data and formats `get=1`
//! answers; it does no IO. The device applies a parsed [`SetRequest`].

use std::fmt::Write as _;
use std::net::SocketAddr;

use ipnet::IpNet;
use keys::{PrivateKey, PublicKey};

/// Errno values the protocol returns (negated POSIX errnos, as wg expects).
pub const EINVAL: i32 = 22;
/// Returned for a key or state the device cannot use.
pub const EPROTO: i32 = 71;

/// A parse failure: the line that was wrong and why. Never echoes a value
/// of `private_key` or `preshared_key`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("UAPI line {line}: {problem}")]
pub struct UapiError {
    /// 1-based line number in the request.
    pub line: usize,
    /// What is wrong.
    pub problem: String,
}

/// A change to one peer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerUpdate {
    /// Which peer.
    pub public_key: Option<PublicKey>,
    /// `remove=true`.
    pub remove: bool,
    /// `update_only=true`: do not create the peer.
    pub update_only: bool,
    /// New endpoint.
    pub endpoint: Option<SocketAddr>,
    /// New keepalive (0 = off).
    pub persistent_keepalive: Option<u16>,
    /// `replace_allowed_ips=true`.
    pub replace_allowed_ips: bool,
    /// AllowedIPs to add.
    pub allowed_ips: Vec<IpNet>,
    /// Whether a preshared key was given (we do not support them: error).
    pub preshared_key: bool,
}

/// A parsed `set=1` request.
#[derive(Default)]
pub struct SetRequest {
    /// New interface private key (`None` = unchanged).
    pub private_key: Option<PrivateKey>,
    /// `private_key=` with all zeros: remove the key.
    pub clear_private_key: bool,
    /// New listen port.
    pub listen_port: Option<u16>,
    /// `replace_peers=true`.
    pub replace_peers: bool,
    /// Peer changes, in order.
    pub peers: Vec<PeerUpdate>,
}

impl std::fmt::Debug for SetRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetRequest")
            .field(
                "private_key",
                &self.private_key.as_ref().map(|_| "<redacted>"),
            )
            .field("listen_port", &self.listen_port)
            .field("replace_peers", &self.replace_peers)
            .field("peers", &self.peers)
            .finish()
    }
}

/// A value as it appears in an error: quoted when it is short and holds
/// no run of [`KEY_LIKE_RUN`] or more characters a hex or base64 key is
/// made of, else only its length. So no error carries a key or a piece of
/// one, whatever line it came from (fuzzing found a key pasted into another
/// field echoed whole; later, review found its first 24 characters kept).
fn shown(value: &str) -> String {
    let n = value.chars().count();
    // Judged as it would be shown: an escape (`\0` before digits) can
    // lengthen a run (found by fuzzing).
    let quoted = format!("{value:?}");
    if n <= 24 && longest_key_like_run(&quoted) < KEY_LIKE_RUN {
        quoted
    } else {
        format!("<{n} characters, not shown>")
    }
}

/// Runs of key characters this long are never shown: at most 11 hex
/// digits (44 of a key's 256 bits) can reach an error or a log.
const KEY_LIKE_RUN: usize = 12;

/// The longest run of characters of the hex or base64 alphabets in `s`.
fn longest_key_like_run(s: &str) -> usize {
    s.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=')))
        .map(str::len)
        .max()
        .unwrap_or(0)
}

fn parse_hex_key(value: &str) -> Result<[u8; 32], String> {
    if value.len() != 64 {
        return Err(format!(
            "key must be 64 hex characters, got {}",
            value.len()
        ));
    }
    let mut out = [0u8; 32];
    for (i, chunk) in value.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).map_err(|_| "key is not hex".to_string())?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| "key is not hex".to_string())?;
    }
    Ok(out)
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{} is not true or false", shown(value))),
    }
}

/// How a request line the server does not know appears in its log: the
/// operation's name (the text before `=`) when it looks like one, and
/// never the value after it or a line that could be one (a client that
/// sends `private_key=...` or a bare key first must not get it logged).
pub fn unknown_request(first: &str) -> String {
    let op = first.split_once('=').map_or(first, |(name, _)| name);
    if !op.is_empty()
        && op.len() <= 24
        && op.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        && longest_key_like_run(op) < KEY_LIKE_RUN
    {
        format!("{op:?}")
    } else {
        format!("<{} bytes, not shown>", first.len())
    }
}

/// Parse the lines after `set=1` (up to, not including, the blank line).
pub fn parse_set(lines: &[String]) -> Result<SetRequest, UapiError> {
    let mut req = SetRequest::default();
    let mut peer: Option<PeerUpdate> = None;
    for (i, line) in lines.iter().enumerate() {
        let err = |problem: String| UapiError {
            line: i + 2,
            problem,
        };
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| err("expected key=value".into()))?;
        match key {
            "private_key" => {
                let mut bytes =
                    parse_hex_key(value).map_err(|_| err("private_key: invalid key".into()))?;
                if bytes == [0u8; 32] {
                    req.clear_private_key = true;
                } else {
                    req.private_key = Some(PrivateKey::from_bytes(bytes));
                }
                zeroize::Zeroize::zeroize(&mut bytes);
            }
            "listen_port" => {
                req.listen_port = Some(
                    value
                        .parse()
                        .map_err(|_| err(format!("listen_port {} is not a port", shown(value))))?,
                )
            }
            "fwmark" => {
                value
                    .parse::<u32>()
                    .map_err(|_| err(format!("fwmark {} is not a number", shown(value))))?;
            }
            "replace_peers" => req.replace_peers = parse_bool(value).map_err(err)?,
            "public_key" => {
                if let Some(p) = peer.take() {
                    req.peers.push(p);
                }
                let k = parse_hex_key(value).map_err(|e| err(format!("public_key: {e}")))?;
                peer = Some(PeerUpdate {
                    public_key: Some(PublicKey::from_bytes(k)),
                    ..Default::default()
                });
            }
            _ => {
                let p = peer
                    .as_mut()
                    .ok_or_else(|| err(format!("{} before any public_key", shown(key))))?;
                match key {
                    "remove" => p.remove = parse_bool(value).map_err(err)?,
                    "update_only" => p.update_only = parse_bool(value).map_err(err)?,
                    "preshared_key" => {
                        parse_hex_key(value)
                            .map_err(|_| err("preshared_key: invalid key".into()))?;
                        p.preshared_key = value.bytes().any(|b| b != b'0');
                    }
                    "endpoint" => {
                        p.endpoint = Some(value.parse().map_err(|_| {
                            err(format!("endpoint {} is not ip:port", shown(value)))
                        })?)
                    }
                    "persistent_keepalive_interval" => {
                        p.persistent_keepalive = Some(value.parse().map_err(|_| {
                            err(format!(
                                "persistent_keepalive_interval {} is not 0-65535",
                                shown(value)
                            ))
                        })?)
                    }
                    "replace_allowed_ips" => {
                        p.replace_allowed_ips = parse_bool(value).map_err(err)?
                    }
                    "allowed_ip" => {
                        let net: IpNet = value.parse().map_err(|_| {
                            err(format!("allowed_ip {} is not a CIDR", shown(value)))
                        })?;
                        p.allowed_ips.push(net.trunc());
                    }
                    "protocol_version" => {
                        if value != "1" {
                            return Err(err(format!(
                                "protocol_version {} unsupported",
                                shown(value)
                            )));
                        }
                    }
                    _ => return Err(err(format!("unknown key {}", shown(key)))),
                }
            }
        }
    }
    if let Some(p) = peer {
        req.peers.push(p);
    }
    Ok(req)
}

/// What `get=1` reports about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer's key.
    pub public_key: PublicKey,
    /// Its endpoint.
    pub endpoint: Option<SocketAddr>,
    /// AllowedIPs.
    pub allowed_ips: Vec<IpNet>,
    /// Seconds and nanoseconds since the epoch of the last handshake (0 = never).
    pub last_handshake: (u64, u32),
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Datagrams received (not part of the UAPI; for metrics).
    pub rx_packets: u64,
    /// Datagrams sent (not part of the UAPI; for metrics).
    pub tx_packets: u64,
    /// Keepalive interval (0 = off).
    pub persistent_keepalive: u16,
    /// Handshake initiations sent to the peer, retransmits included (not
    /// part of the UAPI; for health).
    pub handshake_initiations: u64,
    /// The peer's initiations answered (not part of the UAPI).
    pub handshakes_answered: u64,
    /// How long initiations to the peer have gone without a completed
    /// handshake (`None`: none outstanding; not part of the UAPI).
    pub unanswered_for: Option<std::time::Duration>,
}

/// Format a `get=1` answer (including the final `errno=0` and blank line).
pub fn format_get(
    private_key: Option<&PrivateKey>,
    listen_port: u16,
    peers: &[PeerStatus],
) -> zeroize::Zeroizing<String> {
    let mut out = zeroize::Zeroizing::new(String::new());
    if let Some(k) = private_key {
        let hex: zeroize::Zeroizing<String> =
            zeroize::Zeroizing::new(k.as_bytes().iter().map(|b| format!("{b:02x}")).collect());
        let _ = writeln!(out, "private_key={}", hex.as_str());
    }
    let _ = writeln!(out, "listen_port={listen_port}");
    for p in peers {
        let _ = writeln!(out, "public_key={}", p.public_key.to_hex());
        if let Some(e) = p.endpoint {
            let _ = writeln!(out, "endpoint={e}");
        }
        let _ = writeln!(out, "last_handshake_time_sec={}", p.last_handshake.0);
        let _ = writeln!(out, "last_handshake_time_nsec={}", p.last_handshake.1);
        let _ = writeln!(out, "tx_bytes={}", p.tx_bytes);
        let _ = writeln!(out, "rx_bytes={}", p.rx_bytes);
        let _ = writeln!(
            out,
            "persistent_keepalive_interval={}",
            p.persistent_keepalive
        );
        for a in &p.allowed_ips {
            let _ = writeln!(out, "allowed_ip={a}");
        }
        let _ = writeln!(out, "protocol_version=1");
    }
    let _ = write!(out, "errno=0\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(String::from).collect()
    }

    #[test]
    fn parses_wg_set_request() {
        let k = PrivateKey::generate();
        let pk = k.public_key();
        let req = parse_set(&lines(&format!(
            "private_key={}\nlisten_port=51820\nreplace_peers=true\npublic_key={}\nendpoint=[2001:db8::1]:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.244.2.0/24\nallowed_ip=fd00::/64\npublic_key={}\nremove=true",
            k.as_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>(),
            pk.to_hex(),
            PrivateKey::generate().public_key().to_hex(),
        )))
        .unwrap();
        assert_eq!(
            req.private_key.as_ref().unwrap().public_key(),
            k.public_key()
        );
        assert_eq!(req.listen_port, Some(51820));
        assert!(req.replace_peers);
        assert_eq!(req.peers.len(), 2);
        assert_eq!(req.peers[0].public_key, Some(pk));
        assert_eq!(req.peers[0].allowed_ips.len(), 2);
        assert_eq!(req.peers[0].persistent_keepalive, Some(25));
        assert!(req.peers[1].remove);
        assert!(
            !format!("{req:?}").contains(
                &k.as_bytes()[0..4]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )
        );
    }

    #[test]
    fn errors_name_the_line_and_never_the_private_key() {
        let e = parse_set(&lines("listen_port=99999")).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().contains("99999"));
        let e = parse_set(&lines("endpoint=1.2.3.4:5")).unwrap_err();
        assert!(e.problem.contains("before any public_key"));
        let secret = "ab".repeat(31) + "zz";
        let e = parse_set(&lines(&format!("private_key={secret}"))).unwrap_err();
        assert!(!e.to_string().contains("abab"), "{e}");
    }

    #[test]
    fn get_format_ends_with_errno() {
        let pk = PrivateKey::generate().public_key();
        let out = format_get(
            None,
            51820,
            &[PeerStatus {
                public_key: pk,
                endpoint: Some("192.0.2.1:51820".parse().unwrap()),
                allowed_ips: vec!["10.0.0.0/24".parse().unwrap()],
                last_handshake: (5, 6),
                rx_bytes: 1,
                tx_bytes: 2,
                rx_packets: 1,
                tx_packets: 1,
                persistent_keepalive: 25,
                handshake_initiations: 1,
                handshakes_answered: 0,
                unanswered_for: None,
            }],
        );
        assert!(out.starts_with("listen_port=51820\npublic_key="));
        assert!(out.contains("allowed_ip=10.0.0.0/24\n"));
        assert!(out.ends_with("errno=0\n\n"));
    }

    /// Fuzzing found that a key pasted into another field was echoed
    /// whole in the error: values are cut.
    #[test]
    fn long_values_are_cut_in_errors() {
        let key = "01".repeat(32);
        let lines = vec![format!("listen_port=f6ae_key={key}")];
        let e = parse_set(&lines).unwrap_err().to_string();
        assert!(!e.contains(&key), "{e}");
        assert!(e.contains("listen_port") && e.contains("characters"), "{e}");
        // And in a key name before any public_key (also found by fuzzing).
        let lines = vec![format!("priv{key}=x")];
        let e = parse_set(&lines).unwrap_err().to_string();
        assert!(!e.contains(&key), "{e}");
    }

    /// Not even a piece of a key: its first 24 characters were shown
    /// until review found it. Every place a key can be pasted.
    #[test]
    fn no_piece_of_a_key_reaches_an_error() {
        let key = "c0ffee".repeat(10) + "abcd";
        let pk = "01".repeat(32);
        for lines in [
            vec![format!("listen_port={key}")],
            vec![format!("fwmark={}", &key[..20])],
            vec![format!("{key}=x")],
            vec![format!("public_key={pk}"), format!("endpoint={key}")],
            vec![format!("public_key={pk}"), format!("{}=1", &key[..16])],
            vec![
                format!("public_key={pk}"),
                format!("allowed_ip={}", &key[..24]),
            ],
        ] {
            let e = parse_set(&lines).unwrap_err().to_string();
            for w in key.as_bytes().windows(KEY_LIKE_RUN) {
                let w = std::str::from_utf8(w).unwrap();
                assert!(!e.contains(w), "{lines:?} gave {e}");
            }
        }
        // An escape must not join a shown run to a key's digits (fuzzing:
        // "\0" before 11 digits showed 12 of a key of 0s and 1s).
        let lines = vec!["\u{1}\u{0}10000000000\u{0} e_key=x".to_string()];
        let e = parse_set(&lines).unwrap_err().to_string();
        assert!(!e.contains("010000000000"), "{e}");
        // Short values that cannot be a key are still quoted for the operator.
        let e = parse_set(&["listen_port=51820x".to_string()]).unwrap_err();
        assert!(e.to_string().contains("\"51820x\""), "{e}");
    }

    #[test]
    fn unknown_requests_are_logged_without_their_values() {
        let hex = "a1".repeat(32);
        assert_eq!(unknown_request("get=2"), "\"get\"");
        assert_eq!(
            unknown_request(&format!("private_key={hex}")),
            "\"private_key\""
        );
        for line in [hex.clone(), format!("{hex}=1"), format!("x{hex}")] {
            let shown = unknown_request(&line);
            assert!(!shown.contains("a1a1"), "{line} shown as {shown}");
        }
    }
}
