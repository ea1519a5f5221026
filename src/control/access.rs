//! What to tell a refused client: why, and what gives access, by the rules that decide it.
//!
//! Access is decided twice. connect(2) needs write permission on the socket file: the runtime
//! directory's master.sock is 0600 for root and the master's user, a -S socket has its mode,
//! user and group. Then the master runs the commands that change something or hand sockets out
//! ([`crate::control::command::Request::changes_state`]) only for a peer whose uid is root or
//! its own, whatever the socket. haproxy instead checks the socket's `level`.

use std::path::Path;

use crate::control::answer::Refusal;

/// What the master runs only for root and its own user, whatever socket the command came
/// through.
pub const PRIVILEGED_COMMANDS: &str =
    "reload, hard-reload, await-reload, @-forwarded commands and _getsocks";

/// What connect(2)'s EACCES means.
const CONNECT_NEEDS: &str = "connecting needs write permission on the socket file (and search \
                             permission on the directories above it)";

/// A refusal by the server, and what gives access.
pub fn refusal_message(refusal: Refusal, socket: &Path) -> String {
    match refusal {
        Refusal::Master { uid } => {
            let user = match uid {
                Some(uid) => match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
                    Ok(Some(u)) => format!("the master's user (uid {uid}, {})", u.name),
                    _ => format!("the master's user (uid {uid})"),
                },
                None => "the master's user".to_string(),
            };
            format!(
                "permission denied by the master on {}: it runs {PRIVILEGED_COMMANDS} only for \
                 root and its own user, whatever the socket (a -S socket's mode, user and group \
                 only decide who may connect, for read-only commands such as show proc); run \
                 this as root or as {user}",
                socket.display()
            )
        }
        Refusal::Level => format!(
            "permission denied by {}: the socket's access level is below this command's; \
             haproxy grants it with `level admin` (or `level operator`) on the `stats socket` \
             line, or `,level,admin` after a -S path",
            socket.display()
        ),
    }
}

/// What gives access when connecting to a hapmaster control socket was refused, for a line that
/// needs root or the master's user (`privileged`) or not.
pub fn connect_refusal_hint(privileged: bool) -> String {
    if privileged {
        format!(
            "{CONNECT_NEEDS}, and the master runs {PRIVILEGED_COMMANDS} only for root and its \
             own user whatever the socket: run this as root or as the master's user"
        )
    } else {
        format!(
            "{CONNECT_NEEDS}: run this as root or as the master's user, or through a -S socket \
             whose mode, user and group let you in (e.g. -S PATH,mode,660,group,GROUP, for \
             read-only commands); the runtime directory's master.sock admits only root and the \
             master's user"
        )
    }
}

/// What gives access when connecting for `hapmaster getsocks` was refused: its socket is mostly
/// a haproxy stats socket.
pub fn getsocks_connect_refusal(path: &Path) -> String {
    format!(
        "permission denied on {}: {CONNECT_NEEDS}: run this as root or as a user the socket lets \
         in (a haproxy `stats socket` line's user, group and mode; a hapmaster master hands its \
         sockets only to root and its own user)",
        path.display()
    )
}
