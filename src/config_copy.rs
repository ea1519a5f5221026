//! Copies of the configuration files a worker is started with.
//!
//! haproxy reads its `-f` files once, when it starts. If a worker dies, a replacement that reads
//! the files on disk runs whatever they say *now*, which may be an edit nobody reloaded yet, or
//! the broken config a reload just refused; then every replacement fails, and the connections
//! queued on the held sockets wait for nothing. So the master copies the files into its runtime
//! directory as each worker starts, and a replacement starts from the copy of the last worker
//! that became ready (`supervisor::last_good`). This module finds the files haproxy reads, in its
//! order, and copies them; it decides nothing.
//!
//! Only the `-f` files are copied: files they name (certificates, maps, Lua, error pages) are
//! read from disk by every worker, as before.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::pidfile::write_atomic;

/// How much the master copies for one worker. Copying runs in the master's loop, so it is
/// bounded: no configuration a person maintains comes near these, and beyond them replacements
/// read the files on disk (as they did before copies existed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_files: usize,
    pub max_bytes: u64,
}

pub const LIMITS: Limits = Limits {
    max_files: 1000,
    max_bytes: 16 << 20,
};

/// Bytes of a source file's name kept in its copy's name, after the index: well within NAME_MAX
/// (255) for any file name haproxy accepts.
const MAX_NAME: usize = 200;

#[derive(Debug)]
pub enum CopyError {
    /// stat or readdir of a `-f` argument failed (haproxy fails the same way).
    Inspect {
        path: PathBuf,
        source: io::Error,
    },
    Read {
        path: PathBuf,
        source: io::Error,
    },
    /// A pipe, socket or device: it cannot be read a second time for a copy.
    NotRegular {
        path: PathBuf,
    },
    TooMany {
        max: usize,
    },
    TooLarge {
        path: PathBuf,
        max: u64,
    },
    CreateDir {
        path: PathBuf,
        source: io::Error,
    },
    Write {
        path: PathBuf,
        source: io::Error,
    },
}

impl fmt::Display for CopyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use CopyError::*;
        match self {
            Inspect { path, source } => write!(
                f,
                "cannot inspect configuration path {}: {source}",
                path.display()
            ),
            Read { path, source } => write!(
                f,
                "cannot read configuration file {}: {source}",
                path.display()
            ),
            NotRegular { path } => write!(
                f,
                "configuration file {} is not a regular file (a pipe or a device cannot be \
                 read a second time)",
                path.display()
            ),
            TooMany { max } => write!(
                f,
                "the -f arguments name more than {max} configuration files, more than \
                 hapmaster copies"
            ),
            TooLarge { path, max } => write!(
                f,
                "the configuration files reach {} MiB at {}, more than hapmaster copies",
                max >> 20,
                path.display()
            ),
            CreateDir { path, source } => write!(
                f,
                "cannot create {}: {source} (is the runtime directory full or read-only? see \
                 --runtime-dir)",
                path.display()
            ),
            Write { path, source } => write!(
                f,
                "cannot write {}: {source} (is the runtime directory full? see --runtime-dir)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for CopyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        use CopyError::*;
        match self {
            Inspect { source, .. }
            | Read { source, .. }
            | CreateDir { source, .. }
            | Write { source, .. } => Some(source),
            NotRegular { .. } | TooMany { .. } | TooLarge { .. } => None,
        }
    }
}

/// What `take` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The copies, one per source, in the same order.
    Copied(Vec<PathBuf>),
    /// Nothing kept: `file` says `text` (at `line`), so relative paths in it resolve against its
    /// own directory, which a copy elsewhere would change.
    DefaultPath {
        file: PathBuf,
        line: usize,
        text: String,
    },
}

/// The files haproxy reads for these `-f` arguments, in the order it reads them
/// (`cfgfiles_expand_directories()` in haproxy's src/haproxy.c, 2.x): a file is read as given
/// (whatever its name); a directory stands for its entries whose name does not start with '.'
/// and whose first ".cfg" ends it, that are regular files once symlinks are followed, sorted by
/// scandir's `alphasort`. haproxy never calls setlocale, so that is strcmp's byte order.
///
/// A relative argument is resolved against `change_dir` (`-C`), which haproxy changes to before
/// it opens the files; what is still relative after that (no `-C`, or a relative one) resolves
/// against our working directory, which the worker inherits.
pub fn expand(
    args: &[OsString],
    change_dir: Option<&Path>,
    limits: Limits,
) -> Result<Vec<PathBuf>, CopyError> {
    let mut files = Vec::new();
    for arg in args {
        let path = match change_dir {
            Some(dir) => dir.join(arg),
            None => PathBuf::from(arg),
        };
        let inspect = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CopyError::Inspect { path, source }
        };
        let meta = fs::metadata(&path).map_err(inspect(&path))?;
        if !meta.is_dir() {
            files.push(path);
        } else {
            let mut names: Vec<OsString> = fs::read_dir(&path)
                .map_err(inspect(&path))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(inspect(&path))?;
            names.retain(|n| is_config_name(n.as_bytes()));
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for name in names {
                let file = path.join(&name);
                // haproxy stops on an entry it cannot stat (a dangling symlink), and so do we.
                if fs::metadata(&file).map_err(inspect(&file))?.is_file() {
                    files.push(file);
                }
                if files.len() > limits.max_files {
                    return Err(CopyError::TooMany {
                        max: limits.max_files,
                    });
                }
            }
        }
        if files.len() > limits.max_files {
            return Err(CopyError::TooMany {
                max: limits.max_files,
            });
        }
    }
    Ok(files)
}

/// haproxy's test for a directory entry: not hidden, and its *first* ".cfg" is at the end (so
/// `a.cfg.cfg` is skipped, as `strstr` finds the first one).
fn is_config_name(name: &[u8]) -> bool {
    if name.first() == Some(&b'.') {
        return false;
    }
    name.windows(4)
        .position(|w| w == b".cfg")
        .is_some_and(|i| i + 4 == name.len())
}

/// Copies `sources` into the new directory `dest` (mode 0700), each file mode 0600 (configs
/// hold secrets) under `<index>-<its name>`, written then renamed like the master's other files,
/// without fsync: a copy means nothing after a power loss, and an fsync on a busy disk stalls the
/// master's loop for seconds. On any error, and when a file uses `default-path config|parent`,
/// `dest` is removed again.
pub fn take(sources: &[PathBuf], dest: &Path, limits: Limits) -> Result<Outcome, CopyError> {
    if sources.len() > limits.max_files {
        return Err(CopyError::TooMany {
            max: limits.max_files,
        });
    }
    create_dir(dest)?;
    let result = copy_all(sources, dest, limits);
    if !matches!(result, Ok(Outcome::Copied(_))) {
        let _ = fs::remove_dir_all(dest);
    }
    result
}

fn create_dir(dest: &Path) -> Result<(), CopyError> {
    let create = || fs::DirBuilder::new().mode(0o700).create(dest);
    let result = match create() {
        // Only a master that died mid-copy leaves one behind; it is no one's copy.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_dir_all(dest).and_then(|()| create())
        }
        other => other,
    };
    result.map_err(|source| CopyError::CreateDir {
        path: dest.to_path_buf(),
        source,
    })
}

fn copy_all(sources: &[PathBuf], dest: &Path, limits: Limits) -> Result<Outcome, CopyError> {
    let mut budget = limits.max_bytes;
    let mut copies = Vec::with_capacity(sources.len());
    for (index, source) in sources.iter().enumerate() {
        let bytes = read_bounded(source, budget, limits.max_bytes)?;
        budget -= bytes.len() as u64;
        if let Some((line, text)) = default_path_line(&bytes) {
            return Ok(Outcome::DefaultPath {
                file: source.clone(),
                line,
                text,
            });
        }
        let copy = dest.join(copy_name(index, source));
        write_atomic(&copy, &bytes, 0o600).map_err(|source| CopyError::Write {
            path: copy.clone(),
            source,
        })?;
        copies.push(copy);
    }
    Ok(Outcome::Copied(copies))
}

/// The file's bytes, if they fit in `budget`.
pub(crate) fn read_bounded(path: &Path, budget: u64, max: u64) -> Result<Vec<u8>, CopyError> {
    let read_err = |source| CopyError::Read {
        path: path.to_path_buf(),
        source,
    };
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, in the master's
    // loop. It is refused below, never read; on a regular file the flag changes nothing.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(CopyError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    let too_large = || CopyError::TooLarge {
        path: path.to_path_buf(),
        max,
    };
    if meta.len() > budget {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // Bounded again while reading: the file may grow after the fstat.
    file.take(budget + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > budget {
        return Err(too_large());
    }
    Ok(bytes)
}

/// `0003-haproxy.cfg`: the index keeps two sources of the same name apart and makes the names
/// sort in the sources' order. A name that already starts with its index (a copy of a copy, for
/// a replacement) keeps it once.
fn copy_name(index: usize, source: &Path) -> OsString {
    let prefix = format!("{index:04}-");
    let name = source.file_name().map_or(&b"config"[..], OsStr::as_bytes);
    let name = name.strip_prefix(prefix.as_bytes()).unwrap_or(name);
    let mut out = prefix.into_bytes();
    out.extend_from_slice(&name[..name.len().min(MAX_NAME)]);
    OsString::from_vec(out)
}

/// The copies in `dir`, in their order: what `take` wrote there. For a master that takes over
/// its predecessor's copies after an upgrade in place.
pub fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut names: Vec<OsString> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    // A dot file is a temp file of an interrupted write, never a copy.
    names.retain(|n| n.as_bytes().first() != Some(&b'.'));
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// The first `default-path` line (1-based) that makes relative paths depend on where the file
/// is: `config` and `parent` (haproxy 2.2+). `current` is the working directory, which a copy
/// keeps; `origin <dir>` names its directory. Any other mode (a variable, a typo) counts too:
/// when in doubt, replacements read the files on disk, as they always did.
pub fn default_path_line(text: &[u8]) -> Option<(usize, String)> {
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let mut words = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .map(unquote);
        if words.next() != Some(&b"default-path"[..]) {
            continue;
        }
        if matches!(words.next(), Some(b"current" | b"origin")) {
            continue;
        }
        return Some((i + 1, String::from_utf8_lossy(line).trim().to_string()));
    }
    None
}

fn unquote(word: &[u8]) -> &[u8] {
    for q in [b'"', b'\''] {
        if word.len() >= 2 && word[0] == q && word[word.len() - 1] == q {
            return &word[1..word.len() - 1];
        }
    }
    word
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    use crate::test_dir::temp_dir;

    fn names(paths: &[PathBuf]) -> Vec<String> {
        paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn config_names_are_haproxys() {
        for yes in ["a.cfg", "10-x.cfg", "a.b.cfg", "a b.cfg"] {
            assert!(is_config_name(yes.as_bytes()), "{yes}");
        }
        // The last ones: their first ".cfg" is not at the end.
        for no in [
            ".cfg",
            ".hidden.cfg",
            "a.cfg.bak",
            "a.CFG",
            "README",
            "cfg",
            "a.cfg~",
            "a.cfg.cfg",
            "x.cfgx.y.cfg",
        ] {
            assert!(!is_config_name(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn directories_expand_in_haproxys_order() {
        let t = temp_dir("expand");
        let conf = t.path().join("conf.d");
        fs::create_dir(&conf).unwrap();
        for n in [
            "b.cfg",
            "a.cfg",
            "10.cfg",
            "9.cfg",
            "B.cfg",
            "_x.cfg",
            "ü.cfg",
            ".hidden.cfg",
            "a.cfg.cfg",
            "c.cfg.disabled",
            "README",
        ] {
            fs::write(conf.join(n), "").unwrap();
        }
        fs::create_dir(conf.join("sub.cfg")).unwrap();
        std::os::unix::fs::symlink(conf.join("a.cfg"), conf.join("link.cfg")).unwrap();
        let main = t.path().join("main.conf");
        fs::write(&main, "").unwrap();
        let args: Vec<OsString> = vec![main.clone().into(), conf.clone().into()];
        let files = expand(&args, None, LIMITS).unwrap();
        assert_eq!(files[0], main, "a file is read whatever its name");
        // Byte order: digits < upper case < '_' < lower case < UTF-8.
        assert_eq!(
            names(&files[1..]),
            ["10.cfg", "9.cfg", "B.cfg", "_x.cfg", "a.cfg", "b.cfg", "link.cfg", "ü.cfg"]
        );
        assert!(files[1..]
            .iter()
            .all(|f| f.parent() == Some(conf.as_path())));

        // Relative arguments are resolved against -C.
        let rel: Vec<OsString> = vec!["main.conf".into(), "conf.d".into()];
        let files = expand(&rel, Some(t.path()), LIMITS).unwrap();
        assert_eq!(files[0], main);
        assert_eq!(files.len(), 9);

        // A missing argument, and a dangling symlink inside a directory, fail like haproxy.
        let missing: Vec<OsString> = vec![t.path().join("nope.cfg").into()];
        let e = expand(&missing, None, LIMITS).unwrap_err();
        assert!(matches!(e, CopyError::Inspect { .. }), "{e}");
        assert!(e.to_string().contains("nope.cfg"), "{e}");
        std::os::unix::fs::symlink(t.path().join("gone"), conf.join("dangling.cfg")).unwrap();
        let e = expand(&args, None, LIMITS).unwrap_err();
        assert!(e.to_string().contains("dangling.cfg"), "{e}");
    }

    #[test]
    fn copies_keep_order_contents_and_mode() {
        let t = temp_dir("take");
        let a = t.path().join("haproxy.cfg");
        let other = t.path().join("other");
        fs::create_dir(&other).unwrap();
        let b = other.join("haproxy.cfg");
        fs::write(&a, "global\n").unwrap();
        fs::write(&b, "frontend fe\n").unwrap();
        let dest = t.path().join("rt").join("config-7");
        fs::create_dir(t.path().join("rt")).unwrap();
        let out = take(&[a.clone(), b.clone()], &dest, LIMITS).unwrap();
        let Outcome::Copied(copies) = out else {
            panic!("{out:?}")
        };
        assert_eq!(names(&copies), ["0000-haproxy.cfg", "0001-haproxy.cfg"]);
        assert_eq!(fs::read_to_string(&copies[0]).unwrap(), "global\n");
        assert_eq!(fs::read_to_string(&copies[1]).unwrap(), "frontend fe\n");
        for c in &copies {
            assert_eq!(fs::metadata(c).unwrap().mode() & 0o777, 0o600);
        }
        assert_eq!(fs::metadata(&dest).unwrap().mode() & 0o777, 0o700);
        assert_eq!(list(&dest).unwrap(), copies, "listed back in order");

        // A copy of the copy (a replacement's own copy) is the same, in the same order.
        let again = t.path().join("rt").join("config-8");
        let Ok(Outcome::Copied(second)) = take(&copies, &again, LIMITS) else {
            panic!("copy of the copy")
        };
        assert_eq!(names(&second), names(&copies));

        // A leftover directory of the same name is replaced.
        fs::write(dest.join("stale"), "").unwrap();
        take(&[a], &dest, LIMITS).unwrap();
        assert_eq!(names(&list(&dest).unwrap()), ["0000-haproxy.cfg"]);
    }

    #[test]
    fn long_names_are_cut() {
        let long = "x".repeat(250) + ".cfg";
        let name = copy_name(12, Path::new(&format!("/etc/{long}")));
        assert_eq!(name.len(), 5 + MAX_NAME);
        assert!(name.as_bytes().starts_with(b"0012-xxx"));
        assert_eq!(copy_name(0, Path::new("/")), "0000-config");
        assert_eq!(
            copy_name(3, Path::new("/rt/config-2/0003-a.cfg")),
            "0003-a.cfg"
        );
        assert_eq!(
            copy_name(4, Path::new("/etc/0003-a.cfg")),
            "0004-0003-a.cfg"
        );
    }

    #[test]
    fn limits_refuse_and_leave_nothing() {
        let t = temp_dir("limits");
        let a = t.path().join("a.cfg");
        let b = t.path().join("b.cfg");
        fs::write(&a, "x".repeat(600)).unwrap();
        fs::write(&b, "y".repeat(600)).unwrap();
        let small = Limits {
            max_files: 1,
            max_bytes: 1000,
        };
        let dest = t.path().join("config-1");
        let e = take(&[a.clone(), b.clone()], &dest, small).unwrap_err();
        assert!(matches!(e, CopyError::TooMany { max: 1 }), "{e}");
        let two = Limits {
            max_files: 2,
            ..small
        };
        let e = take(&[a.clone(), b.clone()], &dest, two).unwrap_err();
        assert!(
            matches!(&e, CopyError::TooLarge { path, .. } if *path == b),
            "{e}"
        );
        assert!(!dest.exists(), "no partial copy left");
        let conf = t.path().join("conf.d");
        fs::create_dir(&conf).unwrap();
        for n in ["1.cfg", "2.cfg", "3.cfg"] {
            fs::write(conf.join(n), "").unwrap();
        }
        let e = expand(&[conf.into()], None, two).unwrap_err();
        assert!(matches!(e, CopyError::TooMany { max: 2 }), "{e}");
    }

    #[test]
    fn pipes_are_refused_without_blocking() {
        let t = temp_dir("fifo");
        let fifo = t.path().join("fifo.cfg");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let dest = t.path().join("config-1");
        let e = take(&[fifo], &dest, LIMITS).unwrap_err();
        assert!(matches!(e, CopyError::NotRegular { .. }), "{e}");
        assert!(!dest.exists());
        let unreadable = t.path().join("missing.cfg");
        let e = take(&[unreadable], &dest, LIMITS).unwrap_err();
        assert!(
            e.to_string().contains("cannot read configuration file"),
            "{e}"
        );
        assert!(!dest.exists());
    }

    #[test]
    fn default_path_config_and_parent_are_found() {
        assert_eq!(default_path_line(b"global\n    maxconn 10\n"), None);
        assert_eq!(
            default_path_line(b"global\n\tdefault-path config # comment\n"),
            Some((2, "default-path config # comment".to_string()))
        );
        assert_eq!(
            default_path_line(b"global\n  \"default-path\" 'parent'\n").map(|x| x.0),
            Some(2)
        );
        assert_eq!(default_path_line(b"default-path current\n"), None);
        assert_eq!(
            default_path_line(b"default-path origin /etc/haproxy\n"),
            None
        );
        assert_eq!(default_path_line(b"# default-path config\n"), None);
        assert!(default_path_line(b"default-path \"${MODE}\"\n").is_some());

        let t = temp_dir("defpath");
        let a = t.path().join("a.cfg");
        let b = t.path().join("b.cfg");
        fs::write(&a, "global\n").unwrap();
        fs::write(&b, "global\n    default-path parent\n").unwrap();
        let dest = t.path().join("config-1");
        assert_eq!(
            take(&[a, b.clone()], &dest, LIMITS).unwrap(),
            Outcome::DefaultPath {
                file: b,
                line: 2,
                text: "default-path parent".into()
            }
        );
        assert!(!dest.exists(), "nothing kept");
    }
}
