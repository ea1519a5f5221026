//! Fuzzes the `_getsocks` metadata decoder with what a peer controls: the bytes, and the number of
//! records it claims (the number of fds that came with them).
#![no_main]

use hapmaster::handoff::wire::{complete_prefix, decode_records, encode_record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first two bytes are the claimed record count, the rest is the metadata.
    let Some((count, buf)) = data.split_first_chunk::<2>() else {
        return;
    };
    let count = usize::from(u16::from_le_bytes(*count));

    if let Ok(records) = decode_records(buf, count) {
        assert_eq!(records.len(), count);
        // A successful decode is the only one: the records encode back to exactly these bytes.
        let mut out = Vec::with_capacity(buf.len());
        for r in &records {
            encode_record(r, &mut out).expect("decoded names fit the length byte");
        }
        assert_eq!(out, buf);
    }

    // A count no buffer can hold must fail without allocating for it.
    assert!(decode_records(buf, usize::MAX).is_err());

    // The complete prefix is what a receiver keeps when a batch arrives in several reads.
    let (n, len) = complete_prefix(buf);
    assert!(len <= buf.len());
    let prefix = decode_records(&buf[..len], n).expect("the complete prefix decodes");
    assert_eq!(prefix.len(), n);
    if len < buf.len() {
        assert!(decode_records(&buf[len..], 1).is_err());
    }
});
