//! The `_getsocks` metadata records and batch layout, as haproxy 1.8 – 3.x speaks them.
//!
//! Pure: no syscalls. See `docs/getsocks-protocol.md` for the conversation around these bytes.

use std::fmt;
use std::ops::Range;

/// Fds we put in one `sendmsg`. haproxy lowered this from 253 in 2.6 because musl fails at 253.
pub const MAX_FDS_PER_BATCH: usize = 252;

/// Fds we accept in one `recvmsg`: servers before 2.6 send batches of 253 (the kernel's SCM_MAX_FD).
pub const MAX_FDS_ACCEPTED_PER_MESSAGE: usize = 253;

/// Largest encoded record: two length-prefixed names of up to 255 bytes, then 4 option bytes.
pub const MAX_RECORD_LEN: usize = 1 + 255 + 1 + 255 + 4;

const MIN_RECORD_LEN: usize = 1 + 1 + 4;
const MAX_NAME_LEN: usize = u8::MAX as usize;

/// The metadata haproxy sends along with each fd.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// Network namespace name; empty when none.
    pub namespace: Vec<u8>,
    /// `interface` bind option; empty when none.
    pub interface: Vec<u8>,
    /// Listener flags of 1.8 – 2.2 senders, zero from 2.3. Kept as raw bytes so that they are
    /// forwarded to the next client exactly as the sender wrote them.
    pub options: [u8; 4],
}

impl Record {
    /// The options as the sender's C `int` (host byte order).
    pub fn options_u32(&self) -> u32 {
        u32::from_ne_bytes(self.options)
    }
}

/// Which field of a record an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    NamespaceLength,
    Namespace,
    InterfaceLength,
    Interface,
    Options,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::NamespaceLength => "namespace length",
            Field::Namespace => "namespace name",
            Field::InterfaceLength => "interface length",
            Field::Interface => "interface name",
            Field::Options => "options",
        })
    }
}

#[derive(Debug)]
pub enum WireError {
    /// A name does not fit the one-byte length prefix.
    NameTooLong { field: Field, len: usize },
    /// The data ended inside record `record`, while reading `field` at byte `offset`.
    Truncated {
        record: usize,
        field: Field,
        offset: usize,
        needed: usize,
        available: usize,
    },
    /// All `records` records were decoded but bytes remain from `offset` on.
    TrailingBytes {
        records: usize,
        offset: usize,
        extra: usize,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::NameTooLong { field, len } => write!(
                f,
                "{field} is {len} bytes long, the _getsocks record allows at most {MAX_NAME_LEN}; \
                 shorten the name in the haproxy configuration"
            ),
            WireError::Truncated {
                record,
                field,
                offset,
                needed,
                available,
            } => write!(
                f,
                "socket metadata ends inside record {record} ({field} at byte {offset} needs \
                 {needed} bytes, {available} left): the sender sent fewer records than fds or \
                 speaks another protocol version"
            ),
            WireError::TrailingBytes {
                records,
                offset,
                extra,
            } => write!(
                f,
                "{extra} unexpected bytes after the {records} records, from byte {offset}: the \
                 sender sent more metadata than fds or speaks another protocol version"
            ),
        }
    }
}

impl std::error::Error for WireError {}

/// Appends the wire form of `r` to `out`. On error `out` is left as it was.
pub fn encode_record(r: &Record, out: &mut Vec<u8>) -> Result<(), WireError> {
    let ns_len = name_len(&r.namespace, Field::Namespace)?;
    let if_len = name_len(&r.interface, Field::Interface)?;
    out.reserve(MIN_RECORD_LEN + r.namespace.len() + r.interface.len());
    out.push(ns_len);
    out.extend_from_slice(&r.namespace);
    out.push(if_len);
    out.extend_from_slice(&r.interface);
    out.extend_from_slice(&r.options);
    Ok(())
}

fn name_len(name: &[u8], field: Field) -> Result<u8, WireError> {
    u8::try_from(name.len()).map_err(|_| WireError::NameTooLong {
        field,
        len: name.len(),
    })
}

/// Decodes exactly `count` records that together make up all of `buf`.
pub fn decode_records(buf: &[u8], count: usize) -> Result<Vec<Record>, WireError> {
    // `count` comes from the peer: never let it size an allocation beyond what `buf` can hold.
    let mut records = Vec::with_capacity(count.min(buf.len() / MIN_RECORD_LEN));
    let mut cursor = Cursor { buf, offset: 0 };
    for index in 0..count {
        records.push(cursor.record(index)?);
    }
    if cursor.offset != buf.len() {
        return Err(WireError::TrailingBytes {
            records: count,
            offset: cursor.offset,
            extra: buf.len() - cursor.offset,
        });
    }
    Ok(records)
}

/// How many complete records the front of `buf` holds, and how many bytes they span.
///
/// A receiver needs this because the kernel may split one large batch into several reads: the
/// fds arrive with the first part and the rest of the records follow without fds.
pub fn complete_prefix(buf: &[u8]) -> (usize, usize) {
    let mut cursor = Cursor { buf, offset: 0 };
    let mut records = 0;
    loop {
        let start = cursor.offset;
        if cursor.record(records).is_err() {
            return (records, start);
        }
        records += 1;
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    offset: usize,
}

impl<'a> Cursor<'a> {
    fn record(&mut self, index: usize) -> Result<Record, WireError> {
        let ns_len = self.take(index, Field::NamespaceLength, 1)?[0];
        let namespace = self.take(index, Field::Namespace, ns_len.into())?.to_vec();
        let if_len = self.take(index, Field::InterfaceLength, 1)?[0];
        let interface = self.take(index, Field::Interface, if_len.into())?.to_vec();
        let mut options = [0u8; 4];
        options.copy_from_slice(self.take(index, Field::Options, 4)?);
        Ok(Record {
            namespace,
            interface,
            options,
        })
    }

    fn take(&mut self, record: usize, field: Field, needed: usize) -> Result<&'a [u8], WireError> {
        let available = self.buf.len() - self.offset;
        if needed > available {
            return Err(WireError::Truncated {
                record,
                field,
                offset: self.offset,
                needed,
                available,
            });
        }
        let bytes = &self.buf[self.offset..self.offset + needed];
        self.offset += needed;
        Ok(bytes)
    }
}

/// Index ranges of the batches that `total` fds are sent in, each at most [`MAX_FDS_PER_BATCH`].
pub fn batch_ranges(total: usize) -> impl Iterator<Item = Range<usize>> {
    (0..total)
        .step_by(MAX_FDS_PER_BATCH)
        .map(move |start| start..total.min(start + MAX_FDS_PER_BATCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_record_is_six_bytes() {
        let mut out = Vec::new();
        encode_record(&Record::default(), &mut out).unwrap();
        assert_eq!(out, [0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn failed_encode_leaves_output_untouched() {
        let mut out = vec![7];
        let r = Record {
            interface: vec![b'x'; 256],
            ..Record::default()
        };
        assert!(encode_record(&r, &mut out).is_err());
        assert_eq!(out, [7]);
    }
}
