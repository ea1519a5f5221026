//! The master CLI on the executor's side: accepting clients on the control sockets, running
//! their commands against the master's state, and answering synchronous reloads when they end.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use nix::poll::PollFlags;
use nix::sys::socket::{getsockopt, send, sockopt::PeerCredentials, MsgFlags};

use super::{Master, HANDOFF_TIMEOUT};
use crate::control::answer::{no_credentials_text, permission_denied_text};
use crate::control::command::{
    bad_prefix_text, cannot_connect_text, parse_request, shorten, Request, Target,
};
use crate::control::format::{comment_lines, show_listeners, show_proc, ListenerRow, ProcRow};
use crate::control::keywords::{self, Dialect, Kw, LEVEL_DENIED};
use crate::control::levels::{Applied, Level, SessionLevel, PERMISSION_DENIED};
use crate::control::load_log::{load_log, load_status, reload_answer};
use crate::control::payload::{self, Gathered, Payload};
use crate::control::prompt::{apply_prompt, prompt, PromptMode, Stamp};
use crate::control::spec::{self, SpecError};
use crate::handoff::serve::{ServeProgress, ServeTask};
use crate::haproxy_version::Version;
use crate::supervisor::admission::{self, Refusals};
use crate::supervisor::forward::{Forward, Progress};
use crate::supervisor::relay::{Relay, RelayProgress};
use crate::supervisor::sessions::{Input, Next, PendingPayload, Session, Task, MAX_SESSIONS};
use crate::supervisor::state::{Generation, ReloadKind, Role};

/// A socket the master CLI is served on.
pub(super) struct ControlListener {
    pub listener: UnixListener,
    pub path: PathBuf,
    /// The runtime directory's `master.sock`: only root and the master's uid may even connect
    /// (it also serves `_getsocks` to new workers); `-S` sockets let others run read-only
    /// commands.
    pub internal: bool,
    /// The level its sessions start at (`-S ...,level,<level>`; admin by default).
    pub level: Level,
    /// A `-S` socket's file, removed at exit while it is still ours.
    pub placed: Option<crate::fs_at::Placed>,
    /// Its peers have credentials (SO_PEERCRED: a unix socket). Not an inet `-S fd@<n>`'s,
    /// whose clients are never privileged (`NO_PEER_UID`).
    pub peer_credentials: bool,
    /// Clients refused a session here, for the log.
    pub refusals: Refusals,
}

/// The uid of a peer without credentials (an inet `-S fd@<n>` socket's): no user, so it runs
/// the read-only commands only, whatever uid the master runs as.
const NO_PEER_UID: u32 = u32::MAX;

impl ControlListener {
    /// The master CLI socket of one `-S` argument: bound at its path (made safely, see
    /// `spec::bind`), or taken over from an inherited fd (`-S fd@<n>`, whose number must not be
    /// in `taken`: fds already the master's; it is added).
    pub fn open(
        arg: &str,
        staging: &crate::fs_at::Dir,
        taken: &mut Vec<std::os::fd::RawFd>,
    ) -> Result<ControlListener, SpecError> {
        if let Some(fd) = spec::parse_fd(arg) {
            let fd = fd?;
            if taken.contains(&fd) {
                return Err(SpecError::NotAListener {
                    fd,
                    what: "it is already the master's (another -S fd@, or systemd's LISTEN_FDS)"
                        .into(),
                });
            }
            let level = spec::level_of(arg)?;
            let (listener, family) = spec::adopt(fd)?;
            taken.push(fd);
            log::info!(
                "master CLI on fd@{fd}: a listening {family} stream socket{}",
                if family.has_peer_credentials() {
                    ""
                } else {
                    " (its clients have no credentials: read-only commands only)"
                }
            );
            return Ok(ControlListener {
                listener,
                path: PathBuf::from(format!("fd@{fd}")),
                internal: false,
                level,
                placed: None,
                peer_credentials: family.has_peer_credentials(),
                refusals: Default::default(),
            });
        }
        let spec = spec::parse_spec(arg)?;
        let (listener, placed) = spec::bind(&spec, Some(staging))?;
        log::info!("master CLI on {}", spec.path.display());
        Ok(ControlListener {
            listener,
            path: spec.path,
            internal: false,
            level: spec.level,
            placed: Some(placed),
            peer_credentials: true,
            refusals: Default::default(),
        })
    }
}

/// What running one command leaves the session doing.
enum Step {
    /// A master command's answer; the CLI's blank line follows it.
    Answer(String),
    /// Nothing to say (`prompt`, an `@` alone, `operator`, `expert-mode on`, ...): in prompt
    /// mode, just the prompt.
    Silent,
    /// A payload is being read (`Session::payload`): in prompt mode, haproxy's `+ ` instead of
    /// the prompt.
    Payload,
    /// A reload runs, or a task (`Session::task`); the answer comes when it ends.
    Wait,
    /// A reload's answer, which ends without the blank line of other answers.
    ReloadAnswer(String),
    /// The master's proxy refuses the command before any CLI runs it (a bad `@` prefix,
    /// `Permission denied!`): haproxy's line, without a blank line; then the connection closes (haproxy before 2.8), or the rest of the
    /// input is dropped and the session goes on (2.8 and later, 1601eebcd).
    Refused(String),
    /// The connection is over after these bytes (`quit`: its prompt; the default target gone).
    CloseAfter(String),
    /// The connection is over (the socket handoff consumed it).
    Close,
}

/// The answer to a reload the master will not run: it is stopping.
fn stopping_answer() -> String {
    reload_answer(
        false,
        &load_log(
            std::process::id(),
            None,
            "",
            Some("the master is stopping"),
            Dialect::NEWEST,
        ),
    )
}

/// The level hapmaster's own requests need, as haproxy's master would ask (`reload` needs
/// operator, `show proc` too from 3.1); a forwarded command's level is the worker's to judge
/// (`forward_prefix`).
fn needs(request: &Request, dialect: Dialect) -> Level {
    match request {
        Request::Reload | Request::HardReload | Request::AwaitReload => Level::Operator,
        // Read-only, as `show proc`: whoever may run that may read the counters.
        Request::ShowProc { .. } | Request::ShowMetrics => keywords::needs(Kw::ShowProc, dialect),
        Request::Getsocks => Level::Admin,
        _ => Level::User,
    }
}

fn may_change_state(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

impl Master<'_> {
    /// Accepts what waits on listener `index`, up to its free slots and at most
    /// [`MAX_SESSIONS`] connections a turn (a client connecting in a loop to be refused gets no
    /// more of the loop than that).
    pub(super) fn accept_clients(&mut self, index: usize) {
        for _ in 0..MAX_SESSIONS {
            if self.clients_of(index) >= MAX_SESSIONS {
                return;
            }
            let Some(l) = self.listeners.get(index) else {
                return;
            };
            let (stream, internal, credentials, level) = match spec::accept_any(&l.listener) {
                Ok(stream) => (stream, l.internal, l.peer_credentials, l.level),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("accept on {} failed: {e}", l.path.display());
                    return;
                }
            };
            let (pid, uid) = if !credentials {
                (0, NO_PEER_UID)
            } else {
                match getsockopt(&stream, PeerCredentials) {
                    Ok(c) => (c.pid(), c.uid()),
                    Err(e) => {
                        log::warn!("control socket: cannot read the peer's credentials: {e}");
                        continue;
                    }
                }
            };
            let privileged = credentials && may_change_state(uid);
            if internal && !privileged {
                log::warn!(
                    "{}: refused pid {pid} (uid {uid}): only root and the master's uid may use it",
                    self.runtime.master_socket().display()
                );
                continue;
            }
            if !self.admitted(index, stream.as_fd(), pid, uid, privileged) {
                continue;
            }
            match Session::new(stream, pid, uid, privileged, index, self.opts.cli_timeout) {
                Ok(mut session) => {
                    session.level = SessionLevel::new(level);
                    self.next_session += 1;
                    self.sessions.insert(self.next_session, session);
                }
                Err(e) => log::warn!("control socket: {e}"),
            }
        }
    }

    /// Whether a client of `uid` gets a session on listener `index` (`admission`). A refused
    /// one is told why in one line, if its socket takes it at once, before it is closed.
    fn admitted(
        &mut self,
        index: usize,
        stream: BorrowedFd<'_>,
        pid: i32,
        uid: u32,
        privileged: bool,
    ) -> bool {
        let on_listener = || self.sessions.values().filter(move |s| s.listener == index);
        let others = on_listener().filter(|s| !s.privileged).count();
        let of_uid = on_listener().filter(|s| s.peer_uid == uid).count();
        let Some(l) = self.listeners.get_mut(index) else {
            return false;
        };
        match admission::admit(privileged, uid, others, of_uid) {
            Ok(()) => {
                if let Some(line) = l.refusals.admitted(uid) {
                    log::info!("{}: {line}", l.path.display());
                }
                true
            }
            Err(why) => {
                let _ = send(
                    stream.as_raw_fd(),
                    why.as_bytes(),
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                );
                if let Some(line) = l.refusals.refused(uid, pid, &why) {
                    log::warn!("{}: {line}", l.path.display());
                }
                false
            }
        }
    }

    /// The ids of the sessions `pick` selects, to act on each in turn.
    fn sessions_where(&self, pick: impl Fn(&Session) -> bool) -> Vec<u64> {
        self.sessions
            .iter()
            .filter(|(_, s)| pick(s))
            .map(|(id, _)| *id)
            .collect()
    }

    pub(super) fn clients_of(&self, listener: usize) -> usize {
        self.sessions
            .values()
            .filter(|s| s.listener == listener)
            .count()
    }

    pub(super) fn on_session(&mut self, id: u64, flags: PollFlags) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let hung_up = flags.intersects(PollFlags::POLLHUP | PollFlags::POLLERR);
        // Both directions closed: nobody reads what a pending reload or task would answer, and
        // polling the socket would report it again at once.
        if s.closing && hung_up {
            self.sessions.remove(&id);
            return;
        }
        if hung_up || (flags.contains(PollFlags::POLLIN) && s.wants_input()) {
            let input = if s.relaying() {
                s.read_for_relay()
            } else {
                s.read()
            };
            match input {
                Input::Lines => {}
                // A half-closed client (`echo reload | socat`) still gets its answers (a relay's
                // worker, what it says until it closes).
                Input::Closed => s.closing = true,
                Input::Broken(why) => {
                    if s.relaying() {
                        s.task = None;
                    }
                    s.discard_input();
                    s.write(format!("{why}\n").as_bytes());
                    s.closing = true;
                }
            }
            // What it sent is still run (a `reload` counts), but nothing more is read.
            if hung_up {
                s.closing = true;
            }
        }
        // Room for output may let the next command run.
        self.flush_session(id);
        self.run_session(id);
        self.flush_session(id);
    }

    /// Runs the commands of sessions that have one to run and room for its answer: those whose
    /// output drained below the mark. Each runs until its output reaches the mark again.
    pub(super) fn run_sessions(&mut self) {
        for id in self.sessions_where(Session::runnable) {
            self.run_session(id);
            self.flush_session(id);
        }
    }

    pub(super) fn flush_session(&mut self, id: u64) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.flush().is_err() || s.finished() {
            self.sessions.remove(&id);
        }
    }

    /// Runs the session's commands until one waits (a reload, a task), none is left, or its
    /// unwritten output reaches the mark (backpressure: the rest runs as the client reads).
    fn run_session(&mut self, id: u64) {
        loop {
            let Some(s) = self.sessions.get_mut(&id) else {
                return;
            };
            if s.awaiting_reload.is_some() || s.task.is_some() || s.output_full() {
                return;
            }
            let step = if s.payload.is_some() {
                let Some(line) = s.next_payload_line() else {
                    return;
                };
                self.payload_line(id, &line)
            } else {
                // Every line is answered, with or without `prompt`, until the client closes (as
                // haproxy's master: it reads the next command once a command's answer is out).
                let command = match s.next_command() {
                    Next::Nothing => return,
                    Next::Command(command) => command,
                    Next::EndOfLine => continue,
                };
                self.execute(id, &command)
            };
            let prompt = self.prompt_of(id);
            let closes_on_error = self.refusal_closes();
            let Some(s) = self.sessions.get_mut(&id) else {
                return;
            };
            match step {
                Step::Answer(text) => {
                    s.write(text.as_bytes());
                    // haproxy's CLI ends every answer with an empty line.
                    s.write(b"\n");
                }
                Step::Silent => {}
                Step::Payload => {
                    if s.interactive {
                        s.write(b"+ ");
                    }
                    continue;
                }
                Step::Wait => continue,
                Step::ReloadAnswer(text) => {
                    end_with_reload_answer(s, &text);
                    return;
                }
                Step::Refused(text) => {
                    s.write(text.as_bytes());
                    s.discard_input();
                    if closes_on_error {
                        s.closing = true;
                        return;
                    }
                }
                Step::CloseAfter(text) => {
                    s.write(text.as_bytes());
                    s.closing = true;
                    s.discard_input();
                    return;
                }
                Step::Close => {
                    s.closing = true;
                    s.discard_input();
                    return;
                }
            }
            s.write(prompt.unwrap_or_default().as_bytes());
        }
    }

    /// Whether a command the master refuses itself (a bad prefix) closes the connection: it
    /// does up to haproxy 2.7 (`pcli_reply_and_close`); from 2.8 on the session goes on
    /// (`pcli_error`, 1601eebcd).
    fn refusal_closes(&self) -> bool {
        !self.dialect().at_least((2, 8))
    }

    /// The session's prompt, in prompt mode: who its commands go to, `[ReloadFailed]` after a
    /// failed reload, its modes; with `prompt timed`, the uptime of the master or of its
    /// default target worker first.
    fn prompt_of(&self, id: u64) -> Option<String> {
        let s = self.sessions.get(&id).filter(|s| s.interactive)?;
        let stamp = s.timed.then(|| {
            let since = match s.default_target {
                None => Some(self.started),
                Some(pid) => self.state.worker(pid).map(|w| w.started),
            };
            since.map_or(Stamp::Gone, |t| Stamp::Up(t.elapsed()))
        });
        Some(prompt(
            s.default_target,
            self.failed_reloads > 0,
            stamp,
            &s.level,
        ))
    }

    /// The version of the haproxy the master runs, as it prints it: the newest worker's
    /// (haproxy's master runs the one on disk at its last reload, as it re-executes then); while
    /// no worker has told it, what the binary's `-v` said at start.
    fn haproxy_version(&self) -> Option<String> {
        self.state
            .workers()
            .filter_map(|w| Some((w.started, self.workers.get(w.pid)?.version.clone()?)))
            .max_by_key(|(started, _)| *started)
            .map(|(_, v)| v)
            .or_else(|| self.binary_version.as_ref().map(|v| v.text.clone()))
    }

    fn execute(&mut self, id: u64, command: &str) -> Step {
        let Some(s) = self.sessions.get(&id) else {
            return Step::Close;
        };
        let default = s.default_target.map_or(Target::Master, Target::Pid);
        // 1c1bb8ef2 (v3.0-dev1): the master's proxy takes `set severity-output`.
        let severity_output = self.dialect().at_least((3, 0));
        let request = parse_request(command, default, severity_output);
        // 08f1e2bea (v2.9-dev12): custom end tags.
        let Some(end) = payload::opened_by(command, self.dialect()) else {
            return self.perform(id, command, request, b"");
        };
        let takes_payload = match &request {
            // Gathered for the worker, which gets the command as sent, then the payload. A
            // prefix naming no worker is refused at once, as haproxy's proxy does.
            Request::Forward { target, .. } => self.target_worker(*target).is_some(),
            // What haproxy's proxy takes itself (`pcli_find_and_exec_kw`) opens no payload
            // here: the lines after it are commands (haproxy's proxy sends them to the master's
            // CLI as such, with `+ ` prompts).
            Request::Prompt { .. }
            // A two-way session sends everything on as it comes (`pcli_find_bidir_prefix`
            // runs before haproxy's proxy looks for a payload).
            | Request::Relay { .. }
            | Request::Quit
            | Request::SetTarget { .. }
            | Request::BadPrefix(_) => false,
            Request::Keyword(words) => !words
                .first()
                .is_some_and(|w| SessionLevel::is_session_keyword(w)),
            _ => true,
        };
        if !takes_payload {
            return self.perform(id, command, request, b"");
        }
        let request = match request {
            Request::Forward { .. } => request,
            // The master's own CLI gathers the payload, then runs the command without the
            // pattern word (no master command reads a payload).
            _ => parse_request(
                payload::without_pattern(command, &end),
                default,
                severity_output,
            ),
        };
        if let Some(s) = self.sessions.get_mut(&id) {
            s.payload = Some(PendingPayload {
                command: command.to_string(),
                request,
                payload: Payload::new(end, command.len()),
            });
        }
        Step::Payload
    }

    /// One line of the session's payload: gathered; the end line runs the command that opened
    /// it.
    fn payload_line(&mut self, id: u64, line: &[u8]) -> Step {
        let Some(s) = self.sessions.get_mut(&id) else {
            return Step::Close;
        };
        let Some(pending) = s.payload.as_mut() else {
            return Step::Silent;
        };
        match pending.payload.take(line) {
            Gathered::More => Step::Payload,
            Gathered::TooLarge => {
                let text = payload::too_large_text(&pending.command);
                log::warn!("master CLI client pid {}: {}", s.peer_pid, text.trim_end());
                Step::CloseAfter(text)
            }
            Gathered::Ended => {
                let Some(done) = s.payload.take() else {
                    return Step::Silent;
                };
                self.perform(id, &done.command, done.request, done.payload.lines())
            }
        }
    }

    /// Runs a parsed command; `payload`: the lines of the payload it opened, if any, for a
    /// worker.
    fn perform(&mut self, id: u64, command: &str, request: Request, payload: &[u8]) -> Step {
        let Some(s) = self.sessions.get(&id) else {
            return Step::Close;
        };
        let (privileged, peer_uid) = (s.privileged, s.peer_uid);
        let peer = s.peer_pid;
        let level = s.level.level;
        let request = match request {
            Request::Keyword(words) => match self.keyword(id, &words) {
                Ok(request) => request,
                Err(step) => return step,
            },
            request => request,
        };
        // haproxy's level first (what its CLI answers a user-level socket), then hapmaster's
        // rule on the peer's uid.
        if level < needs(&request, self.dialect()) {
            return Step::Answer(LEVEL_DENIED.to_string());
        }
        if request.changes_state() && !privileged {
            let master_uid = nix::unistd::geteuid().as_raw();
            return Step::Answer(if peer_uid == NO_PEER_UID {
                no_credentials_text(&shorten(command), master_uid)
            } else {
                permission_denied_text(&shorten(command), master_uid, peer_uid)
            });
        }
        match request {
            Request::ShowProc { debug } => Step::Answer(self.show_proc(debug)),
            Request::ShowListeners => Step::Answer(self.show_listeners()),
            Request::ShowMetrics => Step::Answer(self.show_metrics()),
            Request::Reload => self.start_reload(id, ReloadKind::Soft),
            Request::HardReload => self.start_reload(id, ReloadKind::Hard),
            Request::AwaitReload => match self.await_reload(peer) {
                super::await_reload::Awaited::Ended(text) => Step::ReloadAnswer(text),
                super::await_reload::Awaited::After(after) => self.wait_for_reload(id, after),
            },
            Request::Getsocks => self.hand_over(id),
            Request::Prompt { args } => {
                let dialect = self.dialect();
                let Some(s) = self.sessions.get_mut(&id) else {
                    return Step::Close;
                };
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let mode = PromptMode {
                    prompt: s.interactive,
                    timed: s.timed,
                };
                match apply_prompt(mode, &args, dialect) {
                    Ok(mode) => {
                        s.interactive = mode.prompt;
                        s.timed = mode.timed;
                        Step::Silent
                    }
                    // The master's proxy says it (`pcli_error`): no blank line, the rest of the
                    // input dropped.
                    Err(usage) => Step::Refused(usage.to_string()),
                }
            }
            // The prompt, then the end (as haproxy's master writes it).
            Request::Quit => Step::CloseAfter(self.prompt_of(id).unwrap_or_default()),
            Request::SetTarget { target, word } => {
                let pid = match target {
                    Target::Master => None,
                    Target::Current => match self.state.current() {
                        Some(w) => Some(w.pid),
                        None => return Step::Refused(bad_prefix_text(&word)),
                    },
                    Target::Pid(pid) => match self.state.worker(pid) {
                        Some(_) => Some(pid),
                        None => return Step::Refused(bad_prefix_text(&word)),
                    },
                };
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.default_target = pid;
                }
                Step::Silent
            }
            Request::Forward {
                target,
                prefix,
                command,
            } => self.forward(id, target, prefix.as_deref(), &command, payload),
            Request::Relay {
                target,
                word,
                command,
            } => self.relay(id, target, &word, &command),
            Request::BadPrefix(word) => Step::Refused(bad_prefix_text(&word)),
            // Resolved above.
            Request::Keyword(_) => Step::Silent,
        }
    }

    /// The haproxy version whose master CLI the master speaks (`haproxy_version`); while it is
    /// not known (a binary that does not say, before a worker answers), the newest haproxy's, for
    /// every rule alike.
    fn dialect(&self) -> Dialect {
        self.haproxy_version()
            .and_then(|word| Version::of_word(&word))
            .map_or(Dialect::NEWEST, |v| Dialect((v.major, v.minor)))
    }

    /// A command of haproxy's keyword table (or the session keywords its master proxy takes):
    /// the request it is when hapmaster runs it as one of its own, or the step that answers it.
    fn keyword(&mut self, id: u64, words: &[String]) -> Result<Request, Step> {
        let dialect = self.dialect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let Some(s) = self.sessions.get_mut(&id) else {
            return Err(Step::Close);
        };
        match s.level.apply(&words) {
            Some(Applied::Done) => return Err(Step::Silent),
            Some(Applied::Denied) => return Err(Step::Refused(PERMISSION_DENIED.to_string())),
            None => {}
        }
        // 1c1bb8ef2 (v3.0-dev1)
        if dialect.at_least((3, 0)) {
            match s.level.apply_severity(&words) {
                Some(Ok(())) => return Err(Step::Silent),
                Some(Err(usage)) => return Err(Step::Refused(usage.to_string())),
                None => {}
            }
        }
        let level = s.level.level;
        if words.is_empty() {
            return Err(Step::Answer(keywords::empty_command(dialect)));
        }
        let kw = keywords::find(&words, dialect).map_err(Step::Answer)?;
        if level < keywords::needs(kw, dialect) {
            return Err(Step::Answer(LEVEL_DENIED.to_string()));
        }
        Err(Step::Answer(match kw {
            // 84640aaa2 (v3.1-dev): `debug` or nothing; before, any argument is ignored.
            Kw::ShowProc => match words.get(2) {
                Some(&"debug") if dialect.at_least((3, 1)) => {
                    return Ok(Request::ShowProc { debug: true })
                }
                Some(_) if dialect.at_least((3, 1)) => {
                    "'show proc' only supports 'debug' as argument\n".to_string()
                }
                _ => return Ok(Request::ShowProc { debug: false }),
            },
            Kw::Reload => return Ok(Request::Reload),
            Kw::HardReload => return Ok(Request::HardReload),
            Kw::Prompt => {
                return Ok(Request::Prompt {
                    args: words[1..].iter().map(|w| w.to_string()).collect(),
                })
            }
            Kw::Quit => return Ok(Request::Quit),
            Kw::Help => keywords::help(&words[1..], dialect),
            Kw::Echo => keywords::echo(&words),
            Kw::ShowEnv => {
                let environ: Vec<(String, String)> = std::env::vars_os()
                    .map(|(k, v)| {
                        (
                            k.to_string_lossy().into_owned(),
                            v.to_string_lossy().into_owned(),
                        )
                    })
                    .collect();
                keywords::show_env(&words, &environ)
            }
            // The master holds no stats socket of the configuration, as haproxy's does not.
            Kw::ShowCliSockets => String::new(),
            Kw::ShowCliLevel => format!("{level}\n"),
            Kw::ShowVersion => format!("{}\n", self.haproxy_version().unwrap_or_default()),
            Kw::ShowStartupLogs => self.startup_logs.clone(),
            // Taken before the table; a word such as `@!<pid>` typed as is names nothing.
            // What a reload answers (haproxy's master runs it for its own `reload`).
            Kw::LoadStatus => load_status(self.failed_reloads == 0, &self.startup_logs),
            Kw::Mode | Kw::Level | Kw::Prefix | Kw::Hapmaster => keywords::unknown(&words, dialect),
        }))
    }

    fn start_reload(&mut self, id: u64, kind: ReloadKind) -> Step {
        if self.state.is_stopping() {
            return Step::ReloadAnswer(stopping_answer());
        }
        let Some(s) = self.sessions.get(&id) else {
            return Step::Close;
        };
        let origin = format!(
            "master CLI client pid {} (uid {}) on {}",
            s.peer_pid,
            s.peer_uid,
            self.listeners
                .get(s.listener)
                .map_or_else(|| "?".into(), |l| l.path.display().to_string())
        );
        // Registered before the request is decided, so a reload that fails at once is answered.
        let step = self.wait_for_reload(id, self.state.last_generation());
        self.request_reload(kind, &origin);
        step
    }

    /// The session is answered when the first reload of a generation above `after` ends.
    fn wait_for_reload(&mut self, id: u64, after: Generation) -> Step {
        if self.state.is_stopping() {
            return Step::ReloadAnswer(stopping_answer());
        }
        if let Some(s) = self.sessions.get_mut(&id) {
            s.awaiting_reload = Some(after);
        }
        Step::Wait
    }

    /// A reload ended: every session waiting for one at or after this generation gets the answer,
    /// with the new worker's start-up output (`startup_output`).
    pub(super) fn answer_reloads(
        &mut self,
        generation: Generation,
        reason: Option<&str>,
        startup: &str,
    ) {
        let waiting = self.sessions_where(|s| s.awaiting_reload.is_some_and(|a| a < generation));
        let worker = self.workers.of_generation(generation).map(|(pid, _)| pid);
        let log = load_log(std::process::id(), worker, startup, reason, self.dialect());
        let text = reload_answer(reason.is_none(), &log);
        self.startup_logs = log;
        self.signal_reloads.reload_ended(generation, &text);
        for id in waiting {
            if let Some(s) = self.sessions.get_mut(&id) {
                s.awaiting_reload = None;
                end_with_reload_answer(s, &text);
            }
            self.flush_session(id);
        }
    }

    /// The first worker is ready: its start is the startup log (`show startup-logs`).
    pub(super) fn first_load_done(&mut self, worker: i32) {
        let startup = self
            .workers
            .get_mut(worker)
            .and_then(|r| r.startup.clone())
            .unwrap_or_default();
        let startup = String::from_utf8_lossy(&startup).into_owned();
        self.startup_logs = load_log(
            std::process::id(),
            Some(worker),
            &startup,
            None,
            self.dialect(),
        );
    }

    /// What the worker of a reload that just ended said while starting, taken once.
    pub(super) fn startup_output(&mut self, generation: Generation, ready: bool) -> String {
        let Some((pid, record)) = self.workers.of_generation(generation) else {
            return String::new();
        };
        let bytes = if ready {
            record.startup.take().unwrap_or_default()
        } else {
            record.output.take_startup(pid)
        };
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text
    }

    /// A master stopping answers the reloads it will not run.
    pub(super) fn abandon_reloads(&mut self) {
        let ids = self.sessions_where(|s| s.awaiting_reload.is_some());
        for id in ids {
            if let Some(s) = self.sessions.get_mut(&id) {
                s.awaiting_reload = None;
                s.write(stopping_answer().as_bytes());
                s.closing = true;
                let _ = s.flush();
            }
        }
    }

    /// `_getsocks`: the held sockets, with haproxy's protocol, as the session's task. The client
    /// is `hapmaster getsocks` or a haproxy an operator started with `-x master.sock`; our own new
    /// workers have a channel of their own. The protocol leaves nothing else to say on this
    /// connection.
    fn hand_over(&mut self, id: u64) -> Step {
        let held = Rc::clone(&self.held);
        let Some(s) = self.sessions.get_mut(&id) else {
            return Step::Close;
        };
        let started = ServeTask::new(&s.stream, &*held, HANDOFF_TIMEOUT, false, Instant::now());
        match started {
            Ok(serve) => {
                s.task = Some(Task::Getsocks {
                    serve,
                    held,
                    wants: PollFlags::POLLOUT,
                })
            }
            Err(e) => log::warn!(
                "handing the listening sockets to pid {} failed: {e}",
                s.peer_pid
            ),
        }
        Step::Close
    }

    /// Starts the exchange with the worker as the session's task (`step_tasks` ends it).
    /// `prefix`: the `@` word that named it; None: the session's default target.
    /// `payload`: what follows the command (see `Forward::start`).
    fn forward(
        &mut self,
        id: u64,
        target: Target,
        prefix: Option<&str>,
        command: &str,
        payload: &[u8],
    ) -> Step {
        let Some(w) = self.target_worker(target) else {
            return match prefix {
                Some(word) => Step::Refused(bad_prefix_text(word)),
                // The worker an `@` alone chose is gone: haproxy's master cannot connect to it.
                None => Step::CloseAfter(cannot_connect_text()),
            };
        };
        let path = self.runtime.worker_socket(w.generation);
        // The worker runs it at the session's level and in its modes, as haproxy's master
        // has it (`operator -;expert-mode on -;<command>`).
        let levels = self
            .sessions
            .get(&id)
            .map_or_else(String::new, |s| s.level.forward_prefix());
        let command = format!("{levels}{command}");
        match Forward::start(&path, w.pid, &command, payload, Instant::now()) {
            Ok(forward) => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.task = Some(Task::Forward(forward));
                }
                Step::Wait
            }
            Err(text) => Step::Answer(text),
        }
    }

    /// `@@<prefix> [command]` (haproxy 3.2+, c347cb73f's `pcli_find_bidir_prefix`): the
    /// command, the rest of its line and whatever the client sent after it go to the worker as
    /// sent, then everything the client sends, until the worker closes; alone, a `prompt` line
    /// puts the worker in the session's prompt mode. The worker runs it at the session's level
    /// (`operator -;` / `user -;` first), without its modes, as haproxy's master has it.
    /// `@@master` (`@@`, `@@0`): the command is the master's, as with `@master`.
    fn relay(&mut self, id: u64, target: Option<Target>, word: &str, command: &str) -> Step {
        if !self.dialect().at_least((3, 2)) {
            return Step::Refused(bad_prefix_text(word));
        }
        let worker = match target {
            None => None,
            Some(Target::Master) => {
                return match command.is_empty() {
                    true => Step::Silent,
                    false => self.execute(id, command),
                }
            }
            Some(Target::Current) => self.state.current(),
            Some(Target::Pid(pid)) => self.state.worker(pid),
        };
        let Some(w) = worker else {
            return Step::Refused(bad_prefix_text(word));
        };
        let path = self.runtime.worker_socket(w.generation);
        let idle = self.opts.cli_timeout;
        let Some(s) = self.sessions.get_mut(&id) else {
            return Step::Close;
        };
        let rest = s.take_rest_of_line();
        let pending = s.take_pending_input();
        let mut first = s.level.level_prefix().as_bytes().to_vec();
        if command.is_empty() && rest.is_none() && pending.is_empty() {
            first.extend_from_slice(b"prompt");
            first.extend_from_slice(if s.interactive { b" p" } else { b" i" });
            if s.timed {
                first.extend_from_slice(b" timed");
            }
            first.push(b'\n');
        } else {
            // The line as sent: its end, unless the prefix stood alone (its blanks, newline
            // included, are skipped).
            first.extend_from_slice(command.as_bytes());
            if let Some(rest) = &rest {
                first.push(b';');
                first.extend_from_slice(rest.as_bytes());
            }
            if !command.is_empty() || rest.is_some() {
                first.push(b'\n');
            }
            first.extend_from_slice(&pending);
        }
        match Relay::start(&path, w.pid, first, Instant::now(), idle) {
            Ok(relay) => {
                s.task = Some(Task::Relay(relay));
                Step::Wait
            }
            Err(text) => Step::Answer(text),
        }
    }

    /// The live worker `target` names, if any.
    fn target_worker(&self, target: Target) -> Option<&crate::supervisor::state::Worker> {
        match target {
            Target::Current => self.state.current(),
            Target::Pid(pid) => self.state.worker(pid),
            Target::Master => None,
        }
    }

    /// Advances every session's task as far as its peer allows. A forward that ends answers its
    /// session, which then runs its next command; a `_getsocks` conversation that ends ends its
    /// session.
    pub(super) fn step_tasks(&mut self, now: Instant) {
        let busy = self.sessions_where(|s| s.task.is_some());
        for id in busy {
            let prompt = self.prompt_of(id);
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            let room = s.room();
            match s.task.as_mut() {
                Some(Task::Forward(f)) => {
                    match f.step(now, room) {
                        Progress::Waiting(part) if part.is_empty() => continue,
                        Progress::Waiting(part) => s.write(&part),
                        Progress::Done(last) => {
                            s.task = None;
                            s.restart_deadline();
                            // The worker's answer ends with its CLI's blank line: relayed
                            // as it is, nothing added but the prompt.
                            s.write(&last);
                            s.write(prompt.unwrap_or_default().as_bytes());
                            self.run_session(id);
                        }
                    }
                    self.flush_session(id);
                }
                Some(Task::Relay(r)) => {
                    match r.step(now, room) {
                        RelayProgress::Open(part) if part.is_empty() => continue,
                        RelayProgress::Open(part) => {
                            s.write(&part);
                            s.restart_deadline();
                        }
                        RelayProgress::Closed(last) => {
                            // The master's again: its prompt, then what the client sends next.
                            s.task = None;
                            s.restart_deadline();
                            s.write(&last);
                            s.write(prompt.unwrap_or_default().as_bytes());
                            self.run_session(id);
                        }
                        RelayProgress::Idle => {
                            s.task = None;
                            s.closing = true;
                            s.discard_input();
                        }
                    }
                    self.flush_session(id);
                }
                Some(Task::Getsocks { serve, held, wants }) => {
                    let result = match serve.step(&s.stream, &**held, now) {
                        ServeProgress::Wants(flags) => {
                            *wants = flags;
                            continue;
                        }
                        ServeProgress::Done(result) => result,
                    };
                    match result {
                        Ok(outcome) => log::debug!(
                            "handed {} listening sockets to pid {}",
                            outcome.sent,
                            s.peer_pid
                        ),
                        Err(e) => log::warn!(
                            "handing the listening sockets to pid {} failed: {e}",
                            s.peer_pid
                        ),
                    }
                    self.sessions.remove(&id);
                }
                None => {}
            }
        }
    }

    fn show_proc(&self, debug: bool) -> String {
        let now = Instant::now();
        let row =
            |pid: i32, kind: &'static str, reloads: u64, since: Instant, version: String| ProcRow {
                pid,
                kind,
                reloads,
                failed_reloads: self.failed_reloads,
                uptime: now.saturating_duration_since(since),
                version,
            };
        // haproxy's master prints the version it runs (`haproxy_version`); hapmaster's own
        // version is `hapmaster -v`'s.
        let version = self.haproxy_version().unwrap_or_default();
        let programs = Version::of_word(&version).map_or(true, |v| v.lists_programs());
        let master = row(
            std::process::id() as i32,
            "master",
            self.reloads,
            self.started,
            version,
        );
        let mut current = Vec::new();
        let mut old = Vec::new();
        for w in self.state.workers() {
            let extra = self.workers.get(w.pid);
            let r = row(
                w.pid,
                "worker",
                self.reloads
                    .saturating_sub(extra.map_or(self.reloads, |e| e.reloads_at_spawn)),
                w.started,
                extra.and_then(|e| e.version.clone()).unwrap_or_default(),
            );
            match w.role {
                Role::Current => current.push(r),
                Role::Starting => {}
                _ => old.push(r),
            }
        }
        let mut out = show_proc(&master, &current, &old, programs, debug);
        // After haproxy's rows, as a comment, so that parsers of haproxy's output keep working.
        out.push_str(&comment_lines(self.last_good_note().as_slice()));
        out
    }

    /// The metrics, from the counters and what the state says now.
    pub(super) fn show_metrics(&self) -> String {
        let mut now = crate::supervisor::metrics::Now {
            held_listeners: self.held.len(),
            haproxy_version: self.haproxy_version(),
            ..Default::default()
        };
        for w in self.state.workers() {
            match w.role {
                Role::Current => now.current += 1,
                Role::Starting => now.starting += 1,
                Role::Draining | Role::Failed | Role::Terminating => now.draining += 1,
            }
        }
        crate::supervisor::metrics::render(&self.metrics, &now)
    }

    /// Moves `--metrics-bind` client `id` on; drops it once its answer is out or it is gone.
    pub(super) fn step_metrics_client(&mut self, id: u64) {
        let Some(mut http) = self.metrics_http.take() else {
            return;
        };
        if let Some(c) = http.clients.get_mut(&id) {
            if c.step(|| self.show_metrics()) == crate::supervisor::metrics_http::Step::Done {
                http.clients.remove(&id);
            }
        }
        self.metrics_http = Some(http);
    }

    fn show_listeners(&self) -> String {
        let used_by = self
            .state
            .current()
            .map_or_else(|| "-".to_string(), |w| w.pid.to_string());
        let rows: Vec<ListenerRow> = self
            .held
            .iter()
            .map(|h| ListenerRow::new(&h.info, &h.record, used_by.clone()))
            .collect();
        show_listeners(&rows)
    }

    /// Drops clients past their deadline (`Session::deadline`: idle, or a command line that took
    /// too long), not those awaiting a reload or a task, which has its own.
    pub(super) fn expire_sessions(&mut self, now: Instant) {
        self.sessions
            .retain(|_, s| !s.on_its_own_time() || s.deadline > now);
    }
}

/// A reload's answer ends the connection, prompt mode or not, as haproxy's master ends it
/// (2.7 and later after the answer; 2.6 re-executes and closes with nothing said: hapmaster's
/// `Success=` answer there is its addition). What came after `reload` is not run.
fn end_with_reload_answer(s: &mut Session, text: &str) {
    s.write(text.as_bytes());
    s.discard_input();
    s.closing = true;
}
