//! Which (local key, remote key) link carries a peer's traffic during a
//! key rotation: pure functions, so the rule is tested without sessions.
//!
//! A device holds up to two local keys (the current one and the next or
//! old one) and a peer may announce a next key beside its current one, so
//! up to four links exist. Traffic uses the best *established* link: the
//! newest local key first, then the peer's announced next key over its
//! current one; a link to a key the peer no longer has is draining and is
//! used only while nothing better is established.

/// How a remote key stands for a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RemoteRank {
    /// A key the peer no longer has (left over from a rename).
    Draining,
    /// The key the peer is configured by.
    Current,
    /// The peer's announced next key.
    Next,
}

/// Rank `key` given the peer's `current` and announced `next` key.
pub fn remote_rank<K: PartialEq>(key: &K, current: &K, next: Option<&K>) -> RemoteRank {
    if next == Some(key) {
        RemoteRank::Next
    } else if current == key {
        RemoteRank::Current
    } else {
        RemoteRank::Draining
    }
}

/// One link as selection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Generation of the local key (higher = newer).
    pub generation: u64,
    /// How its remote key stands.
    pub rank: RemoteRank,
    /// Whether it has a session.
    pub established: bool,
}

/// The index of the best established candidate, if any.
pub fn best(cands: &[Candidate]) -> Option<usize> {
    cands
        .iter()
        .enumerate()
        .filter(|(_, c)| c.established)
        .max_by_key(|(_, c)| (c.generation, c.rank))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(generation: u64, rank: RemoteRank, established: bool) -> Candidate {
        Candidate {
            generation,
            rank,
            established,
        }
    }

    #[test]
    fn ranks() {
        assert_eq!(remote_rank(&1, &1, Some(&2)), RemoteRank::Current);
        assert_eq!(remote_rank(&2, &1, Some(&2)), RemoteRank::Next);
        assert_eq!(remote_rank(&3, &1, Some(&2)), RemoteRank::Draining);
        assert_eq!(remote_rank(&3, &1, None), RemoteRank::Draining);
    }

    #[test]
    fn newest_local_key_beats_the_peers_next_key() {
        let cands = [
            c(1, RemoteRank::Next, true),
            c(2, RemoteRank::Current, true),
            c(2, RemoteRank::Next, false),
        ];
        assert_eq!(best(&cands), Some(1));
    }

    #[test]
    fn next_key_wins_once_it_answers() {
        let mut cands = [
            c(1, RemoteRank::Current, true),
            c(1, RemoteRank::Next, false),
        ];
        assert_eq!(best(&cands), Some(0));
        cands[1].established = true;
        assert_eq!(best(&cands), Some(1));
    }

    #[test]
    fn draining_only_while_nothing_else_works() {
        let mut cands = [
            c(1, RemoteRank::Draining, true),
            c(1, RemoteRank::Current, false),
        ];
        assert_eq!(best(&cands), Some(0));
        cands[1].established = true;
        assert_eq!(best(&cands), Some(1));
        assert_eq!(best(&[c(1, RemoteRank::Current, false)]), None);
    }

    fn cand() -> impl Strategy<Value = Candidate> {
        (
            1u64..4,
            prop_oneof![
                Just(RemoteRank::Draining),
                Just(RemoteRank::Current),
                Just(RemoteRank::Next)
            ],
            any::<bool>(),
        )
            .prop_map(|(g, r, e)| c(g, r, e))
    }

    proptest! {
        #[test]
        fn best_is_established_and_not_beaten(cands in proptest::collection::vec(cand(), 0..6)) {
            match best(&cands) {
                None => prop_assert!(cands.iter().all(|c| !c.established)),
                Some(i) => {
                    prop_assert!(cands[i].established);
                    for o in cands.iter().filter(|o| o.established) {
                        prop_assert!((o.generation, o.rank) <= (cands[i].generation, cands[i].rank));
                    }
                }
            }
        }
    }
}
