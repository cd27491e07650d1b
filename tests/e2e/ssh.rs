//! The SSH gateway against Debian's sshd and the unmodified OpenSSH client,
//! every agent redirected by the real kernel hooks.

mod harness;

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use harness::{ssh_gateway::*, sshd::*, *};

#[test]
fn exec_runs_with_the_held_key_and_policy_decides() {
    let _g = serial();
    let Some(s) = setup() else { return };
    // An allowed program (git-upload-pack is on the list; echo is not, so
    // use a listed deploy command name the host does not have: the exit
    // status comes back as it is).
    let out = s.ssh("git-upload-pack --help");
    assert_ne!(out.status.code(), Some(126), "{}", text(&out));
    assert!(!text(&out).contains("denied by policy"), "{}", text(&out));

    // Denied outright: exit 126 and the reason on stderr.
    let out = s.ssh("rm -rf /srv/app");
    assert_eq!(out.status.code(), Some(126), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("denied by policy ssh-recursive-delete"),
        "{}",
        text(&out)
    );

    // Held, approved, run: its output and exit status come back.
    let (out, id) = s.ssh_answered("echo ok; exit 3", "approve");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok\n",
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("waiting for approval {id}")),
        "{}",
        text(&out)
    );

    // Held and denied by a human: never run, 126 and why.
    let (out, _) = s.ssh_answered("touch /tmp/blastgate-never-$$", "deny");
    assert_eq!(out.status.code(), Some(126), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("denied by policy ssh-unlisted-command"),
        "{}",
        text(&out)
    );

    // A command that ran is recorded when its channel ends, after the
    // agent has its exit status; a refused one at once. Wait for all four.
    let commands = s
        .env
        .wait_events("of commands", 4, |e| e["kind"] == "command");
    assert_eq!(commands.len(), 4, "{commands:#?}");
    let events = s.env.events();
    // The approved command's record: who approved, how it ended.
    let ran = commands
        .iter()
        .find(|e| e["text"] == "echo ok; exit 3")
        .expect("the approved command's record");
    assert_eq!(ran["verdict"], "allow", "{ran:#}");
    assert_eq!(ran["exit_status"], 3, "{ran:#}");
    assert_eq!(ran["bytes_to_agent"], 3, "{ran:#}");
    assert!(ran["approver"].is_string(), "{ran:#}");
    // Its output excerpt is replay data of the session.
    assert!(
        events.iter().any(|e| e["kind"] == "io"
            && e["session_id"] == ran["session_id"]
            && e["io"]["data"] == "ok\n"),
        "{events:#?}"
    );

    // The key blastgate holds is in nothing recorded or logged.
    let spool: String = events.iter().map(|e| e.to_string()).collect();
    s.assert_no_key_in("the spool", &spool);
    s.assert_no_key_in("the daemon log", &s.daemon.log_text());
}

/// Data from the agent reaches the exec'd program in order, with its EOF:
/// `scp -O` (the legacy protocol: `scp -t` on the server, allowed by the
/// shipped policies) copies a file that arrives byte for byte.
#[test]
fn scp_legacy_mode_copies_a_file_through_the_gateway() {
    let _g = serial();
    let Some(s) = setup() else { return };
    let dir = UserTempDir::new(&s.user);
    let local = tempfile::NamedTempFile::new().expect("file");
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(local.path(), &data).expect("write");
    let port = s.sshd.port().to_string();
    let remote = format!("{}@127.0.0.2:{}/copied", s.user, dir.path().display());
    let mut args = ssh_options(&s.known_hosts);
    args.extend(["-O".to_string(), "-P".to_string(), port]);
    args.push(local.path().display().to_string());
    args.push(remote);
    let mut c = s.env.agent("claude", &[SCP]);
    c.args(&args);
    let out = output_within(&mut c, Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out));
    let copied = std::fs::read(dir.path().join("copied")).expect("the copied file");
    assert!(copied == data, "the copy differs ({} bytes)", copied.len());
}

/// Tunnels are refused and recorded while the session's command completes.
#[test]
fn forwarding_is_refused_and_the_command_still_runs() {
    let _g = serial();
    let Some(s) = setup() else { return };
    let port = s.sshd.port().to_string();
    let target = format!("{}@127.0.0.2", s.user);
    let ssh = ssh_command(
        &s.known_hosts,
        &[
            "-o",
            "ExitOnForwardFailure=no",
            "-R",
            "0:127.0.0.1:9",
            "-p",
            &port,
            &target,
            "git-upload-pack --version",
        ],
    );
    let mut c = s.env.agent("claude", &[]);
    c.arg(ssh.get_program()).args(ssh.get_args());
    let out = output_within(&mut c, Duration::from_secs(60));
    let t = text(&out);
    assert!(t.contains("remote port forwarding failed"), "{t}");
    assert_ne!(out.status.code(), Some(126), "{t}");
    assert_ne!(out.status.code(), Some(255), "the command ran: {t}");
    // A stdio forward (-W) opens a direct-tcpip channel: refused.
    let ssh = ssh_command(
        &s.known_hosts,
        &["-W", "127.0.0.2:22", "-p", &port, &target],
    );
    let mut c = s.env.agent("claude", &[]);
    c.arg(ssh.get_program()).args(ssh.get_args());
    let out = output_within(&mut c, Duration::from_secs(60));
    assert!(!out.status.success(), "{}", text(&out));
    let remote = s.env.wait_event("the -R refusal", |e| {
        e["action"] == "ssh:forward"
            && e["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("tcpip-forward"))
    });
    assert_eq!(remote["verdict"], "deny", "{remote:#}");
    assert_eq!(remote["policy_id"], "ssh-no-forwarding", "{remote:#}");
    let jump = s.env.wait_event("the -W refusal", |e| {
        e["action"] == "ssh:forward" && e["text"] == "direct-tcpip 127.0.0.2:22"
    });
    assert_eq!(jump["verdict"], "deny", "{jump:#}");
}

/// What deploy jobs do over SSH, each through the gateway with the
/// unmodified client, `StrictHostKeyChecking=yes` and no key of the
/// agent's own: scp in both protocols both ways, an sftp batch (whose
/// file operations are recorded), rsync both ways, git push and clone.
#[test]
fn file_transfer_tools_work_through_the_gateway() {
    let _g = serial();
    let Some(s) = setup() else { return };
    let remote = UserTempDir::new(&s.user);
    let local = s.dir.path().join("payload.bin");
    random_file(&local, 3 << 20);
    let want = sha256(&local);
    let port = s.sshd.port().to_string();
    let scp_like = |program: &str, args: &[&str]| {
        let out = s.transfer(program, args);
        assert!(out.status.success(), "{program} {args:?}: {}", text(&out));
        out
    };

    // scp in 9.2 speaks SFTP by default; -O is the legacy protocol.
    for (mode, flags) in [("sftp", &[][..]), ("legacy", &["-O"][..])] {
        let up = remote.path().join(format!("up-{mode}.bin"));
        let target = format!("{}:{}", s.dest(), up.display());
        let mut args: Vec<&str> = flags.to_vec();
        args.extend(["-q", local.to_str().expect("utf-8"), &target]);
        scp_like(SCP, &args);
        assert_eq!(sha256(&up), want, "scp ({mode}) upload");
        let back = s.dir.path().join(format!("back-{mode}.bin"));
        let mut args: Vec<&str> = flags.to_vec();
        args.extend(["-q", &target, back.to_str().expect("utf-8")]);
        scp_like(SCP, &args);
        assert_eq!(sha256(&back), want, "scp ({mode}) download");
    }

    let batch = s.dir.path().join("sftp.batch");
    let up = remote.path().join("sftp-up.bin");
    let moved = remote.path().join("sftp-moved.bin");
    let back = s.dir.path().join("sftp-back.bin");
    std::fs::write(
        &batch,
        format!(
            "put {local} {up}\nls -l {up}\nrename {up} {moved}\nget {moved} {back}\nmkdir {dir}/made\nrmdir {dir}/made\nrm {moved}\n",
            local = local.display(),
            up = up.display(),
            moved = moved.display(),
            back = back.display(),
            dir = remote.path().display(),
        ),
    )
    .expect("write batch");
    let out = scp_like(SFTP, &["-b", batch.to_str().expect("utf-8"), &s.dest()]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&(3u32 << 20).to_string()),
        "sftp ls -l: {}",
        text(&out)
    );
    assert_eq!(sha256(&back), want, "sftp get");
    assert!(!moved.exists(), "sftp rm");
    let up_s = up.display().to_string();
    let moved_s = moved.display().to_string();
    for want_op in [
        format!("write {up_s}"),
        format!("rename {up_s} -> {moved_s}"),
        format!("read {moved_s}"),
        format!("mkdir {}/made", remote.path().display()),
        format!("rmdir {}/made", remote.path().display()),
        format!("remove {moved_s}"),
    ] {
        s.env.wait_event(&format!("sftp {want_op:?}"), |e| {
            e["action"] == "ssh:sftp" && e["text"].as_str().is_some_and(|t| t.starts_with(&want_op))
        });
    }

    // rsync runs `rsync --server` on the far side: on the allow-list.
    let tree = s.dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).expect("mkdir");
    random_file(&tree.join("a.bin"), 300_000);
    std::fs::write(tree.join("sub/c.txt"), "hello\n").expect("write");
    let e = ssh_command_line(&s.known_hosts, &["-p", &port]);
    let rsync = |from: &str, to: &str| {
        let mut c = s
            .env
            .agent("claude", &["rsync", "-a", "--delete", "-e", &e, from, to]);
        let out = output_within(&mut c, Duration::from_secs(120));
        assert!(out.status.success(), "rsync {from} {to}: {}", text(&out));
    };
    let target = format!("{}:{}/tree/", s.dest(), remote.path().display());
    rsync(&format!("{}/", tree.display()), &target);
    assert_eq!(
        sha256(&remote.path().join("tree/a.bin")),
        sha256(&tree.join("a.bin"))
    );
    let tree_back = s.dir.path().join("tree-back");
    rsync(&target, &format!("{}/", tree_back.display()));
    assert_eq!(
        std::fs::read_to_string(tree_back.join("sub/c.txt")).expect("rsync back"),
        "hello\n"
    );

    // git: git-receive-pack and git-upload-pack on the far side.
    let repo = BareRepo::new(&s.user);
    let url = format!("ssh://{}:{port}{}", s.dest(), repo.path().display());
    let ssh = ssh_command_line(&s.known_hosts, &[]);
    let git = |dir: &Path, args: &[&str]| {
        let mut c = s.env.agent("claude", &["git"]);
        git_over_ssh(&mut c, &ssh);
        c.args(args).current_dir(dir);
        let out = output_within(&mut c, Duration::from_secs(120));
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
    };
    let first = s.dir.path().join("first");
    std::fs::create_dir(&first).expect("mkdir");
    git(&first, &["init", "-q"]);
    std::fs::write(first.join("README"), "deployed by an agent\n").expect("write");
    git(&first, &["add", "README"]);
    git(&first, &["commit", "-q", "-m", "first"]);
    // A branch of its own: pushes to main wait for a human (git.cedar).
    git(&first, &["push", "-q", &url, "main:deploy"]);
    let second = s.dir.path().join("second");
    git(
        s.dir.path(),
        &[
            "clone",
            "-q",
            "-b",
            "deploy",
            &url,
            second.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(second.join("README")).expect("cloned README"),
        "deployed by an agent\n"
    );

    // Every one of those ran without a human and without a refusal.
    let refused = s.env.count_events(|e| {
        e["kind"] == "command" && e["verdict"] != "allow" || e["kind"] == "approval_requested"
    });
    assert_eq!(refused, 0, "{:#?}", s.env.events());
    s.assert_no_key_in("the daemon log", &s.daemon.log_text());
}

/// Two-way bulk transfers do not deadlock the relay, and the proxy's
/// memory stays bounded whichever side is slower: 300 MB in, and 300 MB
/// in and back out at once.
#[test]
fn bulk_transfers_both_ways_keep_proxy_memory_bounded() {
    let _g = serial();
    let Some(s) = setup_with(Options {
        allow: &["cat"],
        ..Default::default()
    }) else {
        return;
    };
    const SIZE: usize = 300 << 20;
    let big = s.dir.path().join("big.bin");
    random_file(&big, SIZE);
    let want = sha256(&big);
    let rss_before = vm_kib(s.daemon.pid(), "VmRSS");

    let mut c = s.ssh_agent(&[], &["cat > /dev/null"]);
    c.stdin(std::fs::File::open(&big).expect("open"))
        .stdout(Stdio::null());
    // A redirection is a shell feature: held, approved here.
    succeeds_within(c, Duration::from_secs(300), Some(&s));

    let back = s.dir.path().join("back.bin");
    let mut c = s.ssh_agent(&[], &["cat"]);
    c.stdin(std::fs::File::open(&big).expect("open"))
        .stdout(std::fs::File::create(&back).expect("create"));
    succeeds_within(c, Duration::from_secs(300), None);
    assert_eq!(sha256(&back), want, "ssh cat round trip");

    let peak = vm_kib(s.daemon.pid(), "VmHWM");
    eprintln!(
        "bulk transfer: daemon RSS before {} MiB, peak {} MiB (2 x {} MiB moved)",
        rss_before / 1024,
        peak / 1024,
        SIZE >> 20
    );
    // Bounded means independent of the transfer size (about 90 MiB here
    // at 50 MiB and at 300 MiB): far below one copy of the file.
    assert!(
        peak < 160 * 1024,
        "daemon peak RSS {} MiB for a {} MiB transfer",
        peak / 1024,
        SIZE >> 20
    );
    // The command's record is written when its channel ends, after the
    // client has its last byte.
    s.env
        .wait_event("cat's record with every byte counted", |e| {
            e["kind"] == "command" && e["text"] == "cat" && e["bytes_to_agent"] == SIZE as u64
        });
}

/// Runs `c` (stdin and stdout as set) to success, or fails the test when
/// it fails or has not finished in time (a deadlocked relay), killing it.
/// With `approve`, the request it holds is approved first.
fn succeeds_within(mut c: Command, timeout: Duration, approve: Option<&Setup>) {
    let mut child = c.stderr(Stdio::piped()).spawn().expect("spawn");
    if let Some(s) = approve {
        let id = s.pending_approval();
        s.approvals("approve", &id);
    }
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let Some(status) = wait_until(timeout, || child.try_wait().ok().flatten()) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{c:?} did not finish within {timeout:?}");
    };
    let err = reader.join().unwrap_or_default();
    assert!(status.success(), "{c:?}: {status}: {err}");
}

/// A field of /proc/PID/status, in KiB.
fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// An interactive shell, fed from stdin as an agent would: held until a
/// human approves, then recorded (keystrokes, output, window size) with
/// secrets masked, replayed from ClickHouse, exported as asciicast.
#[test]
fn interactive_shell_is_held_recorded_masked_and_replayed() {
    let _g = serial();
    let Some(url) = clickhouse_url() else { return };
    let db = TestDatabase::new(&url);
    let Some(s) = setup_with(Options {
        clickhouse: Some(&db),
        ..Default::default()
    }) else {
        return;
    };
    let remote = UserTempDir::new(&s.user);
    let remote_key = remote.path().join("id_ed25519");
    let out = Command::new(SSH_KEYGEN)
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&remote_key)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success(), "{}", text(&out));
    let status = Command::new("chown")
        .arg(&s.user)
        .arg(&remote_key)
        .status()
        .expect("chown");
    assert!(status.success());
    let remote_key_lines: Vec<String> = std::fs::read_to_string(&remote_key)
        .expect("key")
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::to_string)
        .collect();
    let mut child = s
        .ssh_agent(&["-tt"], &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh -tt");
    let id = s.pending_approval();
    s.approvals("approve", &id);
    let mut stdin = child.stdin.take().expect("stdin");
    // The AWS key is built by the shell, so only the output carries it;
    // the private key (a throwaway one on the host) spans many packets.
    let typed = format!(
        "echo hello-$((6*7))\nprintf 'AKIA%s\\n' IOSFODNN7EXAMPLF\ncat {}\nexit 0\n",
        remote_key.display()
    );
    stdin.write_all(typed.as_bytes()).expect("type");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let status = wait_until(Duration::from_secs(60), || child.try_wait().ok().flatten());
    drop(stdin);
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the interactive session did not end");
    };
    let seen = String::from_utf8_lossy(&reader.join().expect("reader")).into_owned();
    assert!(status.success(), "{status}: {seen}");
    assert!(seen.contains("hello-42"), "{seen}");
    assert!(
        seen.contains("AKIAIOSFODNN7EXAMPLF"),
        "the agent sees its output unmasked: {seen}"
    );

    // The whole recording reaches ClickHouse.
    let session = recorded_shell(&db);
    let config = s.dir.path().join("cli.toml");
    std::fs::write(&config, db.config()).expect("config");
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .arg("-c")
            .arg(&config)
            .output()
            .expect("blastgate");
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        out
    };
    let out = cli(&["sessions", "replay", &session, "--speed", "50"]);
    let picture = String::from_utf8_lossy(&out.stdout);
    assert!(picture.contains("echo hello-$((6*7))"), "{picture}");
    assert!(picture.contains("hello-42"), "{picture}");
    assert!(!picture.contains("AKIAIOSFODNN7EXAMPLF"), "{picture}");
    let decisions = String::from_utf8_lossy(&out.stderr);
    assert!(
        decisions.contains("action=\"ssh:shell\""),
        "the decision on stderr: {decisions}"
    );

    let cast = s.dir.path().join("session.cast");
    cli(&[
        "sessions",
        "export",
        &session,
        "--asciicast",
        "-o",
        cast.to_str().expect("utf-8"),
    ]);
    let cast_text = std::fs::read_to_string(&cast).expect("cast");
    let mut lines = cast_text.lines();
    let header: serde_json::Value =
        serde_json::from_str(lines.next().expect("header")).expect("header JSON");
    assert_eq!(header["version"], 2, "{header}");
    assert!(header["width"].as_u64().is_some_and(|w| w > 0), "{header}");
    assert!(header["height"].as_u64().is_some_and(|h| h > 0), "{header}");
    let mut last = 0.0;
    let mut codes = std::collections::BTreeSet::new();
    for line in lines {
        let ev: serde_json::Value = serde_json::from_str(line).expect("event JSON");
        let at = ev[0].as_f64().expect("time");
        assert!(at >= last, "events in order: {line}");
        last = at;
        let code = ev[1].as_str().expect("code");
        assert!(["o", "i", "r", "m"].contains(&code), "{line}");
        assert!(ev[2].is_string(), "{line}");
        codes.insert(code.to_string());
    }
    // No "r": `ssh -tt` from a script asks for a 0x0 terminal, a resize
    // players fail on, so the export leaves it out (the header has a size).
    assert!(
        ["o", "i", "m"].iter().all(|c| codes.contains(*c)),
        "{codes:?}"
    );
    assert!(!cast_text.contains("AKIAIOSFODNN7EXAMPLF"));
    // asciinema itself reads it back, when the setup installed it.
    if let Some(asciinema) = asciinema() {
        let out = Command::new(asciinema)
            .arg("cat")
            .arg(&cast)
            .output()
            .expect("asciinema cat");
        assert!(out.status.success(), "asciinema cat: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("hello-42"));
    }

    let io = db.query(&format!(
        "SELECT data FROM {{db}}.io FINAL WHERE session_id = '{session}' FORMAT TSVRaw"
    ));
    assert!(!io.contains("AKIAIOSFODNN7EXAMPLF"), "{io}");
    assert!(
        seen.contains(&remote_key_lines[0]),
        "the agent saw the key it printed: {seen}"
    );
    for line in &remote_key_lines {
        assert!(
            !io.contains(line.as_str()),
            "a printed private key was recorded: {io}"
        );
    }
    assert!(io.contains("****"), "{io}");
    s.assert_no_key_in("the io table", &io);
    s.assert_no_key_in("the asciicast", &cast_text);
    s.assert_no_key_in("the daemon log", &s.daemon.log_text());
}

/// A program that closes its output and exits later: the server sends
/// EOF at once and the exit status after. A ControlMaster (as Ansible
/// runs ssh) answers that EOF with CLOSE for its mux client; the exit
/// status must still reach the client, as it does direct, and not be lost
/// to a CLOSE the gateway sent back first (the mux client then exits
/// 255). Beside it, a program that exits as it closes.
#[test]
fn the_exit_status_reaches_a_mux_client_after_an_early_eof() {
    let _g = serial();
    let scripts = tempfile::tempdir().expect("tempdir");
    let late = scripts.path().join("late-exit.sh");
    let prompt = scripts.path().join("prompt-exit.sh");
    std::fs::write(
        &late,
        "#!/bin/sh\necho done\nexec >&- 2>&-\nsleep 1\nexit 3\n",
    )
    .expect("script");
    std::fs::write(&prompt, "#!/bin/sh\necho done\nexit 4\n").expect("script");
    for path in [scripts.path(), &late, &prompt] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
    let (late_s, prompt_s) = (late.display().to_string(), prompt.display().to_string());
    let Some(s) = setup_with(Options {
        allow_paths: &[&late_s, &prompt_s],
        ..Default::default()
    }) else {
        return;
    };
    let upstream_known = s.dir.path().join("upstream_known_hosts");
    let port = s.sshd.port().to_string();
    let key = s.key.display().to_string();
    let dest = s.dest();
    for through in [false, true] {
        let control = s.dir.path().join(format!("cm-{through}.sock"));
        let control_opt = format!("ControlPath={}", control.display());
        let master_args = ["-M", "-N", "-o", &control_opt];
        let master = if through {
            s.ssh_agent(&master_args, &[])
        } else {
            let mut args = vec!["-i", &key, "-p", &port, &dest];
            args.extend(master_args);
            ssh_command(&upstream_known, &args)
        };
        let master = ControlMaster::start(master, &control);
        let known = if through {
            &s.known_hosts
        } else {
            &upstream_known
        };
        for (script, status) in [(&late_s, 3), (&prompt_s, 4)] {
            for round in 0..3 {
                let mut c = ssh_command(known, &["-n", "-o", &control_opt, &dest, script]);
                let out = output_within(&mut c, Duration::from_secs(60));
                assert_eq!(
                    out.status.code(),
                    Some(status),
                    "{script}, through blastgate: {through}, round {round}: {}",
                    text(&out)
                );
                assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
            }
        }
        let mut exit = ssh_command(known, &["-o", &control_opt, "-O", "exit", &dest]);
        let _ = output_within(&mut exit, Duration::from_secs(20));
        drop(master);
    }
    for (script, status) in [(&late_s, 3), (&prompt_s, 4)] {
        let recorded = s.env.wait_events(&format!("of {script}"), 3, |e| {
            e["kind"] == "command" && e["text"] == script.as_str()
        });
        for e in &recorded {
            assert_eq!(e["exit_status"], status, "{e:#}");
        }
    }
}

/// The other side of holding the server's EOF: a program that closes its
/// output and then reads its input, for a client that writes only once
/// it has read the output to its end (paramiko's `stdout.read()` then
/// `stdin.write()`). Its input still open, the client gets the EOF at
/// once, as direct; held until the exit status, both would wait forever.
#[test]
fn a_client_that_writes_after_the_output_ends_is_not_stalled() {
    let _g = serial();
    let scripts = tempfile::tempdir().expect("tempdir");
    let script = scripts.path().join("reads-after-eof.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho ready\nexec >&- 2>&-\nread line\n[ \"$line\" = go ] && exit 5\nexit 1\n",
    )
    .expect("script");
    for path in [scripts.path(), &script] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
    let script_s = script.display().to_string();
    let Some(s) = setup_with(Options {
        allow_paths: &[&script_s],
        ..Default::default()
    }) else {
        return;
    };
    let mut child = s
        .ssh_agent(&[], &[&script_s])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        let _ = tx.send(out);
    });
    let out = rx.recv_timeout(Duration::from_secs(30));
    if out.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(
        out.as_deref(),
        Ok("ready\n"),
        "the output's EOF never reached the client"
    );
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("write");
    drop(stdin);
    let status = wait_until(Duration::from_secs(30), || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(status.and_then(|s| s.code()), Some(5));
}

/// The asciinema player `cargo xtask setup` installs, if it is there.
fn asciinema() -> Option<PathBuf> {
    let p = PathBuf::from("/opt/blastgate-tools/venv/bin/asciinema");
    if p.exists() {
        return Some(p);
    }
    blastgate::testing::skip("asciinema is not installed (cargo xtask setup installs it)");
    None
}

/// `-L` and `-A` are refused too; a session multiplexed by ControlMaster
/// runs several channels, each decided and recorded on its own; and the
/// client's keepalives are answered while a command runs.
#[test]
fn local_forwards_agent_forwarding_control_master_and_keepalives() {
    let _g = serial();
    let Some(s) = setup_with(Options {
        allow: &["sleep", "cat"],
        ..Default::default()
    }) else {
        return;
    };
    // -A with a real ssh-agent: the request is refused, the command runs.
    let agent_sock = s.dir.path().join("agent.sock");
    let mut ssh_agent = Command::new("/usr/bin/ssh-agent")
        .args(["-D", "-a"])
        .arg(&agent_sock)
        .stdout(Stdio::null())
        .spawn()
        .expect("ssh-agent");
    assert!(
        wait_until(Duration::from_secs(5), || agent_sock.exists().then_some(())).is_some(),
        "ssh-agent socket"
    );
    let mut c = s.ssh_agent(&["-A"], &["git-upload-pack --version"]);
    c.env("SSH_AUTH_SOCK", &agent_sock);
    let out = output_within(&mut c, Duration::from_secs(60));
    let _ = ssh_agent.kill();
    let _ = ssh_agent.wait();
    assert_ne!(
        out.status.code(),
        Some(255),
        "the command ran: {}",
        text(&out)
    );
    assert_ne!(out.status.code(), Some(126), "{}", text(&out));

    // -L: the listener is local; the tunnel is refused when used, and the
    // session stays up.
    let port = free_port();
    let mut tunnel = s
        .ssh_agent(&["-N", "-L", &format!("127.0.0.1:{port}:127.0.0.1:9")], &[])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh -L");
    let conn = wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    if let Some(mut conn) = conn {
        conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut buf = [0u8; 16];
        assert!(
            matches!(conn.read(&mut buf), Ok(0) | Err(_)),
            "a refused tunnel carries nothing"
        );
    }
    let recorded = wait_until(Duration::from_secs(10), || {
        s.env
            .events()
            .into_iter()
            .find(|e| e["text"] == "direct-tcpip 127.0.0.1:9")
    });
    assert!(
        tunnel.try_wait().expect("ssh -L").is_none(),
        "the session outlives the refusal"
    );
    let _ = tunnel.kill();
    let _ = tunnel.wait();
    let recorded = recorded.expect("the -L refusal recorded");
    assert_eq!(recorded["verdict"], "deny", "{recorded:#}");
    let agent_fwd = s
        .env
        .wait_event("the -A refusal", |e| e["text"] == "auth-agent ");
    assert_eq!(agent_fwd["verdict"], "deny", "{agent_fwd:#}");

    // ControlMaster: one connection, several channels.
    let control = s.dir.path().join("cm.sock");
    let control_opt = format!("ControlPath={}", control.display());
    let master = s.ssh_agent(
        &[
            "-M",
            "-N",
            "-o",
            &control_opt,
            // Dropped after about 3 s if nobody answers its keepalives,
            // well within the 6 s the commands run.
            "-o",
            "ServerAliveInterval=1",
            "-o",
            "ServerAliveCountMax=3",
        ],
        &[],
    );
    let master = ControlMaster::start(master, &control);
    let ran: Vec<Output> = (0..2)
        .map(|_| {
            let mut c = s.ssh_agent(&["-o", &control_opt], &["sleep 6"]);
            output_within(&mut c, Duration::from_secs(60))
        })
        .collect();
    let mut exit = ssh_command(
        &s.known_hosts,
        &["-o", &control_opt, "-O", "exit", &s.dest()],
    );
    let _ = output_within(&mut exit, Duration::from_secs(20));
    drop(master);
    for out in &ran {
        assert!(
            out.status.success(),
            "{}: {}\nmaster: {}",
            out.status,
            text(out),
            s.daemon
                .log_text()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // Each command's record is written when its channel ends, after the
    // client has its exit status.
    let sleeps = s.env.wait_events("allowing `sleep 6`", 2, |e| {
        e["text"] == "sleep 6" && e["verdict"] == "allow"
    });
    assert_eq!(sleeps.len(), 2, "{sleeps:#?}");
    assert_eq!(
        sleeps[0]["session_id"], sleeps[1]["session_id"],
        "both channels rode the master's one session"
    );
}

/// An upstream whose host key is not the configured one is refused: the
/// agent is told, the command never runs, and the record says why.
#[test]
fn an_upstream_host_key_mismatch_refuses_and_is_recorded() {
    let _g = serial();
    // Any valid key that is not the server's.
    let other = tempfile::tempdir().expect("tempdir");
    let path = other.path().join("k");
    let out = Command::new(SSH_KEYGEN)
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&path)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success());
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("pub");
    let pinned: Vec<&str> = public.split_whitespace().take(2).collect();
    let pinned = pinned.join(" ");
    let Some(s) = setup_with(Options {
        wrong_host_key: Some(&pinned),
        ..Default::default()
    }) else {
        return;
    };
    let out = s.ssh("git-upload-pack --version");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("host key does not match"),
        "{}",
        text(&out)
    );
    let failed = s
        .env
        .wait_event("the command's record", |e| e["kind"] == "command");
    assert_eq!(failed["verdict"], "error", "{failed:#}");
    assert!(
        failed["reason"]
            .as_str()
            .is_some_and(|r| r.contains("host key does not match the configured host_key")),
        "{failed:#}"
    );
}
