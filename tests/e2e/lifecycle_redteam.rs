//! The session lifecycle (proxy/driver.rs) against agents that try to
//! outlast it: sessions cut by a daemon stop or a policy reload must end,
//! and the daemon with them, whatever the agent does. Debian's real sshd,
//! the unmodified OpenSSH client, every agent redirected by the real
//! kernel hooks.

mod harness;

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use harness::{ssh_gateway::*, *};

/// An agent process, killed (and let go on, if stopped) whatever the test
/// does.
struct AgentProcess(Child);

impl AgentProcess {
    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.0.id() as i32, sig) };
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        self.signal(libc::SIGCONT);
        let _ = self.0.wait();
    }
}

/// An allowed `ssh host sleep 600` as an agent, running upstream.
fn long_ssh_command(s: &Setup) -> AgentProcess {
    let child = s
        .ssh_agent(&[], &["sleep 600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh");
    let agent = AgentProcess(child);
    s.env
        .wait_event("the session opened", |e| e["kind"] == "session_opened");
    // An exec's record is written when it ends: give the command time to
    // start upstream.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        s.env.count_events(|e| e["kind"] == "command") == 0,
        "the command was refused or ended: {:#?}",
        s.env.events()
    );
    agent
}

/// Attack: an agent runs an allowed command over ssh, then its client is
/// stopped (SIGSTOP: it neither reads nor closes its socket). At SIGTERM
/// the daemon gives sessions the grace period (1 s here), then cuts them;
/// the SSH session is told to disconnect, russh then waits for the agent
/// to close its side (up to its hour of inactivity), and the driver waits
/// for that before `session_closed`: the daemon does not stop.
#[test]
fn a_stopped_ssh_agent_does_not_hold_up_daemon_shutdown() {
    let _g = serial();
    let Some(mut s) = setup_with(Options {
        allow: &["sleep"],
        ..Default::default()
    }) else {
        return;
    };
    let agent = long_ssh_command(&s);
    agent.signal(libc::SIGSTOP);

    let stopping = Instant::now();
    s.daemon.stop();
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "the daemon took {took:?} to stop (killed after 15 s) with a stopped ssh agent:\n{}",
        s.daemon.log_text()
    );
    let events = s.env.events();
    let cut = events
        .iter()
        .find(|e| e["kind"] == "command" && e["text"] == "sleep 600")
        .unwrap_or_else(|| panic!("the command's record: {events:#?}"));
    assert!(
        cut["reason"]
            .as_str()
            .is_some_and(|r| r.contains("shutting down")),
        "{cut:#}"
    );
    assert!(
        events.iter().any(|e| e["kind"] == "session_closed"),
        "the SSH session's closing record"
    );
    drop(agent);
}

/// The look-alike of the attack above, through the same cut: a policy
/// reload that forbids connect ends a running ssh command at once, the
/// client told why and exiting, the command and the session recorded as
/// cut by the reload; the daemon goes on.
#[test]
fn a_reload_that_forbids_connect_ends_a_running_ssh_command() {
    let _g = serial();
    let Some(s) = setup_with(Options {
        allow: &["sleep"],
        ..Default::default()
    }) else {
        return;
    };
    let mut agent = long_ssh_command(&s);
    std::fs::write(
        s.dir.path().join("policies").join("zz-no-connect.cedar"),
        "@id(\"no-connect\")\nforbid (principal, action == Action::\"connect\", resource);\n",
    )
    .expect("write policy");
    let cut = Instant::now();
    let status = wait_until(Duration::from_secs(20), || {
        agent.0.try_wait().ok().flatten()
    });
    let status = status.expect("ssh still runs after the reload");
    let mut stderr = String::new();
    if let Some(mut e) = agent.0.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(!status.success(), "{status}: {stderr}");
    assert!(
        cut.elapsed() < Duration::from_secs(10),
        "{:?} to end the command",
        cut.elapsed()
    );
    // The client exits once told; the records follow within moments (the
    // command's after the channel ends, the close after every task).
    let command = s.env.wait_event("the command's record", |e| {
        e["kind"] == "command" && e["text"] == "sleep 600"
    });
    let reason = command["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("no-connect"), "{command:#}");
    let closed = s
        .env
        .wait_event("session_closed", |e| e["kind"] == "session_closed");
    assert!(
        closed["reason"]
            .as_str()
            .is_some_and(|r| r.contains("reloaded")),
        "{closed:#}"
    );
    // The daemon serves on: a new session is refused by the new policies.
    let out = s.ssh_within("sleep 1", 30);
    assert!(!out.status.success());
}
