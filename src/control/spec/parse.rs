//! Parsing a `-S` argument into a [`ControlSpec`]: the path, the mode, the owner (names resolved
//! at once, so that a typo fails at startup).

use std::io;
use std::path::PathBuf;

use nix::unistd::{Group, User};

use super::{ControlSpec, SpecError};
use crate::control::levels::Level;

/// Parses one `-S` argument:
/// `<path>[,mode,<octal>][,uid,<n>][,gid,<n>][,user,<name>][,group,<name>][,level,<level>]`.
///
/// The path may carry haproxy's `unix@` prefix. User and group names are resolved now, so a typo
/// fails at startup rather than at bind time.
pub fn parse_spec(arg: &str) -> Result<ControlSpec, SpecError> {
    parse_spec_with(arg, lookup_user, lookup_group)
}

type Lookup = fn(&str) -> Result<Option<u32>, io::Error>;

fn lookup_user(name: &str) -> Result<Option<u32>, io::Error> {
    User::from_name(name)
        .map(|u| u.map(|u| u.uid.as_raw()))
        .map_err(io::Error::from)
}

fn lookup_group(name: &str) -> Result<Option<u32>, io::Error> {
    Group::from_name(name)
        .map(|g| g.map(|g| g.gid.as_raw()))
        .map_err(io::Error::from)
}

fn parse_spec_with(arg: &str, user: Lookup, group: Lookup) -> Result<ControlSpec, SpecError> {
    let mut parts = arg.split(',');
    let address = parts.next().unwrap_or_default().trim();
    let mut spec = ControlSpec::new(parse_address(address)?);
    // Which key set mode, uid and gid, to refuse a second setting.
    let mut set_by: [Option<&str>; 4] = [None; 4];
    while let Some(key) = parts.next() {
        let value = parts.next().ok_or_else(|| SpecError::MissingValue {
            key: key.to_string(),
        })?;
        let slot = match key {
            "mode" => 0,
            "uid" | "user" => 1,
            "gid" | "group" => 2,
            "level" => 3,
            _ => {
                return Err(SpecError::UnknownKey {
                    key: key.to_string(),
                })
            }
        };
        if let Some(earlier) = set_by[slot] {
            return Err(SpecError::Duplicate {
                key: key.to_string(),
                earlier: earlier.to_string(),
            });
        }
        set_by[slot] = Some(key);
        match key {
            "mode" => spec.mode = parse_mode(value)?,
            "uid" | "gid" => {
                let id = value.parse::<u32>().map_err(|_| SpecError::BadId {
                    key: key.to_string(),
                    value: value.to_string(),
                })?;
                if key == "uid" {
                    spec.uid = Some(id);
                } else {
                    spec.gid = Some(id);
                }
            }
            "level" => spec.level = parse_level(value)?,
            "user" => spec.uid = Some(resolve(key, value, user)?),
            _ => spec.gid = Some(resolve(key, value, group)?),
        }
    }
    Ok(spec)
}

fn parse_level(value: &str) -> Result<Level, SpecError> {
    Level::parse(value).ok_or_else(|| SpecError::BadLevel {
        value: value.to_string(),
    })
}

/// The `level` of any `-S` argument (a path's or an `fd@<n>`'s): admin unless `,level,<level>`
/// says otherwise.
pub fn level_of(arg: &str) -> Result<Level, SpecError> {
    let mut parts = arg.split(',').skip(1);
    let mut level = Level::Admin;
    while let (Some(key), value) = (parts.next(), parts.next()) {
        if key == "level" {
            level = parse_level(value.unwrap_or_default())?;
        }
    }
    Ok(level)
}

fn parse_address(address: &str) -> Result<PathBuf, SpecError> {
    if address.is_empty() {
        return Err(SpecError::Empty);
    }
    if address.starts_with("abns@") {
        return Err(SpecError::AbstractSocket {
            arg: address.to_string(),
        });
    }
    let path = address.strip_prefix("unix@").unwrap_or(address);
    if path.starts_with('/') {
        return Ok(PathBuf::from(path));
    }
    let network_prefixes = [
        "ipv4@",
        "ipv6@",
        "tcp@",
        "tcp4@",
        "tcp6@",
        "udp@",
        "udp4@",
        "udp6@",
        "quic4@",
        "quic6@",
        "sockpair@",
    ];
    if network_prefixes.iter().any(|p| address.starts_with(p)) || address.contains(':') {
        return Err(SpecError::NetworkAddress {
            arg: address.to_string(),
        });
    }
    Err(SpecError::RelativePath {
        path: path.to_string(),
    })
}

fn parse_mode(value: &str) -> Result<u32, SpecError> {
    let bad = || SpecError::BadMode {
        value: value.to_string(),
    };
    if value.is_empty() || !value.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(bad());
    }
    match u32::from_str_radix(value, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(bad()),
    }
}

fn resolve(key: &str, name: &str, lookup: Lookup) -> Result<u32, SpecError> {
    match lookup(name) {
        Ok(Some(id)) => Ok(id),
        Ok(None) if key == "user" => Err(SpecError::UnknownUser {
            name: name.to_string(),
        }),
        Ok(None) => Err(SpecError::UnknownGroup {
            name: name.to_string(),
        }),
        Err(source) => Err(SpecError::Lookup {
            key: key.to_string(),
            name: name.to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn no_lookup(_: &str) -> Result<Option<u32>, io::Error> {
        Ok(None)
    }

    fn fake_lookup(name: &str) -> Result<Option<u32>, io::Error> {
        match name {
            "haproxy" => Ok(Some(108)),
            "broken" => Err(io::Error::other("nss down")),
            _ => Ok(None),
        }
    }

    fn parse(arg: &str) -> Result<ControlSpec, SpecError> {
        parse_spec_with(arg, fake_lookup, fake_lookup)
    }

    #[test]
    fn plain_and_prefixed_paths() {
        assert_eq!(
            parse("/run/m.sock").unwrap(),
            ControlSpec::new("/run/m.sock".into())
        );
        assert_eq!(
            parse("unix@/run/m.sock").unwrap().path,
            Path::new("/run/m.sock")
        );
        assert_eq!(parse("/run/m.sock").unwrap().mode, 0o600);
    }

    #[test]
    fn all_options() {
        let s = parse("/run/m.sock,mode,660,uid,0,gid,108").unwrap();
        assert_eq!(
            s,
            ControlSpec {
                path: "/run/m.sock".into(),
                mode: 0o660,
                uid: Some(0),
                gid: Some(108),
                level: Level::Admin,
            }
        );
        let s = parse("/run/m.sock,level,operator,mode,660").unwrap();
        assert_eq!((s.level, s.mode), (Level::Operator, 0o660));
        assert_eq!(level_of("/x,mode,600,level,user").unwrap(), Level::User);
        assert_eq!(level_of("fd@3").unwrap(), Level::Admin);
        assert!(matches!(
            parse("/x,level,root"),
            Err(SpecError::BadLevel { .. })
        ));
        assert!(matches!(
            parse("/x,level,user,level,admin"),
            Err(SpecError::Duplicate { .. })
        ));
        let s = parse("/run/m.sock,user,haproxy,group,haproxy").unwrap();
        assert_eq!((s.uid, s.gid), (Some(108), Some(108)));
        assert_eq!(parse("/x,mode,0").unwrap().mode, 0);
        assert_eq!(parse("/x,mode,0777").unwrap().mode, 0o777);
    }

    #[test]
    fn real_name_lookup() {
        let s = parse_spec("/run/m.sock,user,root,group,root").unwrap();
        assert_eq!((s.uid, s.gid), (Some(0), Some(0)));
        let e = parse_spec("/run/m.sock,user,no-such-user-hm").unwrap_err();
        assert!(matches!(e, SpecError::UnknownUser { .. }), "{e}");
        assert!(e.to_string().contains("no-such-user-hm"), "{e}");
    }

    #[test]
    fn errors_name_the_offending_part() {
        let cases: &[(&str, &str)] = &[
            ("", "needs a socket path"),
            ("127.0.0.1:9999", "127.0.0.1:9999: only unix sockets"),
            ("ipv4@127.0.0.1:9999", "ipv4@127.0.0.1:9999: only unix"),
            ("ipv6@::1:9999", "only unix sockets"),
            (":9999", "only unix sockets"),
            ("abns@master", "abstract"),
            ("run/m.sock", "run/m.sock: the socket path must be absolute"),
            ("unix@m.sock", "m.sock: the socket path must be absolute"),
            ("/x,mode", "'mode' has no value"),
            ("/x,mode,600,uid", "'uid' has no value"),
            ("/x,level,root", "level 'root' is not a level"),
            ("/x,colour,red", "'colour' is not supported"),
            ("/x,mode,9", "mode '9'"),
            ("/x,mode,", "mode ''"),
            ("/x,mode,1000", "mode '1000'"),
            ("/x,mode,-1", "mode '-1'"),
            ("/x,mode,0x1ff", "mode '0x1ff'"),
            (
                "/x,uid,abc",
                "uid 'abc' is not a number; use uid,<number> or user,<name>",
            ),
            (
                "/x,gid,-5",
                "gid '-5' is not a number; use gid,<number> or group,<name>",
            ),
            ("/x,user,nobody-here", "user 'nobody-here': no such user"),
            ("/x,group,nobody-here", "group 'nobody-here': no such group"),
            (
                "/x,user,broken",
                "user 'broken': cannot look it up: nss down",
            ),
            (
                "/x,uid,1,user,haproxy",
                "'user' sets what 'uid' already set",
            ),
            (
                "/x,mode,600,mode,644",
                "'mode' sets what 'mode' already set",
            ),
        ];
        for (arg, want) in cases {
            let msg = match parse(arg) {
                Ok(s) => panic!("{arg:?} parsed as {s:?}"),
                Err(e) => e.to_string(),
            };
            assert!(msg.contains(want), "{arg:?}: {msg:?} lacks {want:?}");
        }
        assert!(parse_spec_with("/x,user,a", no_lookup, no_lookup).is_err());
    }
}
