//! git pushes under policy: real git clients as agents, a bare repository
//! served by Debian's sshd (SSH gateway) and by `git http-backend` behind
//! nginx and fcgiwrap (HTTP gateway), the shipped git.cedar deciding each
//! ref update (`git:push`).

mod harness;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use harness::{git_server::http_gateway, ssh_gateway::*, sshd::*, *};

const WAIT: Duration = Duration::from_secs(120);

/// The agent's work tree and the server it pushes to.
struct Repo<'a> {
    env: &'a Env,
    dir: &'a Path,
    work: PathBuf,
    url: String,
    ssh: String,
    /// The server's value of a ref ("" if none), read on the server.
    server: Box<dyn Fn(&str) -> String + 'a>,
    /// Where the daemon ships its records.
    db: &'a TestDatabase,
}

impl<'a> Repo<'a> {
    fn git(&self, args: &[&str]) -> Command {
        self.git_in(&self.work, args)
    }

    /// `git ARGS` as the agent, in `dir`.
    fn git_in(&self, dir: &Path, args: &[&str]) -> Command {
        let mut c = self.env.agent("claude", &["git"]);
        git_over_ssh(&mut c, &self.ssh);
        c.args(args).current_dir(dir);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        output_within(&mut self.git(args), WAIT)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn commit(&self, msg: &str) -> String {
        std::fs::write(self.work.join("file"), msg).expect("write");
        self.ok(&["add", "file"]);
        self.ok(&["commit", "-q", "-m", msg]);
        self.ok(&["rev-parse", "HEAD"])
    }

    /// A push waiting for a human, answered with `verb`.
    fn held(&self, args: &[&str], verb: &str) -> Output {
        let child: Child = self
            .git(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("git push");
        let id = self.env.pending_approval();
        self.env.answer_approval(verb, &id);
        child.wait_with_output().expect("git push")
    }

    fn server(&self, name: &str) -> String {
        (self.server)(name)
    }
}

/// The recorded `git:push` event of `name` becoming `new`.
fn push_event(env: &Env, name: &str, new: &str) -> serde_json::Value {
    env.wait_event(&format!("git:push {name} -> {new}"), |e| {
        e["action"] == "git:push" && e["context"]["ref"] == name && e["context"]["new"] == new
    })
}

fn rejected(out: &Output, branch: &str) -> bool {
    let t = text(out);
    t.contains(&format!(
        "! [remote rejected] {branch} -> {branch} (blastgate: git:push denied"
    )) || t.contains(&format!(
        "! [remote rejected] {branch} (blastgate: git:push denied"
    ))
}

#[test]
fn pushes_are_ruled_per_ref_over_ssh() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let Some(url) = clickhouse_url() else { return };
    let db = TestDatabase::new(&url);
    let Some(s) = setup_with(Options {
        clickhouse: Some(&db),
        ..Default::default()
    }) else {
        return;
    };
    let bare = BareRepo::new(&s.user);
    let user = s.user.clone();
    let path = bare.path().to_path_buf();
    let r = Repo {
        env: &s.env,
        dir: s.dir.path(),
        work: s.dir.path().join("work"),
        url: format!("ssh://{}:{}{}", s.dest(), s.sshd.port(), path.display()),
        ssh: ssh_command_line(&s.known_hosts, &[]),
        server: Box::new(move |name: &str| {
            let out = as_user(&user, "git")
                .arg("--git-dir")
                .arg(&path)
                .args(["rev-parse", "--verify", "-q", name])
                .stdin(Stdio::null())
                .output()
                .expect("git rev-parse");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        }),
        db: &db,
    };
    // Where the pack ends (the rewrite's parent is the server's), the
    // SSH gateway asks the server: a rewrite is known as one.
    scenario(&r, "true");
}

/// The same pushes over smart HTTP (`git http-backend` behind nginx):
/// blastgate cannot ask the server there, so a rewrite whose history
/// leaves the pack is `unknown`, refused on protected branches all the
/// same.
#[test]
fn pushes_are_ruled_per_ref_over_http() {
    let _g = serial();
    let Some(url) = clickhouse_url() else { return };
    let db = TestDatabase::new(&url);
    let Some((server, env, _daemon)) = http_gateway(&db.config()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let r = Repo {
        env: &env,
        dir: dir.path(),
        work: dir.path().join("work"),
        url: server.url(),
        ssh: String::new(),
        server: Box::new(|name: &str| server.rev(name)),
        db: &db,
    };
    scenario(&r, "unknown");

    // A hand-made push to a percent-encoded path, which nginx decodes
    // before `git http-backend` matches it: ruled on all the same.
    let release = server.rev("refs/heads/release/1");
    assert!(!release.is_empty());
    let line = format!(
        "{release} {} refs/heads/release/1\0report-status\n",
        "0".repeat(40)
    );
    let mut body = format!("{:04x}", line.len() + 4).into_bytes();
    body.extend(line.as_bytes());
    body.extend(b"0000");
    let file = dir.path().join("delete.req");
    std::fs::write(&file, body).expect("write");
    let data = format!("@{}", file.display());
    let url = format!(
        "http://127.0.0.2:{}/repo.git/git-receive-p%61ck",
        server.port
    );
    let mut c = env.agent(
        "claude",
        &[
            "curl",
            "-sS",
            "-H",
            "Content-Type: application/x-git-receive-pack-request",
            "--data-binary",
            &data,
            &url,
        ],
    );
    let out = output_within(&mut c, WAIT);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ng refs/heads/release/1 blastgate"),
        "{}",
        text(&out)
    );
    assert_eq!(server.rev("refs/heads/release/1"), release);
}

/// Every case, on one transport; `rewrite_forced`: what a rewrite of main
/// is recorded as.
fn scenario(r: &Repo, rewrite_forced: &str) {
    std::fs::create_dir(&r.work).expect("mkdir");
    r.ok(&["init", "-q"]);

    // Creating main waits for a human, then lands.
    let c1 = r.commit("one");
    let out = r.held(&["push", &r.url, "main"], "approve");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(r.server("refs/heads/main"), c1);
    let e = push_event(r.env, "refs/heads/main", &c1);
    assert_eq!(e["context"]["created"], "true", "{e:#}");
    assert_eq!(e["context"]["forced"], "false", "{e:#}");
    assert_eq!(e["verdict"], "allow", "{e:#}");

    // A feature branch: allowed without asking anyone.
    r.ok(&["checkout", "-q", "-b", "feature"]);
    let f1 = r.commit("feature one");
    r.ok(&["push", "-q", &r.url, "feature"]);
    assert_eq!(r.server("refs/heads/feature"), f1);

    // Clone and fetch: unaffected (no git:push, nothing held).
    let clone = r.dir.join("clone");
    let out = output_within(
        &mut r.git_in(
            r.dir,
            &["clone", "-q", &r.url, clone.to_str().expect("utf-8")],
        ),
        WAIT,
    );
    assert!(out.status.success(), "clone: {}", text(&out));
    let out = output_within(&mut r.git_in(&clone, &["fetch", "-q", "origin"]), WAIT);
    assert!(out.status.success(), "fetch: {}", text(&out));

    // A fast-forward of main: held, approved, recorded as not forced.
    r.ok(&["checkout", "-q", "main"]);
    let c2 = r.commit("two");
    let out = r.held(&["push", &r.url, "main"], "approve");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(r.server("refs/heads/main"), c2);
    let e = push_event(r.env, "refs/heads/main", &c2);
    assert_eq!(e["context"]["old"], c1.as_str(), "{e:#}");
    assert_eq!(e["context"]["forced"], "false", "{e:#}");

    // Rewriting main: refused with git's own report; main unchanged. The
    // rewrite's parent is on the server only.
    r.ok(&["commit", "-q", "--amend", "-m", "two, rewritten"]);
    let rewritten = r.ok(&["rev-parse", "HEAD"]);
    let out = r.run(&["push", "--force", &r.url, "main"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(rejected(&out, "main"), "{}", text(&out));
    assert!(
        text(&out).contains("force pushes and deletions of main"),
        "{}",
        text(&out)
    );
    assert_eq!(r.server("refs/heads/main"), c2);
    let e = push_event(r.env, "refs/heads/main", &rewritten);
    assert_eq!(e["verdict"], "deny", "{e:#}");
    assert_eq!(e["context"]["forced"], rewrite_forced, "{e:#}");
    assert_eq!(e["context"]["old"], c2.as_str(), "{e:#}");
    assert_eq!(e["policy_id"], "git-protected-rewrite", "{e:#}");
    // The same record in ClickHouse, shipped after the spool.
    let want = format!("deny\trefs/heads/main\t{c2}\t{rewritten}\t{rewrite_forced}");
    let row = wait_until(Duration::from_secs(60), || {
        r.db.try_query(&format!(
            "SELECT verdict, context['ref'], context['old'], context['new'], context['forced'] \
             FROM {{db}}.events FINAL WHERE action = 'git:push' AND context['new'] = '{rewritten}' \
             FORMAT TSV"
        ))
        .filter(|row| row == &want)
    });
    assert_eq!(row.as_deref(), Some(want.as_str()));

    // The same rewrite as a `+` refspec, and through send-pack itself.
    let out = r.run(&["push", &r.url, "+refs/heads/main:refs/heads/main"]);
    assert!(rejected(&out, "main"), "{}", text(&out));
    if !r.ssh.is_empty() {
        // send-pack speaks to git-receive-pack itself (SSH only).
        let out = r.run(&["send-pack", "--force", &r.url, "main"]);
        assert!(rejected(&out, "main"), "{}", text(&out));
    }
    assert_eq!(r.server("refs/heads/main"), c2);

    // Hidden beside an allowed ref: the feature branch lands, main not.
    r.ok(&["checkout", "-q", "feature"]);
    let f2 = r.commit("feature two");
    let out = r.run(&["push", "--force", &r.url, "feature", "main"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(rejected(&out, "main"), "{}", text(&out));
    assert_eq!(r.server("refs/heads/feature"), f2);
    assert_eq!(r.server("refs/heads/main"), c2);

    // Atomic: one refusal refuses both.
    let f3 = r.commit("feature three");
    let out = r.run(&["push", "--atomic", "--force", &r.url, "feature", "main"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(r.server("refs/heads/feature"), f2, "{}", text(&out));
    assert_eq!(r.server("refs/heads/main"), c2);
    let _ = f3;

    // A commit naming main's value among its parents, beside a new root:
    // a fast-forward by git's own definition (held, like any update of
    // main, and recorded as not forced).
    let tree = r.ok(&["rev-parse", &format!("{c2}^{{tree}}")]);
    let orphan = r.ok(&["commit-tree", &tree, "-m", "a new root"]);
    let naming = r.ok(&[
        "commit-tree",
        &tree,
        "-p",
        &orphan,
        "-p",
        &c2,
        "-m",
        "names old second",
    ]);
    let out = r.held(
        &["push", &r.url, &format!("{naming}:refs/heads/main")],
        "approve",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(r.server("refs/heads/main"), naming);
    let e = push_event(r.env, "refs/heads/main", &naming);
    assert_eq!(e["context"]["forced"], "false", "{e:#}");

    // A merge of a new root and a commit the server has off main's
    // history (the second parent is outside the pack): not a fast-forward,
    // known as such only where the server can be asked.
    let root2 = r.ok(&["commit-tree", &tree, "-m", "another root"]);
    let merge = r.ok(&[
        "commit-tree",
        &tree,
        "-p",
        &root2,
        "-p",
        &f1,
        "-m",
        "off main",
    ]);
    let out = r.run(&["push", &r.url, &format!("+{merge}:refs/heads/main")]);
    assert!(
        text(&out).contains("-> main (blastgate: git:push denied"),
        "{}",
        text(&out)
    );
    assert_eq!(r.server("refs/heads/main"), naming);
    let e = push_event(r.env, "refs/heads/main", &merge);
    assert_eq!(e["context"]["forced"], rewrite_forced, "{e:#}");
    assert_eq!(e["verdict"], "deny", "{e:#}");

    // A large push (several MiB: many SSH chunks, a chunked HTTP body)
    // to a feature branch goes through whole.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let big: Vec<u8> = (0..3 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(r.work.join("big.bin"), &big).expect("write");
    r.ok(&["add", "big.bin"]);
    r.ok(&["commit", "-q", "-m", "big"]);
    let f4 = r.ok(&["rev-parse", "HEAD"]);
    r.ok(&["push", "-q", &r.url, "feature"]);
    assert_eq!(r.server("refs/heads/feature"), f4);

    // A release branch: created with approval, its deletion refused.
    let out = r.held(&["push", &r.url, "feature:refs/heads/release/1"], "approve");
    assert!(out.status.success(), "{}", text(&out));
    let out = r.run(&["push", &r.url, ":release/1"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("! [remote rejected] release/1 (blastgate: git:push denied"),
        "{}",
        text(&out)
    );
    assert_eq!(r.server("refs/heads/release/1"), f4);
    let e = r.env.wait_event("the deletion", |e| {
        e["action"] == "git:push" && e["context"]["deleted"] == "true"
    });
    assert_eq!(e["verdict"], "deny", "{e:#}");

    // Harmless look-alikes: a branch named mainline, force-pushed, and
    // deleting a feature branch.
    let out = r.run(&["push", "--force", &r.url, "feature:mainline"]);
    assert!(out.status.success(), "{}", text(&out));
    r.ok(&["commit", "-q", "--amend", "-m", "feature three, rewritten"]);
    let out = r.run(&["push", "--force", &r.url, "feature:mainline"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = r.run(&["push", &r.url, ":mainline"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(r.server("refs/heads/mainline"), "");
}

/// A push larger than blastgate reads (its pack over 64 MiB) is not
/// refused for its size over HTTP: a feature branch lands, the pack
/// streamed past what was read; on a protected branch its ancestry is
/// unknown, so a fast-forward blastgate could not prove is refused.
#[test]
fn a_push_larger_than_blastgate_reads_streams_over_http() {
    let _g = serial();
    let Some((server, env, _daemon)) = http_gateway("") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("mkdir");
    let git = |args: &[&str]| {
        let mut c = env.agent("claude", &["git"]);
        c.args(args).current_dir(&work);
        let out = output_within(&mut c, WAIT);
        (out.status.success(), text(&out))
    };
    let ok = |args: &[&str]| {
        let (ok, t) = git(args);
        assert!(ok, "git {args:?}: {t}");
        t
    };
    let url = server.url();
    ok(&["init", "-q", "-b", "main"]);
    std::fs::write(work.join("small"), "one").expect("write");
    ok(&["add", "small"]);
    ok(&["commit", "-q", "-m", "one"]);
    // main starts small (its creation is held: approved here).
    let child = env
        .agent("claude", &["git", "push", "-q", &url, "main"])
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("git push");
    let id = env.pending_approval();
    env.answer_approval("approve", &id);
    let out = child.wait_with_output().expect("git push");
    assert!(out.status.success(), "{}", text(&out));

    // 80 MiB that does not compress.
    let mut big = vec![0u8; 80 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(work.join("big.bin"), &big).expect("write");
    ok(&["add", "big.bin"]);
    ok(&["commit", "-q", "-m", "big"]);
    let head = ok(&["rev-parse", "HEAD"]).trim().to_string();

    // Onto main: a fast-forward, but its pack is past what blastgate
    // reads, so it cannot be proved one: refused with git's own report
    // (the rest of the pack read and dropped, so git reads the answer).
    let before = server.rev("refs/heads/main");
    let (pushed, t) = git(&["push", &url, "main"]);
    assert!(!pushed, "{t}");
    assert!(
        t.contains("! [remote rejected] main -> main (blastgate: git:push denied"),
        "{t}"
    );
    assert_eq!(server.rev("refs/heads/main"), before);
    let e = env.wait_event("the big push to main", |e| {
        e["action"] == "git:push"
            && e["context"]["ref"] == "refs/heads/main"
            && e["context"]["new"] == head.as_str()
    });
    assert_eq!(e["context"]["forced"], "unknown", "{e:#}");

    // The same commit on a feature branch: lands whole, the pack
    // streamed past what was read.
    ok(&["push", "-q", &url, "main:refs/heads/feature/big"]);
    assert_eq!(server.rev("refs/heads/feature/big"), head);
    let e = env.wait_event("the big push", |e| {
        e["action"] == "git:push" && e["context"]["ref"] == "refs/heads/feature/big"
    });
    assert_eq!(e["verdict"], "allow", "{e:#}");
    assert!(
        e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("pack not read whole")),
        "{e:#}"
    );
}
