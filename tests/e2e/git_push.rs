//! git pushes under policy: real git clients as agents, a bare repository
//! served by Debian's sshd through the SSH gateway, the shipped git.cedar
//! deciding each ref update (`git:push`).

mod harness;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use harness::{ssh_gateway::*, sshd::*, *};

const WAIT: Duration = Duration::from_secs(120);

struct Repo<'a> {
    s: &'a Setup,
    work: PathBuf,
    url: String,
    ssh: String,
    bare: BareRepo,
}

impl<'a> Repo<'a> {
    fn new(s: &'a Setup) -> Repo<'a> {
        let bare = BareRepo::new(&s.user);
        let url = format!(
            "ssh://{}:{}{}",
            s.dest(),
            s.sshd.port(),
            bare.path().display()
        );
        let work = s.dir.path().join("work");
        std::fs::create_dir(&work).expect("mkdir");
        let r = Repo {
            s,
            work,
            url,
            ssh: ssh_command_line(&s.known_hosts, &[]),
            bare,
        };
        r.ok(&["init", "-q"]);
        r
    }

    /// `git ARGS` as the agent, in the work tree.
    fn git(&self, args: &[&str]) -> Command {
        self.git_in(&self.work, args)
    }

    fn git_in(&self, dir: &Path, args: &[&str]) -> Command {
        let mut c = self.s.env.agent("claude", &["git"]);
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
        let id = self.s.pending_approval();
        self.s.approvals(verb, &id);
        child.wait_with_output().expect("git push")
    }

    /// The server's value of `name`, read as its owner ("" if none).
    fn server(&self, name: &str) -> String {
        let out = as_user(&self.s.user, "git")
            .arg("--git-dir")
            .arg(self.bare.path())
            .args(["rev-parse", "--verify", "-q", name])
            .stdin(Stdio::null())
            .output()
            .expect("git rev-parse");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// The recorded `git:push` event of `name` becoming `new`.
fn push_event(s: &Setup, name: &str, new: &str) -> serde_json::Value {
    s.env.wait_event(&format!("git:push {name} -> {new}"), |e| {
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
    let Some(s) = setup() else { return };
    let r = Repo::new(&s);

    // Creating main waits for a human, then lands.
    let c1 = r.commit("one");
    let out = r.held(&["push", &r.url, "main"], "approve");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(r.server("refs/heads/main"), c1);
    let e = push_event(&s, "refs/heads/main", &c1);
    assert_eq!(e["context"]["created"], "true", "{e:#}");
    assert_eq!(e["context"]["forced"], "false", "{e:#}");
    assert_eq!(e["verdict"], "allow", "{e:#}");

    // A feature branch: allowed without asking anyone.
    r.ok(&["checkout", "-q", "-b", "feature"]);
    let f1 = r.commit("feature one");
    r.ok(&["push", "-q", &r.url, "feature"]);
    assert_eq!(r.server("refs/heads/feature"), f1);

    // Clone and fetch: unaffected (no git:push, nothing held).
    let clone = s.dir.path().join("clone");
    let out = output_within(
        &mut r.git_in(
            s.dir.path(),
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
    let e = push_event(&s, "refs/heads/main", &c2);
    assert_eq!(e["context"]["old"], c1.as_str(), "{e:#}");
    assert_eq!(e["context"]["forced"], "false", "{e:#}");

    // Rewriting main: refused with git's own report; main unchanged. The
    // rewrite's parent is on the server only: blastgate asked it.
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
    let e = push_event(&s, "refs/heads/main", &rewritten);
    assert_eq!(e["verdict"], "deny", "{e:#}");
    assert_eq!(e["context"]["forced"], "true", "{e:#}");
    assert_eq!(e["context"]["old"], c2.as_str(), "{e:#}");
    assert_eq!(e["policy_id"], "git-protected-rewrite", "{e:#}");

    // The same rewrite as a `+` refspec, and through send-pack itself.
    let out = r.run(&["push", &r.url, "+refs/heads/main:refs/heads/main"]);
    assert!(rejected(&out, "main"), "{}", text(&out));
    let out = r.run(&["send-pack", "--force", &r.url, "main"]);
    assert!(!out.status.success(), "{}", text(&out));
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
    assert_eq!(r.server("refs/heads/release/1"), f3);
    let e = s.env.wait_event("the deletion", |e| {
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
