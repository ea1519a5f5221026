//! End-to-end: `--watch` with the real haproxy, under load. Each way a configuration is updated
//! (a write in place, an editor's rename over the file, the kubelet's `..data` swap of a
//! ConfigMap volume, a `-f` directory gaining and losing a `.cfg` file) reloads once per change,
//! fails no request, and the new configuration is what answers; an update that leaves what
//! haproxy reads the same (a touch, another ConfigMap key, a file haproxy skips) reloads
//! nothing; a broken configuration fails its reload, the old worker serves on, and the next
//! change reloads.
//!
//! "Once per change" without a quiet period: after each change's reload has ended, a marker
//! event that changes nothing haproxy reads is made, and the test waits for the master's log of
//! its comparison (`-V`: "what haproxy reads is unchanged (... marker ...)"). inotify reports
//! events in order and the master keeps one debounce timer, so by then every event of the
//! change has been compared; the reload counters (`show metrics`) must have grown by one.
mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A site answering `version` (a line) on 127.0.0.1:`port`.
fn site(port: u16, version: &str) -> String {
    format!(
        "global\n    maxconn 2000\n\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    timeout server 10s\n\n\
         frontend fe\n    bind 127.0.0.1:{port}\n    \
         http-request return status 200 content-type text/plain string \"{version}\\n\"\n"
    )
}

/// A configuration haproxy refuses (and hapmaster does not: haproxy's own `[ALERT]`).
fn broken(port: u16) -> String {
    site(port, "never") + "    no-such-keyword here\n"
}

/// `hapmaster_reloads_total` by result: (success, failure).
fn reloads(hm: &Hapmaster) -> (u64, u64) {
    let text = hm.cli("show metrics");
    let count = |result: &str| {
        let sample = format!("hapmaster_reloads_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&sample)?.parse().ok())
            .unwrap_or_else(|| panic!("no {sample} in:\n{text}"))
    };
    (count("success"), count("failure"))
}

/// Waits ([`EVENT`]) until a new connection gets `want` (the old worker may take a last one
/// while its soft stop is on its way).
fn wait_answer(port: u16, want: &str) {
    let mut last = None;
    let got = poll_until(EVENT, || {
        last = Some(http_get(format!("127.0.0.1:{port}").as_str()));
        matches!(&last, Some(Ok(body)) if body == want).then_some(())
    });
    assert!(
        got.is_some(),
        "127.0.0.1:{port} did not answer {want:?}: {last:?}"
    );
}

/// Waits for the master's `-V` line saying a comparison found nothing changed, among whose
/// events `marker` is.
fn wait_unchanged(hm: &Hapmaster, marker: &str) {
    let found = poll_until(EVENT, || {
        hm.stderr()
            .lines()
            .any(|l| l.contains("what haproxy reads is unchanged") && l.contains(marker))
            .then_some(())
    });
    assert!(
        found.is_some(),
        "no comparison without change mentioning {marker:?}:\n{}",
        hm.stderr()
    );
}

/// A new file in `dir` with a name haproxy never reads: an event, and no change.
fn marker_in(hm: &Hapmaster, dir: &Path, n: u32) {
    let path = dir.join(format!(".marker-{n}"));
    fs::write(&path, "x").unwrap();
    wait_unchanged(hm, &path.display().to_string());
}

/// The reload a change made has ended: `Serving` with a new worker, or `Reload failed`.
fn wait_reload_ended(hm: &mut Hapmaster, ok: bool) {
    if ok {
        hm.wait_notify(|d| has_line(d, "READY=1") && is_serving(d), EVENT);
    } else {
        hm.wait_notify(is_reload_failed, EVENT);
    }
}

fn start_load(port: u16) -> Load {
    Load::start(&[Target::parse(&format!("127.0.0.1:{port}"))], 6)
}

fn assert_no_failure(load: Load) {
    let report = load.stop();
    assert!(report.ok > 0, "{report}");
    assert_eq!(report.failed, 0, "{report}");
}

#[test]
fn a_file_written_in_place_or_renamed_over_reloads_once_each() {
    let port = free_port();
    let mut hm = Hapmaster::start_ready(site(port, "v1"), &["--watch", "-V"]);
    let cfg = hm.cfg_path.clone();
    let dir = hm.dir().to_path_buf();
    let load = start_load(port);

    // In place: truncate and write the same file.
    fs::write(&cfg, site(port, "v2")).unwrap();
    wait_reload_ended(&mut hm, true);
    wait_answer(port, "v2\n");
    marker_in(&hm, &dir, 1);
    assert_eq!(reloads(&hm), (1, 0));

    // An editor: a new file beside it, renamed over it.
    let swap = dir.join(".haproxy.cfg.swp");
    fs::write(&swap, site(port, "v3")).unwrap();
    fs::rename(&swap, &cfg).unwrap();
    wait_reload_ended(&mut hm, true);
    wait_answer(port, "v3\n");
    marker_in(&hm, &dir, 2);
    assert_eq!(reloads(&hm), (2, 0));

    // A touch (both times set, as touch(1) does: IN_ATTRIB) changes nothing haproxy reads.
    let now = SystemTime::now();
    let times = fs::FileTimes::new().set_accessed(now).set_modified(now);
    fs::File::open(&cfg).unwrap().set_times(times).unwrap();
    wait_unchanged(&hm, &format!("{} attributes changed", cfg.display()));
    assert_eq!(reloads(&hm), (2, 0));

    // Broken: that reload fails, the old worker serves on, and the same broken file is not
    // tried again on a touch.
    fs::write(&cfg, broken(port)).unwrap();
    wait_reload_ended(&mut hm, false);
    wait_answer(port, "v3\n");
    marker_in(&hm, &dir, 3);
    assert_eq!(reloads(&hm), (2, 1));
    assert!(
        hm.stderr().contains("configuration changed: "),
        "the log names what changed:\n{}",
        hm.stderr()
    );

    // Fixed: the next change reloads.
    fs::write(&swap, site(port, "v4")).unwrap();
    fs::rename(&swap, &cfg).unwrap();
    wait_reload_ended(&mut hm, true);
    wait_answer(port, "v4\n");
    marker_in(&hm, &dir, 4);
    assert_eq!(reloads(&hm), (3, 1));
    assert_no_failure(load);
}

/// A ConfigMap volume as the kubelet writes it (`AtomicWriter`): the files in `..<ts>/`,
/// `..data -> ..<ts>`, and for each key `<key> -> ..data/<key>`.
struct ConfigMap {
    mount: PathBuf,
    n: u32,
}

impl ConfigMap {
    fn new(mount: PathBuf, keys: &[(&str, &str)]) -> ConfigMap {
        fs::create_dir(&mount).unwrap();
        let mut cm = ConfigMap { mount, n: 0 };
        cm.update(keys);
        cm
    }

    fn ts(&self, n: u32) -> String {
        format!("..2026_11_29_16_30_{n:02}.12345678")
    }

    /// One update, as the kubelet makes it: a new timestamped directory with the payload, a
    /// symlink for each new key, `..data_tmp -> <new>` renamed over `..data`, the links of the
    /// keys that went removed, the old directory removed. Returns the new directory's path.
    fn update(&mut self, keys: &[(&str, &str)]) -> PathBuf {
        self.n += 1;
        let new = self.mount.join(self.ts(self.n));
        fs::create_dir(&new).unwrap();
        for (key, text) in keys {
            fs::write(new.join(key), text).unwrap();
        }
        for (key, _) in keys {
            let link = self.mount.join(key);
            if fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{key}"), &link).unwrap();
            }
        }
        let tmp = self.mount.join("..data_tmp");
        std::os::unix::fs::symlink(self.ts(self.n), &tmp).unwrap();
        fs::rename(&tmp, self.mount.join("..data")).unwrap();
        for entry in fs::read_dir(&self.mount).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if !name.starts_with("..") && !keys.iter().any(|(k, _)| *k == name) {
                fs::remove_file(self.mount.join(&name)).unwrap();
            }
        }
        if self.n > 1 {
            fs::remove_dir_all(self.mount.join(self.ts(self.n - 1))).unwrap();
        }
        new
    }
}

/// The kubelet's updates: each change of `haproxy.cfg` reloads once, an update of another key
/// reloads nothing, a broken one fails and the next reloads. `-f` names the mount (as
/// deploy/kubernetes does) or the `haproxy.cfg` symlink in it.
fn configmap_updates(f_names_the_file: bool) {
    let port = free_port();
    let dir = TestDir::new();
    let mut cm = ConfigMap::new(dir.join("etc"), &[("haproxy.cfg", &site(port, "v1"))]);
    let f = if f_names_the_file {
        cm.mount.join("haproxy.cfg")
    } else {
        cm.mount.clone()
    };
    let mut hm = Hapmaster::start_in(dir, f, &["--watch", "-V"]);
    hm.wait_serving(EVENT);
    let load = start_load(port);

    cm.update(&[("haproxy.cfg", &site(port, "v2"))]);
    wait_reload_ended(&mut hm, true);
    wait_answer(port, "v2\n");
    // Another key added, haproxy.cfg the same: an update, and no change.
    let same = cm.update(&[
        ("haproxy.cfg", &site(port, "v2")),
        ("hosts.map", "example.com be\n"),
    ]);
    wait_unchanged(&hm, &format!("{} created", same.display()));
    assert_eq!(reloads(&hm), (1, 0));

    cm.update(&[("haproxy.cfg", &broken(port))]);
    wait_reload_ended(&mut hm, false);
    wait_answer(port, "v2\n");
    let marker = cm.mount.join(format!(".marker-{}", cm.n));
    fs::write(&marker, "x").unwrap();
    wait_unchanged(&hm, &marker.display().to_string());
    assert_eq!(reloads(&hm), (1, 1));

    cm.update(&[("haproxy.cfg", &site(port, "v3"))]);
    wait_reload_ended(&mut hm, true);
    wait_answer(port, "v3\n");
    let marker = cm.mount.join(".marker-last");
    fs::write(&marker, "x").unwrap();
    wait_unchanged(&hm, &marker.display().to_string());
    assert_eq!(reloads(&hm), (2, 1));
    assert!(
        hm.stderr().contains(&format!(
            "configuration changed: {}",
            cm.mount.join("haproxy.cfg").display()
        )),
        "the log names the file that changed:\n{}",
        hm.stderr()
    );
    assert_no_failure(load);
}

#[test]
fn a_configmap_directory_reloads_once_per_kubelet_update() {
    configmap_updates(false);
}

#[test]
fn a_configmap_file_symlink_reloads_once_per_kubelet_update() {
    configmap_updates(true);
}

#[test]
fn a_directory_gaining_and_losing_a_cfg_file_reloads_once_each() {
    let port = free_port();
    let dir = TestDir::new();
    let conf = dir.join("conf.d");
    fs::create_dir(&conf).unwrap();
    // Which files are read shows in the answer: each sets the variable, the last one wins.
    let base = site(port, "x").replace("string \"x\\n\"", "lf-string \"%[env(HM_WATCH_V)]\\n\"");
    fs::write(
        conf.join("00-site.cfg"),
        format!("global\n    setenv HM_WATCH_V one\n\n{base}"),
    )
    .unwrap();
    let mut hm = Hapmaster::start_in(dir, conf.clone(), &["--watch", "-V"]);
    hm.wait_serving(EVENT);
    wait_answer(port, "one\n");
    let load = start_load(port);

    fs::write(
        conf.join("50-two.cfg"),
        "global\n    setenv HM_WATCH_V two\n",
    )
    .unwrap();
    wait_reload_ended(&mut hm, true);
    wait_answer(port, "two\n");
    marker_in(&hm, &conf, 1);
    assert_eq!(reloads(&hm), (1, 0));

    // Files haproxy skips in a directory: no change.
    fs::write(
        conf.join("notes.txt"),
        "global\n    setenv HM_WATCH_V three\n",
    )
    .unwrap();
    fs::write(
        conf.join("60.cfg.bak"),
        "global\n    setenv HM_WATCH_V three\n",
    )
    .unwrap();
    wait_unchanged(
        &hm,
        &format!("{} created", conf.join("60.cfg.bak").display()),
    );
    assert_eq!(reloads(&hm), (1, 0));

    fs::remove_file(conf.join("50-two.cfg")).unwrap();
    wait_reload_ended(&mut hm, true);
    wait_answer(port, "one\n");
    marker_in(&hm, &conf, 2);
    assert_eq!(reloads(&hm), (2, 0));

    fs::write(conf.join("90-bad.cfg"), "no-such-section here\n").unwrap();
    wait_reload_ended(&mut hm, false);
    wait_answer(port, "one\n");
    marker_in(&hm, &conf, 3);
    assert_eq!(reloads(&hm), (2, 1));

    // Removing the broken file is a change: it reloads (what runs is the same as before).
    fs::remove_file(conf.join("90-bad.cfg")).unwrap();
    wait_reload_ended(&mut hm, true);
    marker_in(&hm, &conf, 4);
    assert_eq!(reloads(&hm), (3, 1));
    wait_answer(port, "one\n");
    assert_no_failure(load);
}

/// A change while a reload is starting queues one more reload, run right after it. The
/// starting worker is held in its configuration's `lua-load`, reading a FIFO to its end: the
/// test opens the FIFO's other end once the worker waits on it, and closes it once the second
/// change is queued (no timing: the worker cannot be ready before that).
#[test]
fn a_change_during_a_reload_queues_one_more() {
    use std::os::unix::fs::OpenOptionsExt;
    let port = free_port();
    let dir = TestDir::new();
    let fifo = dir.join("gate");
    let cpath = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(cpath.as_ptr(), 0o600) }, 0);
    let lua = dir.join("gate.lua");
    fs::write(
        &lua,
        format!(
            "local f = io.open(\"{}\", \"r\")\nf:read(\"a\")\nf:close()\n",
            fifo.display()
        ),
    )
    .unwrap();
    let mut hm = Hapmaster::start_in(dir, site(port, "v1"), &["--watch", "-V"]);
    hm.wait_serving(EVENT);
    let load = start_load(port);
    let cfg = hm.cfg_path.clone();
    // Renamed over the file, never written in place: the gated worker has it open.
    let replace = |text: &str| {
        let tmp = cfg.with_extension("tmp");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, &cfg).unwrap();
    };

    replace(&(format!("global\n    lua-load {}\n\n", lua.display()) + &site(port, "v2")));
    // Opening the FIFO for writing without waiting succeeds once a reader has it open.
    let gate = poll_until(EVENT, || {
        fs::File::options()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .ok()
    });
    let gate = gate.unwrap_or_else(|| panic!("no worker opened {}", fifo.display()));
    replace(&site(port, "v3"));
    let queued = poll_until(EVENT, || {
        hm.stderr()
            .contains("reload requested while a worker is starting: it will run right after")
            .then_some(())
    });
    assert!(queued.is_some(), "no queued reload:\n{}", hm.stderr());
    drop(gate);
    wait_reload_ended(&mut hm, true);
    wait_reload_ended(&mut hm, true);
    wait_answer(port, "v3\n");
    marker_in(&hm, hm.dir(), 1);
    assert_eq!(reloads(&hm), (2, 0));
    assert_no_failure(load);
}

/// An upgrade in place (SIGURG) keeps watching: the new image compares once with what the current
/// worker was started from (no reload), then a change reloads, counted on from before.
#[test]
fn an_upgrade_in_place_keeps_watching() {
    let port = free_port();
    let mut hm = Hapmaster::start_ready(site(port, "v1"), &["--watch", "-V"]);
    let dir = hm.dir().to_path_buf();
    hm.write_config(&site(port, "v2"));
    wait_reload_ended(&mut hm, true);
    wait_answer(port, "v2\n");
    hm.signal(SIGURG);
    hm.wait_notify(|d| d.contains("upgraded in place"), EVENT);
    wait_unchanged(&hm, "after the upgrade in place");
    assert_eq!(reloads(&hm), (1, 0));
    hm.write_config(&site(port, "v3"));
    wait_reload_ended(&mut hm, true);
    wait_answer(port, "v3\n");
    marker_in(&hm, &dir, 1);
    assert_eq!(reloads(&hm), (2, 0));
}
