//! Properties of the `_getsocks` record codec, on generated input: the decoder takes whatever a
//! peer sends (bytes and a record count) without panicking, and encoding then decoding gives back
//! exactly what was encoded, one record or many, in order.

use hapmaster::handoff::wire::{
    complete_prefix, decode_records, encode_record, Record, WireError, MAX_RECORD_LEN,
};
use proptest::prelude::*;

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=255)
}

fn record() -> impl Strategy<Value = Record> {
    (name(), name(), any::<[u8; 4]>()).prop_map(|(namespace, interface, options)| Record {
        namespace,
        interface,
        options,
    })
}

fn encode_all(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        encode_record(r, &mut out).expect("names of at most 255 bytes encode");
    }
    out
}

/// A count as a peer could send it: small ones (near the number of records the bytes can hold),
/// and any `usize`, huge ones included.
fn count() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..64, any::<usize>()]
}

proptest! {
    /// Arbitrary bytes and count: an `Ok` has exactly `count` records and is the canonical decoding
    /// (it re-encodes to the same bytes); an error is an error, never a panic or a huge allocation.
    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048), count in count()) {
        match decode_records(&bytes, count) {
            Ok(records) => {
                prop_assert_eq!(records.len(), count);
                prop_assert_eq!(encode_all(&records), bytes);
            }
            Err(WireError::Truncated { offset, needed, available, .. }) => {
                prop_assert!(needed > available);
                prop_assert_eq!(offset + available, bytes.len());
            }
            Err(WireError::TrailingBytes { records, offset, extra }) => {
                prop_assert_eq!(records, count);
                prop_assert_eq!(offset + extra, bytes.len());
                prop_assert!(extra > 0);
            }
            Err(e @ WireError::NameTooLong { .. }) => {
                prop_assert!(false, "the decoder reported an encoder error: {}", e);
            }
        }
    }

    /// Arbitrary bytes: the complete prefix decodes on its own, and is all of the bytes or stops
    /// where the next record is incomplete.
    #[test]
    fn complete_prefix_decodes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let (records, len) = complete_prefix(&bytes);
        prop_assert!(len <= bytes.len());
        let decoded = decode_records(&bytes[..len], records);
        prop_assert!(decoded.is_ok(), "prefix of {} records ({} bytes): {:?}", records, len, decoded);
        if len < bytes.len() {
            let rest = decode_records(&bytes[len..], 1);
            prop_assert!(
                matches!(rest, Err(WireError::Truncated { .. })),
                "bytes after the complete prefix hold a whole record: {:?}",
                rest
            );
        }
    }

    #[test]
    fn one_record_round_trips(r in record()) {
        let bytes = encode_all(std::slice::from_ref(&r));
        prop_assert_eq!(bytes.len(), 1 + r.namespace.len() + 1 + r.interface.len() + 4);
        prop_assert!(bytes.len() <= MAX_RECORD_LEN);
        prop_assert_eq!(decode_records(&bytes, 1).unwrap(), vec![r]);
    }

    /// Records encoded one after the other decode in the same order, as one buffer and as any split
    /// of it into two parts (the kernel may deliver a batch in several reads).
    #[test]
    fn concatenations_decode_in_order(
        records in prop::collection::vec(record(), 0..24),
        split in any::<prop::sample::Index>(),
    ) {
        let bytes = encode_all(&records);
        prop_assert_eq!(decode_records(&bytes, records.len()).unwrap(), records.clone());
        prop_assert_eq!(complete_prefix(&bytes), (records.len(), bytes.len()));
        // Any split: the first part's complete prefix, then the rest, give back every record.
        let at = split.index(bytes.len() + 1);
        let (n, len) = complete_prefix(&bytes[..at]);
        let mut decoded = decode_records(&bytes[..len], n).unwrap();
        decoded.extend(decode_records(&bytes[len..], records.len() - n).unwrap());
        prop_assert_eq!(decoded, records);
    }

    /// One record too few or too many for the bytes is an error, never a silent partial decode.
    #[test]
    fn wrong_count_is_an_error(records in prop::collection::vec(record(), 1..8)) {
        let bytes = encode_all(&records);
        let fewer = decode_records(&bytes, records.len() - 1);
        prop_assert!(matches!(fewer, Err(WireError::TrailingBytes { .. })), "{:?}", fewer);
        let more = decode_records(&bytes, records.len() + 1);
        prop_assert!(matches!(more, Err(WireError::Truncated { .. })), "{:?}", more);
    }

    /// A name over 255 bytes is refused and the output is left as it was.
    #[test]
    fn long_names_do_not_encode(
        long in prop::collection::vec(any::<u8>(), 256..600),
        in_interface in any::<bool>(),
        prefix in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let r = if in_interface {
            Record { interface: long, ..Record::default() }
        } else {
            Record { namespace: long, ..Record::default() }
        };
        let mut out = prefix.clone();
        let res = encode_record(&r, &mut out);
        prop_assert!(matches!(res, Err(WireError::NameTooLong { .. })), "{:?}", res);
        prop_assert_eq!(out, prefix);
    }
}
