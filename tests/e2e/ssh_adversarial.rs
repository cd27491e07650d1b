//! The SSH gateway against an agent that tries every spelling: each
//! attack is a route that ran code or wrote a file without approval
//! through the shipped policies, beside the harmless look-alikes that must
//! keep working. Debian's real sshd, the unmodified OpenSSH client, every
//! agent redirected by the real kernel hooks.

mod harness;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

use harness::{ssh_gateway::*, sshd::*, *};

/// Files in the deploy user's home that the attacks below would plant or
/// change on a gateway that lets them: put back as they were on drop, so
/// a failing test leaves nothing that runs for the next one.
struct HomeGuard {
    saved: Vec<(PathBuf, Option<Vec<u8>>)>,
}

impl HomeGuard {
    fn new(user: &str, names: &[&str]) -> HomeGuard {
        let home = home_of(user);
        // Directories that exist already are the host's, not the attack's.
        let saved = names
            .iter()
            .filter(|n| !home.join(n).is_dir())
            .map(|n| {
                let p = home.join(n);
                let content = std::fs::read(&p).ok();
                (p, content)
            })
            .collect();
        HomeGuard { saved }
    }
}

impl Drop for HomeGuard {
    fn drop(&mut self) {
        for (path, content) in &self.saved {
            match content {
                Some(c) => {
                    // A hard link planted elsewhere must not keep the
                    // attacker's copy: replace the file, not its contents.
                    let _ = std::fs::remove_file(path);
                    let _ = std::fs::write(path, c);
                }
                None if path.is_dir() && !path.is_symlink() => {
                    let _ = std::fs::remove_dir_all(path);
                }
                None => {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

/// A file that exists once an attack's payload ran on the host.
struct Marker(PathBuf);

impl Marker {
    fn new(name: &str) -> Marker {
        let p = PathBuf::from(format!(
            "/tmp/blastgate-pwned-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&p);
        Marker(p)
    }

    /// A shell script that creates the marker.
    fn payload(&self, dir: &Path, name: &str) -> PathBuf {
        let script = dir.join(name);
        std::fs::write(
            &script,
            format!("#!/bin/sh\ntouch {}\necho deployed\n", self.0.display()),
        )
        .expect("write payload");
        script
    }

    fn ran(&self) -> bool {
        self.0.exists()
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn held_and_denied(s: &Setup, command: &str) -> Output {
    let (out, _) = s.ssh_answered(command, "deny");
    assert_eq!(out.status.code(), Some(126), "{command}: {}", text(&out));
    out
}

fn runs_without_approval(s: &Setup, command: &str) -> Output {
    let out = s.ssh_within(command, 30);
    assert_ne!(out.status.code(), Some(126), "{command}: {}", text(&out));
    assert!(
        !text(&out).contains("waiting for approval"),
        "{}",
        text(&out)
    );
    out
}

/// The allow-list named programs by their last path component, so an
/// uploaded `…/deploy.sh` or `./dir/git-upload-pack` ran as if it were the
/// listed program. Now a listed name means what the host's PATH gives for
/// it, and anything an agent uploaded is held.
#[test]
fn uploaded_look_alikes_of_listed_programs_are_held() {
    let _g = serial();
    let Some(s) = setup() else { return };
    let marker = Marker::new("lookalike");
    let remote = UserTempDir::new(&s.user);
    let payload = marker.payload(s.dir.path(), "payload.sh");
    let dir = remote.path().display().to_string();
    let rel = remote
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .expect("dir name")
        .to_string();
    let out = s.sftp_batch(&format!(
        "put {p} {dir}/deploy.sh\nchmod 755 {dir}/deploy.sh\nput {p} {dir}/git-upload-pack\nchmod 755 {dir}/git-upload-pack\n",
        p = payload.display()
    ));
    assert!(out.status.success(), "uploads: {}", text(&out));

    // Harmless: the real programs, by name and by their real path.
    runs_without_approval(&s, "git-upload-pack /nonexistent.git");
    runs_without_approval(&s, "/usr/bin/git-upload-pack /nonexistent.git");
    assert!(!marker.ran());

    for attack in [
        format!("{dir}/deploy.sh"),
        format!("./{rel}/git-upload-pack /srv/app.git"),
        format!("{rel}/git-upload-pack /srv/app.git"),
        format!("{dir}//./git-upload-pack /srv/app.git"),
    ] {
        held_and_denied(&s, &attack);
        assert!(!marker.ran(), "{attack} ran without approval");
    }
    s.env
        .wait_event("the look-alike deploy.sh held and denied", |e| {
            e["action"] == "ssh:exec"
                && e["text"] == format!("{dir}/deploy.sh")
                && e["policy_id"] == "ssh-unlisted-command"
                && e["verdict"] == "deny"
        });
}

/// An allow-listed absolute path runs; once an agent overwrote it, it no
/// longer counts as the listed program.
#[test]
fn an_allow_listed_path_overwritten_by_an_agent_is_held() {
    let _g = serial();
    let user = deploy_user();
    let tools = UserTempDir::new(&user);
    let tool = tools.path().join("release.sh");
    std::fs::write(&tool, "#!/bin/sh\necho released\n").expect("write tool");
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let owner =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(tools.path()).expect("stat"));
    std::os::unix::fs::chown(&tool, Some(owner), None).expect("chown");
    let tool_s = tool.display().to_string();
    let Some(s) = setup_with(Options {
        allow_paths: &[&tool_s],
        ..Default::default()
    }) else {
        return;
    };
    let out = runs_without_approval(&s, &tool_s);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "released\n");

    let marker = Marker::new("overwrite");
    let payload = marker.payload(s.dir.path(), "payload.sh");
    let out = s.sftp_batch(&format!("put {} {tool_s}\n", payload.display()));
    assert!(out.status.success(), "overwrite: {}", text(&out));
    held_and_denied(&s, &tool_s);
    assert!(
        !marker.ran(),
        "the overwritten program ran without approval"
    );
}

/// sshd runs `~/.ssh/rc` and bash reads `~/.bashrc` before every command,
/// even an allowed one: files like these, written through the allowed
/// sftp (directly, by rename, through links) or scp, ran the agent's code
/// at its next `git-upload-pack`. Ordinary uploads into home and
/// overwriting them keep working.
#[test]
fn files_that_run_on_their_own_cannot_be_written() {
    let _g = serial();
    let Some(s) = setup() else { return };
    let _home = HomeGuard::new(
        &s.user,
        &[".bashrc", ".profile", ".bash_profile", ".ssh", ".config"],
    );
    let home = home_of(&s.user);
    let bashrc_before = std::fs::read(home.join(".bashrc")).ok();
    let marker = Marker::new("autorun");
    let payload = marker.payload(s.dir.path(), "payload.sh");
    let p = payload.display().to_string();
    let remote = UserTempDir::new(&s.user);
    let dir = remote.path().display().to_string();
    let h = home.display().to_string();

    let out = s.sftp_batch(&format!(
        "-put {p} .bashrc\n\
         -put {p} {h}/.profile\n\
         -mkdir .ssh\n\
         -put {p} .ssh/rc\n\
         -put {p} ./x/../.ssh//rc\n\
         -put {p} {dir}/staged\n\
         -rename {dir}/staged .bash_profile\n\
         -ln -s {h}/.bashrc {dir}/soft\n\
         -ln {h}/.bashrc {dir}/hard\n\
         -mkdir .config\n\
         -mkdir .config/systemd\n\
         put {p} {dir}/harmless.txt\n\
         put {p} {dir}/harmless.txt\n\
         put {p} harmless-in-home-{pid}.txt\n\
         rm harmless-in-home-{pid}.txt\n",
        pid = std::process::id()
    ));
    assert!(out.status.success(), "sftp batch: {}", text(&out));
    assert!(
        text(&out).contains("Permission denied") || text(&out).contains("denied by policy"),
        "{}",
        text(&out)
    );
    // scp in both protocols: sftp underneath, and the legacy sink.
    for flags in [&[][..], &["-O"][..]] {
        let target = format!("{}:.bashrc", s.dest());
        let mut args: Vec<&str> = flags.to_vec();
        args.extend(["-q", &p, &target]);
        let out = s.transfer(SCP, &args);
        assert!(
            !out.status.success(),
            "scp {flags:?} .bashrc: {}",
            text(&out)
        );
    }

    // The next allowed command runs with nothing of the agent's before it.
    runs_without_approval(&s, "git-upload-pack /nonexistent.git");
    assert!(!marker.ran(), "a start-up file the agent wrote ran");
    assert_eq!(std::fs::read(home.join(".bashrc")).ok(), bashrc_before);
    for planted in [".ssh/rc", ".bash_profile", ".config/systemd"] {
        assert!(!home.join(planted).exists(), "{planted} was written");
    }
    for planted in ["soft", "hard"] {
        assert!(!remote.path().join(planted).exists(), "link {planted} made");
    }
    assert!(
        remote.path().join("harmless.txt").is_file(),
        "ordinary upload"
    );

    // Written as the transfers go, some after their client has exited.
    for denied in [
        format!("open {h}/.bashrc"),
        format!("open {h}/.profile"),
        format!("mkdir {h}/.ssh"),
        format!("open {h}/.ssh/rc"),
        format!("rename {h}/.bash_profile"),
        format!("symlink-target {h}/.bashrc"),
        format!("hardlink-target {h}/.bashrc"),
        format!("mkdir {h}/.config/systemd"),
        format!("scp-sink {h}/.bashrc"),
    ] {
        s.env.wait_event(&format!("the refusal {denied:?}"), |e| {
            e["action"] == "ssh:write"
                && e["text"] == denied
                && e["verdict"] == "deny"
                && e["policy_id"] == "ssh-write-autorun"
        });
    }
    s.env.wait_event("the ordinary upload allowed", |e| {
        e["action"] == "ssh:write"
            && e["text"] == format!("open {dir}/harmless.txt")
            && e["verdict"] == "allow"
    });
}

/// `rm` and `find` delete trees under many spellings (combined flags,
/// getopt_long prefixes, `-delete`, `-exec rm -r`); only `rm -rf` and a
/// few others were refused. Plain deletes and searches are only held.
#[test]
fn recursive_delete_spellings_are_refused() {
    let _g = serial();
    let Some(s) = setup() else { return };
    let remote = UserTempDir::new(&s.user);
    let tree = remote.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).expect("mkdir");
    std::fs::write(tree.join("sub/file"), "x").expect("write");
    let t = tree.display().to_string();
    for attack in [
        format!("rm -rfv {t}"),
        format!("rm --recur {t}"),
        format!("rm -r -f {t}"),
        format!("rm -vr {t}"),
        format!("rm {t} -R"),
        format!("find {t} -delete"),
        format!("find {t} -exec rm -rf {{}} +"),
        format!("find {t} -execdir /bin/rm --recursive {{}} ;"),
    ] {
        let out = s.ssh_within(&attack, 20);
        assert_eq!(out.status.code(), Some(126), "{attack}: {}", text(&out));
        assert!(
            text(&out).contains("denied by policy ssh-recursive-delete"),
            "{attack}: {}",
            text(&out)
        );
        assert!(tree.join("sub/file").exists(), "{attack} deleted the tree");
    }

    // Look-alikes: held like any unlisted command, and run once approved.
    for (name, command) in [("a", "rm -f"), ("b", "rm -v")] {
        let f = remote.path().join(name);
        std::fs::write(&f, "x").expect("write");
        let (out, _) = s.ssh_answered(&format!("{command} {}", f.display()), "approve");
        assert!(out.status.success(), "{command}: {}", text(&out));
        assert!(!f.exists(), "{command} did not delete");
    }
    let (out, _) = s.ssh_answered(&format!("find {t} -name file"), "approve");
    assert!(out.status.success(), "find: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("sub/file"));
}

/// An environment variable the agent asks for can run code before the
/// allowed command (`BASH_ENV` is sourced by the non-interactive bash sshd
/// starts, on a server whose AcceptEnv lists it). Each variable is now
/// decided and recorded; locale variables pass.
#[test]
fn environment_requests_are_decided() {
    let _g = serial();
    let Some(s) = setup() else { return };
    let marker = Marker::new("bashenv");
    let payload = marker.payload(s.dir.path(), "env.sh");
    let remote = UserTempDir::new(&s.user);
    let script = format!("{}/env.sh", remote.path().display());
    let out = s.sftp_batch(&format!("put {} {script}\n", payload.display()));
    assert!(out.status.success(), "upload: {}", text(&out));

    let mut c = s.ssh_agent(
        &["-o", "SendEnv=LANG", "-o", "SendEnv=BASH_ENV"],
        &["git-upload-pack /nonexistent.git"],
    );
    c.env("LANG", "C.UTF-8").env("BASH_ENV", &script);
    let out = output_within(&mut c, Duration::from_secs(30));
    assert_ne!(out.status.code(), Some(126), "{}", text(&out));
    assert!(!marker.ran(), "BASH_ENV ran the agent's script");
    s.env.wait_event("LANG allowed", |e| {
        e["action"] == "ssh:env" && e["text"] == "env LANG=C.UTF-8" && e["verdict"] == "allow"
    });
    s.env.wait_event("BASH_ENV refused", |e| {
        e["action"] == "ssh:env"
            && e["text"] == format!("env BASH_ENV={script}")
            && e["verdict"] == "deny"
            && e["policy_id"] == "ssh-env"
    });
}

/// One SFTP packet: type, then fields (u32 or string).
fn sftp_packet(kind: u8, fields: &[Field]) -> Vec<u8> {
    let mut body = vec![kind];
    for f in fields {
        match f {
            Field::U32(v) => body.extend(v.to_be_bytes()),
            Field::Str(s) => {
                body.extend((s.len() as u32).to_be_bytes());
                body.extend(s);
            }
        }
    }
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

enum Field {
    U32(u32),
    Str(Vec<u8>),
}

/// The sftp observer used to stop watching at a packet it could not read
/// (over 64 KiB, or not SFTP) while the relay carried on: what followed
/// was never recorded. Now such a packet ends the channel, with a record,
/// before it reaches the server.
#[test]
fn the_sftp_audit_cannot_be_blinded() {
    let _g = serial();
    let Some(s) = setup() else { return };
    let remote = UserTempDir::new(&s.user);
    let unseen = remote.path().join("unseen.txt");
    let mut stream = sftp_packet(1, &[Field::U32(3)]);
    stream.extend(sftp_packet(
        13,
        &[Field::U32(1), Field::Str(vec![b'x'; 100 << 10])],
    ));
    // OPEN with CREAT|WRITE: creates the file.
    stream.extend(sftp_packet(
        3,
        &[
            Field::U32(2),
            Field::Str(unseen.display().to_string().into_bytes()),
            Field::U32(0x02 | 0x08),
            Field::U32(0),
        ],
    ));
    let input = s.dir.path().join("blind.bin");
    std::fs::File::create(&input)
        .and_then(|mut f| f.write_all(&stream))
        .expect("write stream");
    let mut c = s.ssh_agent(&["-s"], &["sftp"]);
    let mut child = c
        .stdin(std::fs::File::open(&input).expect("open"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh -s sftp");
    let done = wait_until(Duration::from_secs(30), || child.try_wait().ok().flatten());
    if done.is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    assert!(
        !unseen.exists(),
        "a file was created past the unread packet"
    );
    // The record reaches the spool through the writer task, which may
    // finish after the client has seen the channel end.
    s.env
        .wait_event("an sftp error for the unread packet", |e| {
            e["kind"] == "command"
                && e["verdict"] == "error"
                && e["reason"].as_str().is_some_and(|r| r.contains("sftp"))
        });
}

/// The ordinary traffic of deploy jobs, beside the attacks: git clone
/// over ssh, scp into home and overwriting, legacy scp, sftp with the
/// largest packets OpenSSH sends.
#[test]
fn ordinary_transfers_keep_working() {
    let _g = serial();
    let Some(s) = setup() else { return };
    let local = s.dir.path().join("payload.bin");
    random_file(&local, 200_000);
    let want = sha256(&local);
    let name = format!("blastgate-ordinary-{}.bin", std::process::id());
    let in_home = home_of(&s.user).join(&name);
    let _cleanup = HomeGuard::new(&s.user, &[&name]);
    for _ in 0..2 {
        let target = format!("{}:{name}", s.dest());
        let out = s.transfer(SCP, &["-q", local.to_str().expect("utf-8"), &target]);
        assert!(out.status.success(), "scp into home: {}", text(&out));
        assert_eq!(sha256(&in_home), want);
    }
    let remote = UserTempDir::new(&s.user);
    // sftp's largest requests: writes and reads of the server's
    // max-write-length (256 KiB less 1 KiB), the most OpenSSH accepts.
    let batch = s.dir.path().join("big.batch");
    let back = s.dir.path().join("back.bin");
    std::fs::write(
        &batch,
        format!(
            "put {} {dir}/big.bin\nget {dir}/big.bin {}\n",
            local.display(),
            back.display(),
            dir = remote.path().display()
        ),
    )
    .expect("batch");
    let dest = s.dest();
    let out = s.transfer(
        SFTP,
        &["-B", "261120", "-b", batch.to_str().expect("utf-8"), &dest],
    );
    assert!(out.status.success(), "sftp -B 261120: {}", text(&out));
    assert_eq!(sha256(&back), want);
    let target = format!("{}:{}/legacy.bin", s.dest(), remote.path().display());
    let out = s.transfer(SCP, &["-O", "-q", local.to_str().expect("utf-8"), &target]);
    assert!(out.status.success(), "scp -O: {}", text(&out));
    assert_eq!(sha256(&remote.path().join("legacy.bin")), want);

    let repo = BareRepo::new(&s.user);
    let port = s.sshd.port().to_string();
    let url = format!("ssh://{}:{port}{}", s.dest(), repo.path().display());
    let mut c = s.env.agent("claude", &["git"]);
    git_over_ssh(&mut c, &ssh_command_line(&s.known_hosts, &[]));
    let clone = s.dir.path().join("clone");
    c.args(["clone", "-q", &url, clone.to_str().expect("utf-8")]);
    let out = output_within(&mut c, Duration::from_secs(60));
    assert!(out.status.success(), "git clone: {}", text(&out));

    // The clone's command record (written when its channel ends) first,
    // so that the check below reads a spool with every command in.
    s.env.wait_event("the clone's command", |e| {
        e["kind"] == "command"
            && e["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("git-upload-pack"))
    });
    let refused = s.env.count_events(|e| {
        e["kind"] == "command" && e["verdict"] != "allow" || e["kind"] == "approval_requested"
    });
    assert_eq!(refused, 0, "{:#?}", s.env.events());
}

/// git runs a repository's hooks: a hook uploaded into a bare repository
/// (`repo.git/hooks/…`, refused outright; or a repository not named
/// `*.git`) ran at the next allowed `git push`. A push into a repository
/// holding anything an agent wrote now waits for a human.
#[test]
fn hooks_uploaded_into_a_repository_do_not_run() {
    let _g = serial();
    let Some(s) = setup() else { return };
    let marker = Marker::new("hook");
    let payload = marker.payload(s.dir.path(), "hook.sh");
    let remote = UserTempDir::new(&s.user);
    let plain = remote.path().join("plain");
    let out = as_user(&s.user, "git")
        .args(["init", "-q", "--bare", "--initial-branch=main"])
        .arg(&plain)
        .output()
        .expect("git init");
    assert!(out.status.success(), "{}", text(&out));
    let named = BareRepo::new(&s.user);
    let out = s.sftp_batch(&format!(
        "-put {p} {named}/hooks/post-receive\n\
         put {p} {plain}/hooks/post-receive\n\
         chmod 755 {plain}/hooks/post-receive\n",
        p = payload.display(),
        named = named.path().display(),
        plain = plain.display(),
    ));
    assert!(out.status.success(), "uploads: {}", text(&out));
    assert!(!named.path().join("hooks/post-receive").exists());

    let work = s.dir.path().join("work");
    std::fs::create_dir(&work).expect("mkdir");
    let ssh = ssh_command_line(&s.known_hosts, &[]);
    let git = |args: &[&str]| {
        let mut c = s.env.agent("claude", &["git"]);
        git_over_ssh(&mut c, &ssh);
        c.args(args).current_dir(&work);
        c
    };
    for args in [
        &["init", "-q"][..],
        &["commit", "-q", "--allow-empty", "-m", "x"],
    ] {
        let out = output_within(&mut git(args), Duration::from_secs(30));
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
    }
    let port = s.sshd.port().to_string();
    let url = format!("ssh://{}:{port}{}", s.dest(), plain.display());
    let child = git(&["push", "-q", &url, "main"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("git push");
    let id = s.pending_approval();
    s.approvals("deny", &id);
    let out = child.wait_with_output().expect("git push");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!marker.ran(), "an uploaded hook ran");
    s.env.wait_event("the push held", |e| {
        e["action"] == "ssh:exec"
            && e["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("git-receive-pack"))
            && e["policy_id"] == "ssh-unlisted-command"
    });
}
