//! Properties of the preload protocol's codec and matcher (src/preload/), on generated input:
//! the master decodes whatever a worker sends without panicking and accepts only canonical
//! messages, every message it can send or receive round-trips, and the matcher never hands a
//! held socket out twice to one worker nor for an address it is not bound at.

use hapmaster::preload::matcher::{Address, Adoptions, SocketKey};
use hapmaster::preload::wire::{decode, encode, Bind, Message, ADDR_MAX, IFACE_LEN, MSG_LEN};
use proptest::prelude::*;

fn bind() -> impl Strategy<Value = Bind> {
    (
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..=ADDR_MAX),
        prop::collection::vec(1u8..=255, 0..IFACE_LEN),
        0u32..4,
        any::<u64>(),
    )
        .prop_map(|(pid, addr, iface, flags, netns)| Bind {
            pid,
            addr,
            iface,
            flags,
            netns,
        })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        any::<u32>().prop_map(|pid| Message::Hello { pid }),
        bind().prop_map(Message::Adopt),
        bind().prop_map(Message::New),
        Just(Message::Fd),
        Just(Message::None),
        Just(Message::End),
    ]
}

fn sockaddr_in(port: u16) -> Vec<u8> {
    let mut raw = vec![0u8; 16];
    raw[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    raw[2..4].copy_from_slice(&port.to_be_bytes());
    raw[4..8].copy_from_slice(&[127, 0, 0, 1]);
    raw
}

fn sockaddr_un(path: &str) -> Vec<u8> {
    let mut raw = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    raw.extend_from_slice(path.as_bytes());
    raw
}

/// Keys from a small space, so that generated held sets and requests often meet.
fn key() -> impl Strategy<Value = SocketKey> {
    let addr = prop_oneof![
        (80u16..83).prop_map(sockaddr_in),
        prop::sample::select(vec![
            "/s/a",
            "/s/a.1.tmp",
            "/s/a.22.tmp",
            "/s/b.3.tmp",
            "/s/b"
        ])
        .prop_map(sockaddr_un),
    ];
    (addr, prop::bool::ANY, 0u32..4, 1u64..3).prop_map(|(addr, lo, flags, netns)| {
        let iface = if lo { b"lo".to_vec() } else { Vec::new() };
        let bind = Bind {
            pid: 1,
            addr,
            iface,
            flags,
            netns,
        };
        SocketKey::from_bind(&bind).unwrap()
    })
}

/// Any bytes, and datagrams of the right length with this version and a known kind in front.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    let framed =
        (1u32..=6, prop::collection::vec(any::<u8>(), MSG_LEN - 8)).prop_map(|(kind, rest)| {
            let mut bytes = 1u32.to_ne_bytes().to_vec();
            bytes.extend_from_slice(&kind.to_ne_bytes());
            bytes.extend_from_slice(&rest);
            bytes
        });
    prop_oneof![prop::collection::vec(any::<u8>(), 0..400), framed]
}

proptest! {
    /// Arbitrary datagrams: an `Ok` is canonical (re-encodes to exactly the same bytes), anything
    /// else an error, never a panic.
    #[test]
    fn decode_accepts_only_canonical_messages(bytes in datagram()) {
        if let Ok(m) = decode(&bytes) {
            prop_assert_eq!(&encode(&m)[..], &bytes[..]);
        }
    }

    #[test]
    fn messages_round_trip(m in message()) {
        let bytes = encode(&m);
        prop_assert_eq!(bytes.len(), MSG_LEN);
        prop_assert_eq!(decode(&bytes), Ok(m));
    }

    /// One byte changed in a valid message: the result is an error or another canonical message,
    /// so a garbled answer cannot pass for the one that was sent.
    #[test]
    fn a_changed_byte_is_caught_or_canonical(m in message(), at in 0..MSG_LEN, x in 1u8..=255) {
        let mut bytes = encode(&m);
        bytes[at] ^= x;
        if let Ok(other) = decode(&bytes) {
            prop_assert_ne!(&other, &m);
            prop_assert_eq!(encode(&other), bytes);
        }
    }

    /// For one worker, every answer is a held socket not given before, whose keys agree with the
    /// request; a request is unanswered only when no such socket is left.
    #[test]
    fn the_matcher_gives_each_socket_once_and_only_for_its_keys(
        held in prop::collection::vec(key(), 0..8),
        wanted in prop::collection::vec(key(), 0..16),
    ) {
        let mut adoptions = Adoptions::new(&held);
        let mut given = vec![false; held.len()];
        for w in &wanted {
            let fits = |h: &SocketKey| {
                let place = match (&h.address, &w.address) {
                    (Address::UnixPath { path: a, .. }, Address::UnixPath { path: b, haproxy_tmp }) => {
                        *haproxy_tmp && a == b
                    }
                    (a, b) => a == b,
                };
                place && h.iface == w.iface && h.v6only == w.v6only
                    && h.transparent == w.transparent && h.netns == w.netns
            };
            match adoptions.answer(w) {
                Some(i) => {
                    prop_assert!(!given[i], "socket {} given twice", i);
                    prop_assert!(fits(&held[i]), "{:?} answered {:?}", held[i], w);
                    given[i] = true;
                }
                None => prop_assert!(
                    !held.iter().zip(&given).any(|(h, g)| !g && fits(h)),
                    "{:?} unanswered",
                    w
                ),
            }
        }
    }
}
