#!/usr/bin/env python3
"""Captures haproxy's own master CLI, byte for byte, as transcripts hapmaster's tests compare with.

    capture.py HAPROXY_BINARY [OUT_DIR]

Starts a real `haproxy -W -S <unix socket>` (no -s: plain foreground master) on 127.0.0.1 in a
fresh temporary directory, runs a fixed list of exchanges against its master CLI and writes, for
each exchange NAME:

    OUT_DIR/<version>/NAME.in    the exact bytes sent (a prompt-mode session: its lines, in order)
    OUT_DIR/<version>/NAME.txt   the exact bytes received, raw
    OUT_DIR/<version>/NAME.norm  the same after normalize() (see NORMALIZE below)

plus OUT_DIR/<version>/facts.json (pids, ports, exit codes, the temporary directory) and
OUT_DIR/<version>/exchanges.txt (one line per exchange: name, mode, what it shows).
<version> is what `haproxy -v` prints (e.g. 2.6.12-1+deb12u4).

Bounded: every connection has a 10 s deadline, every wait a 30 s one, the whole run 240 s (the
capture.sh wrapper adds an outer `timeout`). Loopback and the temporary directory only; every
process started here is stopped by its pid at the end (SIGINT for the main master, whose exit
code is one of the facts, SIGTERM for the others).

Non-prompt exchanges are sent the way `socat stdio unix-connect:SOCK` sends a piped line: the
bytes, then a write shutdown, then everything read until the master closes. Prompt-mode sessions
send one line at a time and read until the prompt comes back (or the connection ends).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

RUN_DEADLINE = time.monotonic() + 240
IO_TIMEOUT = 10.0
WAIT = 30.0

# A prompt as haproxy's master writes it (pcli_write_prompt in src/cli.c): optional "[d:hh:mm:ss] "
# (prompt timed), "master" + optional "[ReloadFailed]" or a worker pid, optional "(xed)" flags,
# then "> "; "+ " while a payload is being sent.
# A worker's own CLI (a two-way `@@` session, 3.2+) ends an answer with "\n> " or "\n[d:hh:mm:ss]> ".
PROMPT_END = re.compile(rb"(?:(?:\[[^\]\n]*\] )?(?:master(?:\[ReloadFailed\])?|\d+)(?:\([xed]+\))?> |\+ "
                        rb"|(?:^|\n)(?:\[[^\]\n]*\])?> )$")


def die(msg):
    sys.stderr.write("capture: " + msg + "\n")
    raise SystemExit(1)


def check_deadline():
    if time.monotonic() > RUN_DEADLINE:
        die("the whole capture took longer than 240 s; stopping")


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(IO_TIMEOUT)
    s.connect(path)
    return s


def read_to_eof(s):
    out = b""
    end = time.monotonic() + IO_TIMEOUT
    while time.monotonic() < end:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            return out
        out += chunk
    return out + b"\n<<capture: no EOF within the deadline>>\n"


def one_shot(path, data):
    """socat-style: send, shut the write side, read until the master closes."""
    s = connect(path)
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return read_to_eof(s)
    finally:
        s.close()


def read_until_prompt(s, quiet=0.3, silence=2.0):
    """Reads one step's answer: until the buffer ends with a prompt and nothing more comes for
    `quiet` seconds, or (no prompt: prompt mode is off) nothing comes for `silence` seconds.
    Only the split into steps depends on these delays; the bytes as a whole do not, since the
    session's last read goes on to EOF."""
    out = b""
    end = time.monotonic() + IO_TIMEOUT
    while time.monotonic() < end:
        s.settimeout(quiet if PROMPT_END.search(out) else silence)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return out, False
        if not chunk:
            return out, True
        out += chunk
    return out, False


def prompt_session(path, lines):
    """One line at a time, each read up to the next prompt; stops at EOF."""
    s = connect(path)
    sent = b""
    got = b""
    steps = []
    try:
        for line in lines:
            s.sendall(line)
            sent += line
            out, eof = read_until_prompt(s)
            got += out
            steps.append((line, out))
            if eof:
                steps.append((b"", b"<EOF>"))
                break
        else:
            # the last line was not quit: close our side and take what is left
            s.shutdown(socket.SHUT_WR)
            out = read_to_eof(s)
            got += out
            steps.append((b"<write shutdown>", out + b"<EOF>"))
    finally:
        s.close()
    return sent, got, steps


def padded(placeholder):
    """re.sub replacement: `placeholder`, then the matched value's trailing spaces adjusted so
    the column keeps its total width (group 1 holds the spaces)."""
    def sub(m):
        spaces = m.group(1)
        if not spaces:
            return placeholder
        width = len(m.group(0))
        return placeholder + b" " * max(1, width - len(placeholder))
    return sub


class Capture:
    def __init__(self, binary, out_root):
        self.binary = os.path.abspath(binary)
        self.version = self.haproxy_version()
        self.out = os.path.join(out_root, self.version)
        os.makedirs(self.out, exist_ok=True)
        for f in os.listdir(self.out):
            if f.endswith((".in", ".txt", ".norm", ".json", ".steps")):
                os.unlink(os.path.join(self.out, f))
        self.tmp = tempfile.mkdtemp(prefix="hm-capture-")
        self.facts = {"haproxy": self.version, "tmp": self.tmp, "pids": {}, "exit_codes": {}}
        self.index = []
        self.procs = []
        self.subst = []  # (bytes, placeholder), longest first when applied
        self.pending_norm = []

    def haproxy_version(self):
        out = subprocess.run([self.binary, "-v"], capture_output=True, timeout=10).stdout.decode()
        m = re.search(r"version (\S+)", out)
        if not m:
            die("cannot read the version from '%s -v'" % self.binary)
        return m.group(1)

    # ---- haproxy processes -------------------------------------------------------------------

    def env(self):
        # A fixed, small environment so `show env` is the same on every run.
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/", "LANG": "C", "TZ": "UTC"}

    def start(self, name, args, pass_fds=(), stderr_name=None):
        err = open(os.path.join(self.tmp, (stderr_name or name) + ".stderr"), "wb")
        p = subprocess.Popen([self.binary] + args, cwd=self.tmp, env=self.env(),
                             stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                             pass_fds=pass_fds, start_new_session=True)
        err.close()
        self.procs.append(p)
        self.facts["pids"][name] = p.pid
        return p

    def stop(self, p, sig, name):
        if p.poll() is None:
            os.kill(p.pid, sig)
        try:
            rc = p.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            rc = p.wait(timeout=WAIT)
            name += " (SIGKILLed after 30 s)"
        # Popen reports death by a signal as -signo; a shell would say 128+signo.
        self.facts["exit_codes"][name] = rc
        return rc

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait(timeout=WAIT)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass

    # ---- waiting on the master ----------------------------------------------------------------

    def show_proc(self, sock):
        try:
            return one_shot(sock, b"show proc\n").decode(errors="replace")
        except OSError:
            return ""

    def workers(self, sock):
        """[(pid, reloads)] of the current (not leaving) workers, and the master row."""
        text = self.show_proc(sock)
        rows, master, section = [], None, None
        for line in text.splitlines():
            if line.startswith("#"):
                section = line
                continue
            f = line.split()
            if len(f) >= 3 and f[1] == "master":
                master = line
            elif len(f) >= 3 and f[1] == "worker" and section == "# workers":
                rows.append((int(f[0]), int(f[2])))
        return rows, master

    def current_worker(self, sock):
        """The worker @1 names: haproxy's pcli_prefix_to_pid takes the one with the fewest
        reloads (after a failed reload the current worker's count is no longer 0)."""
        rows, _ = self.workers(sock)
        return min(rows, key=lambda r: r[1])[0] if rows else None

    def wait_for(self, what, cond):
        end = time.monotonic() + WAIT
        while time.monotonic() < end:
            check_deadline()
            v = cond()
            if v:
                return v
            time.sleep(0.1)
        die("timed out (30 s) waiting for " + what)

    def wait_worker_ready(self, sock, not_pid=None):
        def ready():
            cur = [pid for pid in [self.current_worker(sock)] if pid and pid != not_pid]
            if not cur:
                return None
            try:
                ans = one_shot(sock, b"@!%d show version\n" % cur[0])
            except OSError:
                return None
            return cur[0] if ans.strip() and b"Can't" not in ans else None
        return self.wait_for("a ready worker", ready)

    def wait_master_after_failed_reload(self, sock, failed_before):
        def done():
            _, master = self.workers(sock)
            m = master and re.search(r"\[failed: (\d+)\]", master)
            return m and int(m.group(1)) > failed_before
        # 2.6 has "[failed: N]" in the master row; if a version has no such counter, fall back
        # to the master answering again.
        return self.wait_for("the master to count the failed reload", done)

    # ---- recording -----------------------------------------------------------------------------

    def add_subst(self, raw, placeholder):
        if raw:
            self.subst.append((raw.encode() if isinstance(raw, str) else raw, placeholder.encode()))

    def normalize(self, data):
        """NORMALIZE: what a comparing test must replace before comparing bytes.
        - the temporary directory -> @TMP@; ports -> @PORT_FE@ / @PORT_BE@
        - known pids (master, each worker, programs) -> @PID_MASTER@, @PID_W<n>@, ...
        - show proc uptimes "0d00h00m03s" -> @UPTIME@
        A value followed by spaces (a fixed-width column, e.g. show proc's %-15u) is replaced with
        its spaces: placeholder + padding to the same total width (at least one space), so a
        5-digit pid and a 4-digit one in the same column normalize to the same bytes.
        - prompt-timed stamps "[0:00:00:03] " -> "[@UPTIME@] "
        - pointers "0x55d2c3a0b2f0" (show acl/map entries) -> @PTR@
        - remaining pids in "(1234)" (startup-logs) -> (@PID@)
        - the host name in HAPROXY_LOCALPEER=... (show env) -> @HOST@
        - dates in startup logs / show env are not expected (TZ fixed, env fixed)
        """
        out = data
        for raw, ph in sorted(self.subst, key=lambda x: -len(x[0])):
            out = re.sub(rb"(?<![0-9])" + re.escape(raw) + rb"(?![0-9])( *)", padded(ph), out)
        out = re.sub(rb"\b\d+d\d\dh\d\dm\d\ds\b( *)", padded(b"@UPTIME@"), out)
        out = re.sub(rb"\[\d+:\d\d:\d\d:\d\d\] ", b"[@UPTIME@] ", out)
        out = re.sub(rb"0x[0-9a-f]{6,}", b"@PTR@", out)
        out = re.sub(rb"HAPROXY_LOCALPEER=[^\n]*", b"HAPROXY_LOCALPEER=@HOST@", out)
        out = re.sub(rb"\((\d{2,})\)", b"(@PID@)", out)
        return out

    def record(self, name, mode, what, sent, got):
        with open(os.path.join(self.out, name + ".in"), "wb") as f:
            f.write(sent)
        with open(os.path.join(self.out, name + ".txt"), "wb") as f:
            f.write(got)
        self.index.append((name, mode, what))
        self.pending_norm.append((name, got))

    def flush_norm(self):
        for name, got in self.pending_norm:
            with open(os.path.join(self.out, name + ".norm"), "wb") as f:
                f.write(self.normalize(got))
        self.pending_norm = []

    def ask(self, sock, name, data, what):
        check_deadline()
        got = one_shot(sock, data)
        self.record(name, "one-shot", what, data, got)
        return got

    def session(self, sock, name, lines, what):
        check_deadline()
        sent, got, steps = prompt_session(sock, lines)
        self.record(name, "prompt", what, sent, got)
        with open(os.path.join(self.out, name + ".steps"), "w") as f:
            f.write("# each line sent, then the bytes read before the next one (python repr)\n")
            for line, out in steps:
                f.write(">>> %r\n%r\n" % (line, out))
        return got

    # ---- the run -------------------------------------------------------------------------------

    def write_config(self, bad=False, program=False):
        cfg = (
            "global\n"
            "    stats socket %(tmp)s/worker.sock level admin\n"
            "    stats timeout 1m\n"
            "\n"
            "defaults\n"
            "    mode http\n"
            "    timeout connect 1s\n"
            "    timeout client 5s\n"
            "    timeout server 5s\n"
            "\n"
            "frontend fe\n"
            "    bind 127.0.0.1:%(fe)d\n"
            "    # F: an ACL file (empty) named relatively, so its reference is \"F\"\n"
            "    acl blocked_agent hdr(user-agent) -f F\n"
            "    http-request deny if blocked_agent\n"
            "    default_backend be\n"
            "\n"
            "backend be\n"
            "    server s1 127.0.0.1:%(be)d\n"
        ) % {"tmp": self.tmp, "fe": self.fe, "be": self.be}
        if program:
            cfg += "\nprogram sleeper\n    command sleep 300\n"
        if bad:
            cfg += "\nthis-is-not-a-keyword\n"
        with open(os.path.join(self.tmp, "haproxy.cfg"), "w") as f:
            f.write(cfg)

    def run(self):
        self.fe, self.be = free_port(), free_port()
        self.facts["ports"] = {"fe": self.fe, "be": self.be}
        self.add_subst(self.tmp, "@TMP@")
        self.add_subst(str(self.fe), "@PORT_FE@")
        self.add_subst(str(self.be), "@PORT_BE@")
        open(os.path.join(self.tmp, "F"), "w").close()
        self.write_config()
        sock = os.path.join(self.tmp, "master.sock")
        usock = os.path.join(self.tmp, "master-user.sock")
        osock = os.path.join(self.tmp, "master-oper.sock")
        master = self.start("master", ["-W", "-S", sock, "-S", usock + ",level,user",
                                       "-S", osock + ",level,operator", "-f", "haproxy.cfg"])
        self.add_subst(str(master.pid), "@PID_MASTER@")
        self.wait_for("the master socket", lambda: os.path.exists(sock))
        w1 = self.wait_worker_ready(sock)
        self.facts["pids"]["worker1"] = w1
        self.add_subst(str(w1), "@PID_W1@")

        A, S = self.ask, self.session
        # ---- item 3: master commands, one-shot --------------------------------------------
        A(sock, "help", b"help\n", "the master's help (its command list)")
        A(sock, "show_version", b"show version\n", "item 3: show version on the master")
        A(sock, "show_cli_level", b"show cli level\n", "item 3: level of an admin -S socket")
        A(usock, "show_cli_level_user_socket", b"show cli level\n", "item 3: -S ...,level,user")
        A(osock, "show_cli_level_oper_socket", b"show cli level\n", "item 3: -S ...,level,operator")
        A(sock, "operator_show_cli_level", b"operator; show cli level\n", "item 3: operator then level")
        A(sock, "user_show_cli_level", b"user; show cli level\n", "item 3: user then level")
        A(sock, "user_operator", b"user; operator\n", "item 3: raising the level back is refused")
        A(usock, "user_socket_reload", b"reload\n", "item 3: reload at level user")
        A(sock, "show_cli_sockets", b"show cli sockets\n", "item 3: the master's sockets")
        A(sock, "show_startup_logs", b"show startup-logs\n", "item 3: master startup logs")
        A(sock, "show_env", b"show env\n", "item 3: show env on the master (fixed env)")
        A(sock, "show_env_var", b"show env PATH\n", "item 3: show env VAR on the master")
        A(sock, "echo", b"echo hello\\ world; echo a\\;b\n", "item 3: echo (3.1+)")
        A(sock, "show_proc_debug", b"show proc debug\n", "item 3: show proc debug (3.1+)")
        A(sock, "expert_mode_query", b"expert-mode\n", "item 3: expert-mode without argument")
        A(sock, "expert_mode_on_query", b"expert-mode on; expert-mode\n",
          "item 3: the master intercepts a bare expert-mode (turns it off)")
        A(sock, "mcli_debug_show_env_var", b"mcli-debug-mode on; show env PATH\n",
          "item 3: mcli-debug-mode gives the master all commands")
        A(sock, "mcli_debug_show_env", b"mcli-debug-mode on; show env\n",
          "item 3: the master's whole environment (what haproxy sets: HAPROXY_*)")
        A(sock, "at1_show_env", b"@1 show env\n", "the worker's environment (HAPROXY_MWORKER etc.)")
        A(sock, "mcli_debug_show_startup_logs", b"mcli-debug-mode on; show startup-logs\n",
          "item 3: startup logs in mcli-debug-mode")
        A(usock, "help_user_socket", b"help\n", "the master's help at level user")
        A(usock, "show_proc_user_socket", b"show proc\n", "show proc at level user")
        A(sock, "at_alone_oneshot", b"@1\n", "item 2: @1 alone, nothing after it")
        A(sock, "prompt_pipelined", b"prompt; show version; @1 show version; quit\n",
          "item 4: prompt mode, pipelined on one line (as scripts do)")
        A(sock, "prompt_pipelined_no_quit", b"prompt\nshow version\n", "item 4: prompt mode, write shutdown")
        A(sock, "quit_oneshot", b"quit\n", "quit")
        A(sock, "two_lines_no_prompt", b"show version\nshow cli level\n",
          "two lines without prompt mode: does the master answer the second?")
        A(sock, "two_lines_at1_no_prompt", b"@1 show version\n@1 show cli level\n",
          "two forwarded lines without prompt mode")
        A(sock, "tab_after_prefix", b"@1\tshow\tversion\n", "tabs as separators")
        A(sock, "unknown_command", b"no-such-command\n", "the master's answer to an unknown command")
        A(sock, "empty_line", b"\n", "an empty line")
        # ---- item 3: levels passed on to the worker ----------------------------------------
        A(sock, "at1_show_cli_level", b"@1 show cli level\n", "item 3: worker level, admin master")
        A(sock, "operator_at1_show_cli_level", b"operator; @1 show cli level\n", "item 3: operator passed on")
        A(sock, "user_at1_show_cli_level", b"user; @1 show cli level\n", "item 3: user passed on")
        A(usock, "user_socket_at1_show_cli_level", b"@1 show cli level\n", "item 3: user socket passed on")
        A(sock, "expert_at1_expert_mode", b"expert-mode on; @1 expert-mode\n", "item 3: expert passed on")
        A(sock, "experimental_at1_experimental_mode", b"experimental-mode on; @1 experimental-mode\n",
          "item 3: experimental passed on")
        A(sock, "expert_off_at1_expert_mode", b"expert-mode on; expert-mode off; @1 expert-mode\n",
          "item 3: expert-mode off stops passing it")
        A(sock, "expert_at1_debug_dev", b"expert-mode on; @1 debug dev log hapmaster-capture\n",
          "item 3: an expert-only worker command through the master")
        A(sock, "at1_debug_dev_no_expert", b"@1 debug dev log hapmaster-capture\n",
          "item 3: the same without expert-mode")
        # ---- items 1, 2, 4: forwarding -----------------------------------------------------
        A(sock, "at1_show_version", b"@1 show version\n", "item 4: a forwarded answer's end")
        A(sock, "at1_show_version_twice", b"@1 show version; @1 show version\n",
          "item 4: two forwarded answers, one connection")
        A(sock, "show_version_twice", b"show version; show version\n", "item 4: two master answers")
        A(sock, "at1_unknown", b"@1 no-such-command\n", "a worker's unknown-command answer")
        A(sock, "escape_add_show_acl", b"@1 add acl F Mon\\ User\\ Agent\\;;@1 show acl F\n",
          "item 1: escapes forwarded as they are (value gets the ';')")
        A(sock, "escape_show_acl_after", b"@1 show acl F\n", "item 1: the ACL afterwards")
        A(sock, "escape_tab_backslash", b"@1 add acl F a\\\\b\\\tc;@1 show acl F\n",
          "item 1: escaped backslash and tab")
        A(sock, "escape_master_show_version", b"show\\ version\n", "item 1: an escaped space in a master word")
        A(sock, "at_alone_then_command", b"@1; show version; show cli level\n",
          "item 2: @1 alone switches the rest of the line to worker 1")
        A(sock, "at_alone_then_master", b"@1; @master show version\n", "item 2: @master overrides")
        A(sock, "at_bang_pid", b"@!%d show version\n" % w1, "@!<pid>")
        A(sock, "at_bad_pid", b"@!1 show version\n", "@!<pid> of no worker")
        A(sock, "at_at_1", b"@@1 show version\n", "item 2: @@1 (3.2+)")
        A(sock, "at_at_1_alone", b"@@1\n", "item 2: @@1 without a command (3.2+)")
        A(usock, "user_socket_at_at_1_show_cli_level", b"@@1 show cli level\n",
          "item 2: @@1 at level user (3.2+: the worker runs it at the session's level)")
        A(sock, "at_at_master", b"@@master show version\n", "@@master (3.2+: the master's own CLI)")
        A(sock, "show_proc_arg", b"show proc foo\n", "show proc with an argument other than debug")
        A(sock, "at_zero", b"@0 show version\n", "@0 is the master")
        A(sock, "at_master", b"@master show version\n", "@master")
        A(sock, "at_2", b"@2 show version\n", "@2 with a single worker")
        # ---- items 2, 3, 4: prompt mode ---------------------------------------------------
        S(sock, "prompt_basic", [b"prompt\n", b"show version\n", b"@1 show version\n",
                                  b"no-such-command\n", b"\n", b"quit\n"],
          "item 4: prompt mode, master and forwarded answers")
        S(sock, "prompt_at_alone", [b"prompt\n", b"@1\n", b"show version\n", b"show cli level\n",
                                     b"@\n", b"show version\n", b"@master\n", b"quit\n"],
          "item 2: @1 alone in prompt mode switches the prompt to the worker")
        S(sock, "prompt_modes", [b"prompt\n", b"expert-mode on\n", b"experimental-mode on\n",
                                  b"@1\n", b"show cli level\n", b"expert-mode\n", b"@master\n",
                                  b"mcli-debug-mode on\n", b"show cli level\n",
                                  b"expert-mode off\n", b"experimental-mode off\n",
                                  b"mcli-debug-mode off\n", b"operator\n", b"show cli level\n",
                                  b"user\n", b"show cli level\n", b"quit\n"],
          "item 4: mode flags in the prompt (x, e, d)")
        S(sock, "prompt_mcli_debug_default_worker", [b"prompt\n", b"mcli-debug-mode on\n", b"@1\n",
                                                      b"show cli level\n", b"quit\n"],
          "haproxy bug, not to copy: with mcli-debug-mode on and @1 as the default target, "
          "the master also sends mcli-debug-mode to the worker (pcli_parse_request tests "
          "*next_pid <= 0, not the default target), which answers Unknown command")
        S(sock, "prompt_timed", [b"prompt timed\n", b"show version\n", b"@1\n", b"show cli level\n",
                                  b"prompt timed\n", b"quit\n"], "item 3: prompt timed (3.0+)")
        S(sock, "prompt_i_p", [b"prompt p\n", b"show version\n", b"prompt i\n", b"show version\n",
                                b"prompt\n", b"quit\n"], "item 3: prompt i|p (3.2+)")
        S(sock, "prompt_n_bad", [b"prompt\n", b"prompt n\n", b"prompt x\n", b"prompt i\n",
                                  b"show version\n", b"prompt p\n", b"prompt p\n", b"quit\n"],
          "item 3: prompt n and a bad argument (3.2+: usage), i and p set the mode")
        S(sock, "prompt_at_at_1", [b"prompt\n", b"@@1\n", b"show version\n", b"quit\n",
                                    b"show version\n", b"quit\n"],
          "item 2: @@1 alone in prompt mode: the worker's own prompt until it closes (3.2+)")
        S(sock, "prompt_at_at_1_command", [b"prompt\n", b"@@1 show version\n", b"show version\n",
                                            b"quit\n"],
          "item 2: @@1 <command> in prompt mode: one answer, then the master again (3.2+)")
        S(sock, "at_at_1_interactive", [b"@@1\n", b"show version\n", b"quit\n", b"show version\n"],
          "item 2: @@1 alone without prompt mode: the worker in interactive mode (3.2+)")
        S(sock, "prompt_escape", [b"prompt\n", b"@1 add acl F x\\;y\n", b"@1 show acl F\n", b"quit\n"],
          "item 1: escapes in prompt mode")
        S(sock, "prompt_toggle_off", [b"prompt\n", b"show version\n", b"prompt\n", b"show version\n",
                                       b"quit\n"], "prompt toggled off again")
        S(sock, "prompt_payload", [b"prompt\n", b"@1 add acl F <<\n", b"p1\n", b"p2\n", b"\n",
                                    b"@1 show acl F\n", b"quit\n"], "payload mode ('+ ' prompt)")
        # After the last `show acl F` above: the entries added here change no other exchange.
        A(sock, "payload_oneshot", b"@1 add map F <<\nk1 v1\nk2 v;2\n\n@1 show acl F\n",
          "a payload forwarded to the worker, one-shot: its lines (';' included) up to the empty one")
        A(sock, "payload_master", b"show version <<\np1\n\nshow version\n",
          "a payload on a master command: taken up to the empty line, then the command answered")

        # ---- items 5, 6, 4: reloads ---------------------------------------------------------
        A(sock, "show_proc_start", b"show proc\n", "item 6: show proc at start")
        wcount = 1
        for i in (1, 2):
            prev_cur = self.current_worker(sock)
            got = one_shot(sock, b"reload\n")
            self.record("reload_ok_%d" % i, "one-shot", "item 5: good reload #%d" % i, b"reload\n", got)
            wnew = self.wait_worker_ready(sock, not_pid=prev_cur)
            wcount += 1
            self.facts["pids"]["worker%d" % wcount] = wnew
            self.add_subst(str(wnew), "@PID_W%d@" % wcount)
            if i == 1:
                A(sock, "show_proc_after_1_reload", b"show proc\n", "item 6: after one good reload")
        A(sock, "show_proc_after_2_reloads", b"show proc\n", "item 6: after 2 good reloads")
        self.write_config(bad=True)
        for i in (1, 2):
            _, mrow = self.workers(sock)
            m = mrow and re.search(r"\[failed: (\d+)\]", mrow)
            failed_before = int(m.group(1)) if m else 0
            got = one_shot(sock, b"reload\n")
            self.record("reload_failed_%d" % i, "one-shot", "item 5: failed reload #%d" % i,
                        b"reload\n", got)
            # 2.7+ answer when the reload has failed; 3.1+ (the worker loads the configuration)
            # may not count it in "[failed: N]": the answer is the event then.
            if not got.startswith(b"Success=0"):
                self.wait_master_after_failed_reload(sock, failed_before)
        A(sock, "show_proc_after_2_ok_2_failed", b"show proc\n", "item 6: after 2 good + 2 failed")
        S(sock, "prompt_reload_failed", [b"prompt\n", b"show version\n", b"@1 show version\n",
                                          b"expert-mode on\n", b"@1\n", b"quit\n"],
          "item 4: master[ReloadFailed]> prompt")
        A(sock, "at1_after_failed_reload", b"@1 show version\n", "forwarding after failed reloads")
        A(sock, "show_startup_logs_after_failed", b"show startup-logs\n", "startup logs of the failed load")
        A(sock, "mcli_debug_startup_logs_after_failed", b"mcli-debug-mode on; show startup-logs\n",
          "startup logs (mcli-debug-mode) after a failed load")
        # reload in prompt mode, while failing
        S(sock, "prompt_reload_failed_again", [b"prompt\n", b"reload\n"],
          "item 5: reload in prompt mode (failing config)")
        self.wait_for("the master after the prompt-mode reload",
                      lambda: self.workers(sock)[1] is not None)
        self.write_config()
        prev_cur = self.current_worker(sock)
        got = one_shot(sock, b"reload\n")
        self.record("reload_ok_after_failed", "one-shot", "item 5/6: good reload after failed ones",
                    b"reload\n", got)
        wnew = self.wait_worker_ready(sock, not_pid=prev_cur)
        wcount += 1
        self.facts["pids"]["worker%d" % wcount] = wnew
        self.add_subst(str(wnew), "@PID_W%d@" % wcount)
        A(sock, "show_proc_after_recovery", b"show proc\n",
          "item 6: does a good reload reset [failed: N]?")
        S(sock, "prompt_after_recovery", [b"prompt\n", b"show version\n", b"quit\n"],
          "item 4: does the [ReloadFailed] prompt clear after a good reload?")
        prev_cur = wnew
        S(sock, "prompt_reload_ok", [b"prompt\n", b"reload\n"], "item 5: good reload in prompt mode")
        wnew = self.wait_worker_ready(sock, not_pid=prev_cur)
        wcount += 1
        self.facts["pids"]["worker%d" % wcount] = wnew
        self.add_subst(str(wnew), "@PID_W%d@" % wcount)
        A(sock, "hard_reload", b"hard-reload\n", "hard-reload (2.9+)")

        # ---- item 8: SIGINT ----------------------------------------------------------------
        rc = self.stop(master, signal.SIGINT, "main master, SIGINT")
        self.flush_norm()

        # second master: SIGTERM exit code, -S fd@N, program section
        self.run_fd_and_program()

    def run_fd_and_program(self):
        # ---- item 7: -S fd@N: a unix listener bound here, passed as fd 3 ----------------------
        fdsock_path = os.path.join(self.tmp, "fd-master.sock")
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lst.bind(fdsock_path)
        lst.listen(16)
        lst.set_inheritable(True)
        self.write_config()
        err = open(os.path.join(self.tmp, "fdmaster.stderr"), "wb")
        fd = lst.fileno()
        # place it at fd 3 in the child
        p = subprocess.Popen([self.binary, "-W", "-S", "fd@3", "-f", "haproxy.cfg"],
                             cwd=self.tmp, env=self.env(), stdin=subprocess.DEVNULL, stdout=err,
                             stderr=err, pass_fds=(3,), start_new_session=True,
                             preexec_fn=(lambda: os.dup2(fd, 3)) if fd != 3 else None)
        err.close()
        lst.close()
        self.procs.append(p)
        self.facts["pids"]["fd_master"] = p.pid
        self.add_subst(str(p.pid), "@PID_FM@")
        try:
            w = self.wait_worker_ready(fdsock_path)
            self.add_subst(str(w), "@PID_FM_W1@")
            self.ask(fdsock_path, "fd_show_cli_sockets", b"show cli sockets\n", "item 7: -S fd@3")
            self.ask(fdsock_path, "fd_at1_show_version", b"@1 show version\n", "item 7: -S fd@3 forwards")
        finally:
            # ---- item 8: SIGTERM for comparison ----------------------------------------------
            self.stop(p, signal.SIGTERM, "fd master, SIGTERM")
        with open(os.path.join(self.tmp, "fdmaster.stderr"), "rb") as f:
            self.record("fd_master_stderr", "stderr", "item 7/8: the fd@3 master's output",
                        b"", f.read())

        # ---- item 9: program section -------------------------------------------------------
        self.write_config(program=True)
        # without -W
        r = subprocess.run([self.binary, "-c", "-f", "haproxy.cfg"], cwd=self.tmp, env=self.env(),
                           capture_output=True, timeout=WAIT)
        self.record("program_check_no_W", "stderr", "item 9: -c on a program section, no -W",
                    b"", r.stdout + r.stderr + b"<<exit %d>>\n" % r.returncode)
        r = subprocess.run([self.binary, "-W", "-c", "-f", "haproxy.cfg"], cwd=self.tmp,
                           env=self.env(), capture_output=True, timeout=WAIT)
        self.record("program_check_W", "stderr", "item 9: -W -c on a program section",
                    b"", r.stdout + r.stderr + b"<<exit %d>>\n" % r.returncode)
        try:
            r = subprocess.run([self.binary, "-f", "haproxy.cfg"], cwd=self.tmp, env=self.env(),
                               capture_output=True, timeout=15)
            self.record("program_run_no_W", "stderr", "item 9: a program section without -W",
                        b"", r.stdout + r.stderr + b"<<exit %d>>\n" % r.returncode)
        except subprocess.TimeoutExpired:
            self.record("program_run_no_W", "stderr", "item 9: a program section without -W",
                        b"", b"<<still running after 15 s; killed>>\n")
        psock = os.path.join(self.tmp, "prog-master.sock")
        pm = self.start("prog_master", ["-W", "-S", psock, "-f", "haproxy.cfg"])
        self.add_subst(str(pm.pid), "@PID_PM@")
        try:
            # haproxy 3.3+ has no program section: its master exits at once (output kept below)
            self.wait_for("the program master socket or its exit",
                          lambda: os.path.exists(psock) or pm.poll() is not None)
            if pm.poll() is not None:
                return
            w = self.wait_worker_ready(psock)
            self.add_subst(str(w), "@PID_PM_W1@")
            got = self.ask(psock, "program_show_proc", b"show proc\n", "item 9: show proc with a program")
            m = re.search(rb"# programs\n(\d+)", got)
            if m:
                self.add_subst(m.group(1).decode(), "@PID_PROG1@")
            got = one_shot(psock, b"reload\n")
            self.record("program_reload", "one-shot", "item 9: reload with a program", b"reload\n", got)
            w2 = self.wait_worker_ready(psock, not_pid=w)
            self.add_subst(str(w2), "@PID_PM_W2@")
            got = self.ask(psock, "program_show_proc_after_reload", b"show proc\n",
                           "item 9: the program after a reload (no start-on-reload)")
            for m in re.finditer(rb"\n(\d+) +sleeper", got):
                self.add_subst(m.group(1).decode(), "@PID_PROG2@")
        finally:
            self.stop(pm, signal.SIGTERM, "program master, SIGTERM")
            with open(os.path.join(self.tmp, "prog_master.stderr"), "rb") as f:
                self.record("program_master_stderr", "stderr",
                            "item 9: the output of a -W master with a program section", b"", f.read())
            self.flush_norm()

    def write_index(self):
        with open(os.path.join(self.out, "facts.json"), "w") as f:
            json.dump(self.facts, f, indent=2, sort_keys=True)
            f.write("\n")
        with open(os.path.join(self.out, "exchanges.txt"), "w") as f:
            f.write("# name | mode | what it shows  (mode one-shot: NAME.in sent then write shutdown;\n"
                    "# prompt: NAME.in's lines one at a time, each read up to the prompt; stderr: a\n"
                    "# process's output). NAME.norm = NAME.txt normalized (capture.py: normalize).\n")
            for name, mode, what in self.index:
                f.write("%s | %s | %s\n" % (name, mode, what))


def main():
    if len(sys.argv) not in (2, 3):
        die("usage: capture.py HAPROXY_BINARY [OUT_DIR]")
    out_root = sys.argv[2] if len(sys.argv) == 3 else os.path.dirname(os.path.abspath(__file__))
    c = Capture(sys.argv[1], out_root)
    try:
        c.run()
    finally:
        c.cleanup()
        c.flush_norm()
        c.write_index()
        # keep the processes' own output (stderr of each master) next to the transcripts
        for name in ("master", "prog_master"):
            src = os.path.join(c.tmp, name + ".stderr")
            if os.path.exists(src):
                with open(src, "rb") as f:
                    data = f.read()
                with open(os.path.join(c.out, name + ".stderr.txt"), "wb") as f:
                    f.write(data)
                with open(os.path.join(c.out, name + ".stderr.norm"), "wb") as f:
                    f.write(c.normalize(data))
        for name in os.listdir(c.tmp):
            p = os.path.join(c.tmp, name)
            if os.path.isfile(p) or os.path.islink(p) or p.endswith(".sock"):
                try:
                    os.unlink(p)
                except OSError:
                    pass
        try:
            os.rmdir(c.tmp)
        except OSError:
            pass
    print("captured haproxy %s into %s" % (c.version, c.out))


if __name__ == "__main__":
    main()
