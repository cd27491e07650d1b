//! Red team of git push enforcement (branch gitpush-red): an agent with
//! git, curl and a shell rewriting a protected branch (main) through
//! blastgate, or getting a rewrite held as a fast-forward instead of
//! refused. Each test is one attack, named for it, with the behaviour
//! the shipped git.cedar promises (force pushes of main refused, main
//! unchanged); each fails while the hole is open.

mod harness;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use harness::{git_server::GitHttp, ssh_gateway::*, sshd::*, *};

const WAIT: Duration = Duration::from_secs(120);

/// The agent's work tree and the server it pushes to.
struct Repo<'a> {
    env: &'a Env,
    work: PathBuf,
    url: String,
    /// GIT_SSH_COMMAND ("" over HTTP).
    ssh: String,
    server: Box<dyn Fn(&str) -> String + 'a>,
}

/// How an agent's push ended: on its own, or waiting for a human.
enum End {
    Done(Output),
    Held(String),
}

impl<'a> Repo<'a> {
    fn git(&self, args: &[&str]) -> Command {
        let mut c = self.env.agent("claude", &["git"]);
        git_over_ssh(&mut c, &self.ssh);
        c.args(args).current_dir(&self.work);
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = output_within(&mut self.git(args), WAIT);
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// git run locally in the work tree (no network: not through blastgate).
    fn local(&self, args: &[&str], stdin: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut c = Command::new("git");
        c.args(args)
            .current_dir(&self.work)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("git");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin)
            .expect("stdin");
        let out = child.wait_with_output().expect("git");
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
        out.stdout
    }

    fn commit(&self, msg: &str) -> String {
        std::fs::write(self.work.join("file"), msg).expect("write");
        self.ok(&["add", "file"]);
        self.ok(&["commit", "-q", "-m", msg]);
        self.ok(&["rev-parse", "HEAD"])
    }

    /// An unrelated history pushed on a branch of the agent's own
    /// (allowed): its commit, now on the server.
    fn orphan_branch(&self) -> String {
        self.ok(&["checkout", "-q", "--orphan", "evil"]);
        let n = self.commit("orphan history");
        self.ok(&["push", "-q", &self.url, "evil"]);
        n
    }

    /// Runs the push until it ends or is held.
    fn push(&self, args: &[&str]) -> End {
        run_or_hold(self.env, self.git(args))
    }

    /// main created on the server (the creation is held; approved here).
    fn main_created(&self) -> String {
        std::fs::create_dir(&self.work).expect("mkdir");
        self.ok(&["init", "-q"]);
        let c1 = self.commit("one");
        match self.push(&["push", &self.url, "main"]) {
            End::Held(id) => self.env.answer_approval("approve", &id),
            End::Done(out) => panic!("creating main was not held: {}", text(&out)),
        }
        assert_eq!(
            wait_until(WAIT, || {
                let v = (self.server)("refs/heads/main");
                (v == c1).then_some(v)
            })
            .as_deref(),
            Some(c1.as_str()),
            "main created"
        );
        c1
    }

    /// The push must be refused outright as a rewrite of main; main stays
    /// at `kept`. A hold is denied (cleanup) and fails the test: the
    /// rewrite passed for a fast-forward a human is asked to approve.
    fn refused_as_rewrite(&self, end: End, new: &str, kept: &str) {
        let e = match end {
            End::Done(out) => {
                let e = self.env.wait_event("the push of main", |e| {
                    e["action"] == "git:push"
                        && e["context"]["ref"] == "refs/heads/main"
                        && e["context"]["new"] == new
                });
                assert!(!out.status.success(), "{}", text(&out));
                e
            }
            End::Held(id) => {
                self.env.answer_approval("deny", &id);
                let e = self.env.wait_event("the held push of main", |e| {
                    e["action"] == "git:push"
                        && e["context"]["ref"] == "refs/heads/main"
                        && e["context"]["new"] == new
                });
                panic!(
                    "a rewrite of main was held as a fast-forward, not refused \
                     (an approver would be told forced = {}): {e:#}",
                    e["context"]["forced"]
                );
            }
        };
        assert_eq!(e["verdict"], "deny", "{e:#}");
        assert_eq!(e["policy_id"], "git-protected-rewrite", "{e:#}");
        assert_eq!((self.server)("refs/heads/main"), kept);
    }
}

fn run_or_hold(env: &Env, mut cmd: Command) -> End {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent");
    let held = wait_until(WAIT, || {
        if let Ok(Some(_)) = child.try_wait() {
            return Some(None);
        }
        let out = env.blastgate(&["approvals", "list", "--json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        list.as_array()?
            .first()
            .and_then(|r| r["id"].as_str().map(|s| Some(s.to_string())))
    });
    match held {
        Some(Some(id)) => {
            let _ = child.kill();
            let _ = child.wait();
            End::Held(id)
        }
        Some(None) => End::Done(child.wait_with_output().expect("agent")),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the push neither ended nor was held");
        }
    }
}

struct SshServer {
    s: Setup,
    bare: BareRepo,
}

fn ssh_server() -> Option<SshServer> {
    let s = setup()?;
    let bare = BareRepo::new(&s.user);
    Some(SshServer { s, bare })
}

impl SshServer {
    fn repo(&self) -> Repo<'_> {
        let user = self.s.user.clone();
        let path = self.bare.path().to_path_buf();
        Repo {
            env: &self.s.env,
            work: self.s.dir.path().join("work"),
            url: format!(
                "ssh://{}:{}{}",
                self.s.dest(),
                self.s.sshd.port(),
                path.display()
            ),
            ssh: ssh_command_line(&self.s.known_hosts, &[]),
            server: Box::new(move |name: &str| server_rev(&user, &path, name)),
        }
    }
}

fn server_rev(user: &str, path: &Path, name: &str) -> String {
    let out = as_user(user, "git")
        .arg("--git-dir")
        .arg(path)
        .args(["rev-parse", "--verify", "-q", name])
        .stdin(Stdio::null())
        .output()
        .expect("git rev-parse");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The HTTP gateway in front of git http-backend, shipped policies.
fn http_server() -> Option<(GitHttp, Env, Daemon)> {
    harness::git_server::http_gateway("")
}

/// Runs `attack` over smart HTTP once main exists on the server (its
/// first commit given).
fn over_http(attack: impl FnOnce(&Repo, &str)) {
    let _g = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((server, env, _daemon)) = http_server() else {
        return;
    };
    let r = Repo {
        env: &env,
        work: dir.path().join("work"),
        url: server.url(),
        ssh: String::new(),
        server: Box::new(|name: &str| server.rev(name)),
    };
    let c1 = r.main_created();
    attack(&r, &c1);
}

/// Attack: `git push --receive-pack='git-receive-pack --quiet'` (or any
/// option receive-pack takes: --quiet, --stateless-rpc,
/// --skip-connectivity-check). The SSH command policy lets
/// `git-receive-pack` run with any arguments (program_name on PATH, no
/// uploaded args), but the git gateway only parses an exec whose
/// arguments are exactly one path (`receive_pack_exec`), so this push is
/// carried as plain bytes: a force push of main lands, no git:push
/// decision at all. Expected: every exec that runs receive-pack is ruled
/// per ref (or one blastgate does not read is refused).
#[test]
fn redteam_ssh_receive_pack_with_an_option_is_not_ruled() {
    let _g = serial();
    let Some(srv) = ssh_server() else { return };
    let r = srv.repo();
    let c1 = r.main_created();
    // Harmless look-alike: a feature branch pushed the same way is allowed.
    r.ok(&["checkout", "-q", "-b", "feature"]);
    let f1 = r.commit("feature");
    r.ok(&[
        "push",
        "-q",
        "--receive-pack=git-receive-pack --quiet",
        &r.url,
        "feature",
    ]);
    assert_eq!((r.server)("refs/heads/feature"), f1);
    // The attack.
    r.ok(&["checkout", "-q", "main"]);
    r.ok(&["commit", "-q", "--amend", "-m", "one, rewritten"]);
    let rewritten = r.ok(&["rev-parse", "HEAD"]);
    let end = r.push(&[
        "push",
        "--force",
        "--receive-pack=git-receive-pack --quiet",
        &r.url,
        "main",
    ]);
    if let End::Done(out) = &end {
        assert_eq!(
            (r.server)("refs/heads/main"),
            c1,
            "main rewritten through `git-receive-pack --quiet`: {}",
            text(out)
        );
    }
    r.refused_as_rewrite(end, &rewritten, &c1);
}

/// Attack: replace refs fool the SSH gateway's ancestry question. The
/// agent pushes an orphan commit N on a branch of its own (allowed), then
/// `git replace --graft N <main>` and pushes refs/replace/* (allowed:
/// not a protected ref), then force-pushes N to main. N is on the server
/// already, so the gateway asks the server `git merge-base --is-ancestor
/// <main> N`, which honours refs/replace/ and answers yes: the rewrite is
/// `forced = "false"` and only held, an approver told it is a
/// fast-forward. Expected: refused as a rewrite (ask with
/// `GIT_NO_REPLACE_OBJECTS=1` / `git --no-replace-objects`, and not
/// through grafts either).
#[test]
fn redteam_ssh_replace_ref_makes_a_rewrite_look_like_a_fast_forward() {
    let _g = serial();
    let Some(srv) = ssh_server() else { return };
    let r = srv.repo();
    let c1 = r.main_created();
    let n = r.orphan_branch();
    r.ok(&["replace", "--graft", &n, &c1]);
    r.ok(&["push", "-q", &r.url, "refs/replace/*:refs/replace/*"]);
    assert!(
        !(r.server)(&format!("refs/replace/{n}")).is_empty(),
        "the replace ref landed"
    );
    r.ok(&["replace", "-d", &n]);
    let end = r.push(&["push", "--force", &r.url, &format!("{n}:refs/heads/main")]);
    r.refused_as_rewrite(end, &n, &c1);
}

/// Attack: a commit git reads as a root that blastgate reads as a child
/// of main: its last header line is `parent <main>` without a newline
/// (`git hash-object -t commit --literally`). git's parse_commit_buffer
/// takes no parent from it; receive-pack stores it (no fsck by default)
/// and main becomes an orphan history. blastgate reads the parent, calls
/// the rewrite a fast-forward and only holds it. Expected: refused as a
/// rewrite (the unit test pack::tests::redteam_unterminated_parent_line_*
/// is the same hole at the parser).
#[test]
fn redteam_http_unterminated_parent_line_passes_for_a_fast_forward() {
    over_http(|r, c1| {
        let tree = r.ok(&["rev-parse", "HEAD^{tree}"]);
        let raw = format!("tree {tree}\nparent {c1}");
        let n = String::from_utf8_lossy(&r.local(
            &[
                "hash-object",
                "-t",
                "commit",
                "-w",
                "--literally",
                "--stdin",
            ],
            raw.as_bytes(),
        ))
        .trim()
        .to_string();
        // git itself: no parent.
        let parents = r.local(&["log", "-1", "--format=%P", &n], b"");
        assert_eq!(String::from_utf8_lossy(&parents).trim(), "");
        let end = r.push(&["push", "--force", &r.url, &format!("{n}:refs/heads/main")]);
        r.refused_as_rewrite(end, &n, c1);
    });
}

/// Attack: the smart HTTP path percent-encoded. blastgate recognises a
/// push by the raw request path ending in `/git-receive-pack`
/// (`git::is_push`); nginx decodes `$uri` (PATH_INFO) before git
/// http-backend matches it, as Apache does, so `POST
/// /repo.git/git-receive-pac%6B` runs receive-pack while blastgate sees an
/// ordinary API request: a force push of main lands with no git:push
/// decision. Expected: the path decoded (and dot segments resolved) the
/// way the server will before deciding what the request is, or refused.
#[test]
fn redteam_http_percent_encoded_receive_pack_path_is_not_ruled() {
    over_http(|r, c1| {
        r.ok(&["commit", "-q", "--amend", "-m", "one, rewritten"]);
        let rewritten = r.ok(&["rev-parse", "HEAD"]);
        // The request body git would send: one command, then the pack.
        let mut body = {
            let line = format!("{c1} {rewritten} refs/heads/main\0report-status\n");
            let mut b = format!("{:04x}", line.len() + 4).into_bytes();
            b.extend_from_slice(line.as_bytes());
            b.extend_from_slice(b"0000");
            b
        };
        body.extend(r.local(
            &["pack-objects", "--revs", "--stdout", "-q"],
            format!("{rewritten}\n^{c1}\n").as_bytes(),
        ));
        let file = r.work.join(".git/push.body");
        std::fs::write(&file, &body).expect("write body");
        let post = |path: &str| {
            let mut c = r.env.agent("claude", &["curl"]);
            c.args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "Content-Type: application/x-git-receive-pack-request",
                "--data-binary",
            ])
            .arg(format!("@{}", file.display()))
            .arg(format!("{}/{path}", r.url));
            output_within(&mut c, WAIT)
        };
        // Harmless look-alike: the same push on the plain path is ruled
        // (refused: a rewrite of main).
        let out = post("git-receive-pack");
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(
            (r.server)("refs/heads/main"),
            c1,
            "plain path: {}",
            text(&out)
        );
        r.env.wait_event("the plain-path push ruled", |e| {
            e["action"] == "git:push" && e["context"]["new"] == rewritten.as_str()
        });
        // The attack.
        let out = post("git-receive-pac%6B");
        assert_eq!(
            (r.server)("refs/heads/main"),
            c1,
            "main rewritten through a percent-encoded git-receive-pack path (HTTP {})",
            text(&out)
        );
    });
}

/// Attack: no push at all. The SSH gateway lets an agent's sftp write
/// into the served repository (ssh-write-autorun guards only its hooks
/// and config; ssh-write-unseen-names only blind scp/rsync trees), so
/// `put` of a file holding an orphan commit's id (pushed earlier on a
/// branch of the agent's own) onto `repo.git/refs/heads/main` rewrites
/// main with no git:push decision; `rm` of it would delete main.
/// Expected: writes under a repository's refs/ (and packed-refs,
/// objects/) refused, or at least held; main unchanged.
#[test]
fn redteam_ssh_sftp_writes_the_ref_file() {
    let _g = serial();
    let Some(srv) = ssh_server() else { return };
    let r = srv.repo();
    let c1 = r.main_created();
    let n = r.orphan_branch();
    let local = r.work.join(".git/forged-ref");
    std::fs::write(&local, format!("{n}\n")).expect("write");
    let batch = r.work.join(".git/batch");
    std::fs::write(
        &batch,
        format!(
            "put {} {}/refs/heads/main\n",
            local.display(),
            srv.bare.path().display()
        ),
    )
    .expect("write batch");
    let port = srv.s.sshd.port().to_string();
    let mut c = srv.s.env.agent("claude", &[SFTP]);
    c.args(ssh_options(&srv.s.known_hosts))
        .args(["-P", &port, "-b"])
        .arg(&batch)
        .arg(srv.s.dest());
    match run_or_hold(&srv.s.env, c) {
        End::Held(id) => srv.s.env.answer_approval("deny", &id),
        End::Done(out) => assert_eq!(
            (r.server)("refs/heads/main"),
            c1,
            "main rewritten by an sftp put of its ref file: {}",
            text(&out)
        ),
    }
    assert_eq!((r.server)("refs/heads/main"), c1);
}
