//! The messages between the master and its preload library in a haproxy 1.5 – 1.7 worker.
//!
//! Pure: no syscalls. The library's side is `shim.c`; both must agree on what follows.
//!
//! Channel: one `socketpair(AF_UNIX, SOCK_SEQPACKET)` per worker. The worker's end is at the fd
//! named by `HAPMASTER_PRELOAD_FD` (with `LD_PRELOAD=<the library>`). Both survive an exec (a
//! wrapper script that execs haproxy says HELLO too); the image that binds the first listener
//! sets CLOEXEC on the fd and removes both variables from its environment. Every message is one datagram of exactly
//! [`MSG_LEN`] = 176 bytes, integers in host byte order (both ends run on one machine):
//!
//! | offset | size | field                                                                  |
//! |--------|------|------------------------------------------------------------------------|
//! | 0      | 4    | version, [`VERSION`] = 1                                                |
//! | 4      | 4    | kind: 1 HELLO, 2 ADOPT, 3 NEW (worker → master); 4 FD, 5 NONE, 6 END    |
//! | 8      | 4    | pid of the sending worker (0 from the master)                           |
//! | 12     | 4    | addr_len: bytes of `addr` used, at most 128                             |
//! | 16     | 128  | addr: the `struct sockaddr` as passed to bind(2), zero-padded           |
//! | 144    | 16   | iface: SO_BINDTODEVICE name, NUL-terminated and NUL-padded              |
//! | 160    | 4    | flags: bit 0 IPV6_V6ONLY, bit 1 transparent (IP(V6)_TRANSPARENT or FREEBIND) |
//! | 164    | 4    | reserved, 0                                                             |
//! | 168    | 8    | netns: inode of the socket's network namespace (SIOCGSKNS), 0 if unknown |
//!
//! - HELLO (worker, at load): pid; every other field 0. Proves the library runs in the worker.
//! - ADOPT (worker, in bind(2) of a listener: a stream socket, inet/inet6 at a non-zero port or
//!   unix): the socket's keys. The worker then waits for one answer:
//!   - FD + SCM_RIGHTS(one fd): the held socket to put at the worker's fd instead of binding;
//!   - NONE: the master holds nothing for it, bind for real;
//!   - END: as below, bind for real.
//! - NEW + SCM_RIGHTS(the socket) (worker, after a successful listen(2) of such a socket): its keys.
//!   Sent for adopted sockets too; the master recognises those by inode. No answer.
//! - END (master, when the worker is ready): startup is over; later binds (`source` of outgoing
//!   connections) are the worker's own and are not asked about. A process forked after the
//!   HELLO (haproxy `-D`, nbproc) takes its startup as over too: haproxy binds before it forks.
//!
//! Answers carry only version and kind (the rest 0). The library fails a bind with EADDRINUSE
//! when the channel fails before END (closed, 10 s without an answer, a malformed message).

use std::fmt;

pub const VERSION: u32 = 1;
pub const MSG_LEN: usize = 176;
/// Room for `struct sockaddr_storage`.
pub const ADDR_MAX: usize = 128;
/// `IFNAMSIZ`, the terminating NUL included.
pub const IFACE_LEN: usize = 16;
pub const FLAG_V6ONLY: u32 = 1;
pub const FLAG_TRANSPARENT: u32 = 2;
const KNOWN_FLAGS: u32 = FLAG_V6ONLY | FLAG_TRANSPARENT;

const ADDR_AT: usize = 16;
const IFACE_AT: usize = ADDR_AT + ADDR_MAX;
const FLAGS_AT: usize = IFACE_AT + IFACE_LEN;
const RESERVED_AT: usize = FLAGS_AT + 4;
const NETNS_AT: usize = RESERVED_AT + 4;
const _: () = assert!(NETNS_AT + 8 == MSG_LEN);

/// What a bind or listen is about: the socket's keys as the worker saw them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    pub pid: u32,
    /// The raw `struct sockaddr`, at most [`ADDR_MAX`] bytes.
    pub addr: Vec<u8>,
    /// The interface name, without NULs, at most 15 bytes.
    pub iface: Vec<u8>,
    pub flags: u32,
    pub netns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Hello {
        pid: u32,
    },
    Adopt(Bind),
    /// Comes with the socket (SCM_RIGHTS).
    New(Bind),
    /// Comes with the held socket (SCM_RIGHTS).
    Fd,
    None,
    End,
}

impl Message {
    fn kind(&self) -> u32 {
        match self {
            Message::Hello { .. } => 1,
            Message::Adopt(_) => 2,
            Message::New(_) => 3,
            Message::Fd => 4,
            Message::None => 5,
            Message::End => 6,
        }
    }

    /// Whether the message travels with exactly one fd (and every other kind with none).
    pub fn carries_fd(&self) -> bool {
        matches!(self, Message::New(_) | Message::Fd)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    Length(usize),
    Version(u32),
    Kind(u32),
    AddrLen(u32),
    /// The interface name has no NUL in its 16 bytes, or bytes after its NUL.
    Iface,
    Flags(u32),
    /// A field this kind does not use is not zero (named by its offset).
    NonZero(usize),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = "the worker's preload library is not the one this master wrote";
        match self {
            WireError::Length(n) => write!(f, "message of {n} bytes, not {MSG_LEN}: {why}"),
            WireError::Version(v) => write!(f, "protocol version {v}, not {VERSION}: {why}"),
            WireError::Kind(k) => write!(f, "unknown message kind {k}: {why}"),
            WireError::AddrLen(n) => write!(f, "address of {n} bytes, at most {ADDR_MAX}"),
            WireError::Iface => write!(f, "interface name not NUL-terminated and NUL-padded"),
            WireError::Flags(x) => write!(f, "unknown flags {x:#x}: {why}"),
            WireError::NonZero(at) => write!(f, "unused field at byte {at} is not zero: {why}"),
        }
    }
}

impl std::error::Error for WireError {}

/// The message's 176 bytes. An address longer than [`ADDR_MAX`] or an interface name longer
/// than 15 bytes is cut (the library never sends such; a test may).
pub fn encode(m: &Message) -> [u8; MSG_LEN] {
    let mut out = [0u8; MSG_LEN];
    out[0..4].copy_from_slice(&VERSION.to_ne_bytes());
    out[4..8].copy_from_slice(&m.kind().to_ne_bytes());
    let bind = match m {
        Message::Hello { pid } => {
            out[8..12].copy_from_slice(&pid.to_ne_bytes());
            return out;
        }
        Message::Adopt(b) | Message::New(b) => b,
        Message::Fd | Message::None | Message::End => return out,
    };
    out[8..12].copy_from_slice(&bind.pid.to_ne_bytes());
    let addr = &bind.addr[..bind.addr.len().min(ADDR_MAX)];
    out[12..16].copy_from_slice(&(addr.len() as u32).to_ne_bytes());
    out[ADDR_AT..ADDR_AT + addr.len()].copy_from_slice(addr);
    let iface = &bind.iface[..bind.iface.len().min(IFACE_LEN - 1)];
    out[IFACE_AT..IFACE_AT + iface.len()].copy_from_slice(iface);
    out[FLAGS_AT..FLAGS_AT + 4].copy_from_slice(&bind.flags.to_ne_bytes());
    out[NETNS_AT..].copy_from_slice(&bind.netns.to_ne_bytes());
    out
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

/// Decodes one datagram; anything but a well-formed message of this version is an error.
pub fn decode(buf: &[u8]) -> Result<Message, WireError> {
    if buf.len() != MSG_LEN {
        return Err(WireError::Length(buf.len()));
    }
    let version = u32_at(buf, 0);
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let kind = u32_at(buf, 4);
    let pid = u32_at(buf, 8);
    let zero_from = |at: usize| match buf[at..].iter().position(|&b| b != 0) {
        Some(i) => Err(WireError::NonZero(at + i)),
        None => Ok(()),
    };
    let message = match kind {
        1 => {
            zero_from(12)?;
            Message::Hello { pid }
        }
        2 => Message::Adopt(decode_bind(buf, pid)?),
        3 => Message::New(decode_bind(buf, pid)?),
        4..=6 => {
            zero_from(8)?;
            match kind {
                4 => Message::Fd,
                5 => Message::None,
                _ => Message::End,
            }
        }
        other => return Err(WireError::Kind(other)),
    };
    Ok(message)
}

fn decode_bind(buf: &[u8], pid: u32) -> Result<Bind, WireError> {
    let addr_len = u32_at(buf, 12);
    let len = usize::try_from(addr_len)
        .ok()
        .filter(|&n| n <= ADDR_MAX)
        .ok_or(WireError::AddrLen(addr_len))?;
    if let Some(i) = buf[ADDR_AT + len..IFACE_AT].iter().position(|&b| b != 0) {
        return Err(WireError::NonZero(ADDR_AT + len + i));
    }
    let iface = &buf[IFACE_AT..FLAGS_AT];
    let name_len = iface.iter().position(|&b| b == 0).ok_or(WireError::Iface)?;
    if iface[name_len..].iter().any(|&b| b != 0) {
        return Err(WireError::Iface);
    }
    let flags = u32_at(buf, FLAGS_AT);
    if flags & !KNOWN_FLAGS != 0 {
        return Err(WireError::Flags(flags));
    }
    if u32_at(buf, RESERVED_AT) != 0 {
        return Err(WireError::NonZero(RESERVED_AT));
    }
    Ok(Bind {
        pid,
        addr: buf[ADDR_AT..ADDR_AT + len].to_vec(),
        iface: iface[..name_len].to_vec(),
        flags,
        netns: u64::from_ne_bytes(buf[NETNS_AT..].try_into().expect("8 bytes")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_layout() {
        let bytes = encode(&Message::Hello { pid: 0x01020304 });
        assert_eq!(&bytes[0..4], &1u32.to_ne_bytes());
        assert_eq!(&bytes[4..8], &1u32.to_ne_bytes());
        assert_eq!(&bytes[8..12], &0x01020304u32.to_ne_bytes());
        assert!(bytes[12..].iter().all(|&b| b == 0));
        assert_eq!(decode(&bytes), Ok(Message::Hello { pid: 0x01020304 }));
    }

    #[test]
    fn an_answer_with_a_stray_byte_is_refused() {
        let mut bytes = encode(&Message::Fd);
        bytes[100] = 1;
        assert_eq!(decode(&bytes), Err(WireError::NonZero(100)));
    }
}
