//! The `_getsocks` record format and batch layout, against hand-written wire bytes.

use hapmaster::handoff::wire::{
    batch_ranges, decode_records, encode_record, Record, WireError, MAX_FDS_PER_BATCH,
    MAX_RECORD_LEN,
};

fn name(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

fn encode_all(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        encode_record(r, &mut out).unwrap();
    }
    out
}

fn sample_records() -> Vec<Record> {
    let mut records = Vec::new();
    for (i, ns_len) in [0usize, 1, 255].into_iter().enumerate() {
        for (j, if_len) in [0usize, 1, 255].into_iter().enumerate() {
            records.push(Record {
                namespace: name(ns_len, b'a' + i as u8),
                interface: name(if_len, b'A' + j as u8),
                options: [i as u8, 0xff, j as u8, 0x80],
            });
        }
    }
    records
}

#[test]
fn record_layout_matches_haproxy() {
    let r = Record {
        namespace: b"ns1".to_vec(),
        interface: b"eth0".to_vec(),
        options: 0x404u32.to_ne_bytes(),
    };
    let mut out = Vec::new();
    encode_record(&r, &mut out).unwrap();
    let mut expected = vec![3, b'n', b's', b'1', 4, b'e', b't', b'h', b'0'];
    expected.extend_from_slice(&0x404u32.to_ne_bytes());
    assert_eq!(out, expected);
    assert_eq!(r.options_u32(), 0x404);
}

#[test]
fn round_trip_single_records_of_every_name_length() {
    for r in sample_records() {
        let bytes = encode_all(std::slice::from_ref(&r));
        assert_eq!(bytes.len(), 6 + r.namespace.len() + r.interface.len());
        assert!(bytes.len() <= MAX_RECORD_LEN);
        assert_eq!(decode_records(&bytes, 1).unwrap(), vec![r]);
    }
}

#[test]
fn round_trip_many_records_in_one_buffer() {
    let records = sample_records();
    let bytes = encode_all(&records);
    assert_eq!(decode_records(&bytes, records.len()).unwrap(), records);
}

#[test]
fn maximal_record_has_max_len() {
    let r = Record {
        namespace: name(255, 1),
        interface: name(255, 2),
        options: [1, 2, 3, 4],
    };
    assert_eq!(encode_all(&[r]).len(), MAX_RECORD_LEN);
}

#[test]
fn options_bytes_are_preserved_exactly() {
    for options in [[0, 0, 0, 0], [0xff; 4], [1, 2, 3, 4], [0x04, 0x04, 0, 0x80]] {
        let r = Record {
            options,
            ..Record::default()
        };
        let bytes = encode_all(std::slice::from_ref(&r));
        assert_eq!(&bytes[2..], &options);
        let back = decode_records(&bytes, 1).unwrap();
        assert_eq!(back[0].options, options);
        assert_eq!(back[0].options_u32(), u32::from_ne_bytes(options));
    }
}

#[test]
fn names_of_256_bytes_are_rejected() {
    for r in [
        Record {
            namespace: name(256, 0),
            ..Record::default()
        },
        Record {
            interface: name(256, 0),
            ..Record::default()
        },
    ] {
        let mut out = Vec::new();
        let err = encode_record(&r, &mut out).unwrap_err();
        assert!(
            matches!(err, WireError::NameTooLong { len: 256, .. }),
            "{err:?}"
        );
        assert!(out.is_empty());
        assert!(err.to_string().contains("256"), "{err}");
    }
}

#[test]
fn batch_sizes() {
    let sizes = |n: usize| batch_ranges(n).map(|r| r.len()).collect::<Vec<_>>();
    assert_eq!(MAX_FDS_PER_BATCH, 252);
    assert_eq!(sizes(0), Vec::<usize>::new());
    assert_eq!(sizes(1), vec![1]);
    assert_eq!(sizes(252), vec![252]);
    assert_eq!(sizes(253), vec![252, 1]);
    assert_eq!(sizes(505), vec![252, 252, 1]);
}

#[test]
fn batch_ranges_cover_every_index_once_in_order() {
    for total in [1, 251, 252, 253, 504, 505, 1000] {
        let flat: Vec<usize> = batch_ranges(total).flatten().collect();
        assert_eq!(flat, (0..total).collect::<Vec<_>>());
    }
}

#[test]
fn every_truncation_is_an_error() {
    let records = sample_records();
    let bytes = encode_all(&records);
    for cut in 0..bytes.len() {
        let result = decode_records(&bytes[..cut], records.len());
        assert!(
            matches!(result, Err(WireError::Truncated { .. })),
            "cut at {cut}: {result:?}"
        );
    }
}

#[test]
fn truncation_error_names_record_and_offset() {
    let records = sample_records();
    let bytes = encode_all(&records);
    let first_len = encode_all(&records[..1]).len();
    match decode_records(&bytes[..first_len + 1], 2) {
        Err(WireError::Truncated { record, offset, .. }) => {
            assert_eq!(record, 1);
            assert_eq!(offset, first_len + 1);
        }
        other => panic!("expected truncation in record 1, got {other:?}"),
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    let records = sample_records();
    let mut bytes = encode_all(&records);
    bytes.push(0);
    let err = decode_records(&bytes, records.len()).unwrap_err();
    assert!(
        matches!(err, WireError::TrailingBytes { extra: 1, .. }),
        "{err:?}"
    );
}

#[test]
fn count_mismatch_is_an_error() {
    let records = sample_records();
    let bytes = encode_all(&records);
    assert!(decode_records(&bytes, records.len() - 1).is_err());
    assert!(decode_records(&bytes, records.len() + 1).is_err());
    assert!(decode_records(&bytes, 0).is_err());
    assert!(decode_records(&[], 1).is_err());
    assert_eq!(decode_records(&[], 0).unwrap(), vec![]);
}

#[test]
fn absurd_count_does_not_allocate_or_panic() {
    let bytes = encode_all(&sample_records());
    assert!(decode_records(&bytes, usize::MAX).is_err());
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A cheap deterministic generator: every outcome must be Ok or Err, never a panic.
    let mut state = 0x2545_f491_u32;
    for _ in 0..2000 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let len = (state % 64) as usize;
        let bytes: Vec<u8> = (0..len).map(|i| (state >> (i % 24)) as u8).collect();
        for count in 0..4 {
            let _ = decode_records(&bytes, count);
        }
    }
}
