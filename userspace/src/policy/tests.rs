//! The shipped policy set and the ways a broken copy must fail.

use std::path::{Path, PathBuf};

use super::{Bundle, Diagnostic};

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// A copy of the shipped directory with `file` replaced by `text`.
fn broken(file: &str, text: &str) -> (tempfile::TempDir, Vec<Diagnostic>) {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(shipped()).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
        }
    }
    std::fs::write(tmp.path().join(file), text).unwrap();
    let problems = match Bundle::load(tmp.path()) {
        Ok(_) => Vec::new(),
        Err(p) => p,
    };
    (tmp, problems)
}

fn assert_error_at(problems: &[Diagnostic], file: &str, line: usize, needle: &str) {
    let hit = problems
        .iter()
        .find(|d| d.file.ends_with(file) && d.line == line && d.to_string().contains(needle));
    assert!(
        hit.is_some(),
        "expected an error at {file}:{line} mentioning {needle:?}, got:\n{}",
        problems
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_shipped_set_loads_and_its_fixtures_pass_and_cover_every_policy() {
    let bundle = Bundle::load(&shipped()).unwrap_or_else(|p| {
        panic!(
            "{}",
            p.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert!(bundle.warnings.is_empty(), "{:?}", bundle.warnings);
    let report = super::fixtures::run(&bundle, &shipped());
    assert!(report.ok(), "{report:?}");
    assert!(report.passed >= 16);
}

/// The set built into the binary is the shipped directory, whole: the
/// same policies, the same masking rules, and its fixtures pass on it.
#[test]
fn the_built_in_set_is_the_shipped_directory() {
    let dir = Bundle::load(&shipped()).unwrap();
    let builtin = Bundle::build(super::bundle::Sources::builtin()).unwrap_or_else(|p| {
        panic!("{p:?}");
    });
    let mut a: Vec<&String> = dir.meta.keys().collect();
    let mut b: Vec<&String> = builtin.meta.keys().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    for (id, m) in &dir.meta {
        let bm = &builtin.meta[id];
        assert_eq!(
            (m.effect, &m.approval, m.line),
            (bm.effect, &bm.approval, bm.line),
            "{id}"
        );
    }
    // By id: a PolicySet prints in hash order, which differs run to run.
    for id in dir.meta.keys() {
        let text = |b: &Bundle| {
            b.all
                .policy(&cedar_policy::PolicyId::new(id))
                .map(|p| p.to_string())
        };
        assert_eq!(text(&dir), text(&builtin), "{id}");
    }
    assert!(!builtin.masking.is_empty());
    let report = super::fixtures::run(&builtin, &shipped());
    assert!(report.ok(), "{report:?}");
}

#[test]
fn syntax_errors_name_file_line_and_column() {
    let (_t, p) = broken(
        "extra.cedar",
        "\n\n@id(\"x\")\npermit (principal, action, resource\n",
    );
    assert_error_at(&p, "extra.cedar", 4, "");
    assert!(p[0].column > 0);
}

#[test]
fn unknown_attributes_are_reported_at_the_policy() {
    let (_t, p) = broken(
        "extra.cedar",
        "// comment\n@id(\"bad-attr\")\n@reason(\"r\")\nforbid (principal, action == Action::\"connect\", resource)\nwhen { principal.shoe_size > 3 };\n",
    );
    assert_error_at(&p, "extra.cedar", 5, "shoe_size");
}

#[test]
fn unknown_actions_are_reported() {
    let (_t, p) = broken(
        "extra.cedar",
        "@id(\"bad-action\")\n@reason(\"r\")\npermit (principal, action == Action::\"sql:yolo\", resource);\n",
    );
    assert_error_at(&p, "extra.cedar", 3, "sql:yolo");
}

#[test]
fn type_errors_are_reported() {
    let (_t, p) = broken(
        "extra.cedar",
        "\n@id(\"bad-type\")\n@reason(\"r\")\nforbid (principal, action == Action::\"sql:delete\", resource)\nwhen { context.has_where == \"yes\" };\n",
    );
    assert!(
        p.iter().any(|d| d.file.ends_with("extra.cedar")
            && d.line >= 4
            && d.message.contains("bad-type")),
        "{p:?}"
    );
}

#[test]
fn ids_are_required_unique_and_approval_only_on_forbid() {
    let (_t, p) = broken("extra.cedar", "permit (principal, action, resource);\n");
    assert_error_at(&p, "extra.cedar", 1, "@id");
    let (_t, p) = broken(
        "extra.cedar",
        "@id(\"sql-read\")\n@reason(\"dup\")\npermit (principal, action, resource);\n",
    );
    // Files load in name order: the copy in sql.cedar is the duplicate.
    assert_error_at(&p, "sql.cedar", 4, "duplicate policy id \"sql-read\"");
    let (_t, p) = broken(
        "extra.cedar",
        "@id(\"p\")\n@reason(\"r\")\n@approval(\"dba\")\npermit (principal, action, resource);\n",
    );
    assert_error_at(&p, "extra.cedar", 1, "@approval");
}

#[test]
fn the_scope_index_leaves_out_policies_for_other_actions_principals_and_resources() {
    let bundle = Bundle::load(&shipped()).unwrap();
    let connect = bundle.scopes.get("connect", "claude", "orders-db");
    let ids: Vec<String> = connect
        .relaxed
        .policies()
        .chain(connect.held.policies())
        .map(|p| p.id().to_string())
        .collect();
    assert_eq!(ids, vec!["connect-any-target".to_string()], "{ids:?}");
    let del = bundle.scopes.get("sql:delete", "claude", "orders-db");
    let n = del.relaxed.policies().count() + del.held.policies().count();
    assert!(n == 7 && n < bundle.meta.len(), "{n}");
    assert!(
        del.held.policies().count() > 0 && del.relaxed.policies().count() < n,
        "approval forbids are out of the relaxed set"
    );
}

#[test]
fn connect_decisions_see_the_destination_name() {
    let (tmp, problems) = broken(
        "names.cedar",
        "@id(\"no-paste-sites\")\n@reason(\"paste sites take data out\")\n\
         forbid (principal, action == Action::\"connect\", resource)\n\
         when { context.dst_name like \"*.paste.test\" && context.dst_name_source == \"dns\" };\n",
    );
    assert!(problems.is_empty(), "{problems:?}");
    let bundle = Bundle::load(tmp.path()).unwrap();
    let agent = super::AgentAttrs {
        name: "ci".into(),
        ..Default::default()
    };
    let target = super::TargetAttrs {
        name: "egress".into(),
        protocol: "tcp".into(),
        labels: Default::default(),
    };
    let ask = |name: &str| {
        let ctx = serde_json::json!({"dst_name": name, "dst_name_source": "dns"});
        bundle.decide(&agent, &target, "connect", &ctx).unwrap()
    };
    assert_eq!(
        ask("x.paste.test").policy_id.as_deref(),
        Some("no-paste-sites")
    );
    assert_eq!(ask("x.paste.test").verdict, super::Verdict::Deny);
    assert_eq!(ask("api.test").verdict, super::Verdict::Allow);
    // Without a name (an address only): the defaults apply.
    let bare = bundle
        .decide(&agent, &target, "connect", &serde_json::Value::Null)
        .unwrap();
    assert_eq!(bare.verdict, super::Verdict::Allow);
}

#[test]
fn policies_tell_a_verified_job_from_one_its_environment_claims() {
    let (tmp, problems) = broken(
        "jobs.cedar",
        "@id(\"deploys-of-acme-app\")\n@reason(\"only acme/app's jobs, as its token says\")\n\
         forbid (principal, action == Action::\"connect\", resource)\n\
         unless { principal has job && principal.job.verified.repository == \"acme/app\" };\n",
    );
    assert!(problems.is_empty(), "{problems:?}");
    let bundle = Bundle::load(tmp.path()).unwrap();
    let target = super::TargetAttrs {
        name: "orders".into(),
        protocol: "tcp".into(),
        labels: Default::default(),
    };
    let job = |verified: &[&str]| crate::jobs::CiJob {
        provider: "github".into(),
        fields: [("repository", "acme/app"), ("run_id", "1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        verified: verified.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    };
    let ask = |job: Option<crate::jobs::CiJob>| {
        let agent = super::AgentAttrs {
            name: "ci".into(),
            job: job.as_ref().map(super::decide::JobAttrs::of),
            ..Default::default()
        };
        bundle
            .decide(&agent, &target, "connect", &serde_json::Value::Null)
            .unwrap()
            .verdict
    };
    assert_eq!(ask(Some(job(&["repository"]))), super::Verdict::Allow);
    // The same repository, said only by the environment: not trusted.
    assert_eq!(ask(Some(job(&[]))), super::Verdict::Deny);
    assert_eq!(ask(None), super::Verdict::Deny);
}

/// A SigV4a request may execute in any region of its set: policy sees the
/// set and region "*" for a wildcard, and can hold or refuse on them.
#[test]
fn aws_decisions_see_a_sigv4a_region_set() {
    let (tmp, problems) = broken(
        "anywhere.cedar",
        "@id(\"aws-pinned-regions\")\n@reason(\"production calls must name their region\")\n\
         forbid (principal, action in Action::\"aws\", resource)\n\
         when { context.region == \"*\" || context.region_set.contains(\"*\") };\n",
    );
    assert!(problems.is_empty(), "{problems:?}");
    let bundle = Bundle::load(tmp.path()).unwrap();
    let agent = super::AgentAttrs {
        name: "ci".into(),
        ..Default::default()
    };
    let target = super::TargetAttrs {
        name: "aws-prod".into(),
        protocol: "https".into(),
        labels: Default::default(),
    };
    let ask = |region: &str, set: &[&str], signature: &str| {
        let ctx = serde_json::json!({
            "service": "s3", "operation": "ListObjectsV2", "region": region,
            "region_set": set, "signature": signature,
        });
        bundle
            .decide(&agent, &target, "aws:s3:ListObjectsV2", &ctx)
            .unwrap()
    };
    let anywhere = ask("*", &["*"], "sigv4a");
    assert_eq!(anywhere.verdict, super::Verdict::Deny);
    assert_eq!(anywhere.policy_id.as_deref(), Some("aws-pinned-regions"));
    assert_eq!(
        ask("*", &["us-east-1", "eu-west-1"], "sigv4a").verdict,
        super::Verdict::Deny
    );
    assert_eq!(
        ask("us-east-1", &["us-east-1"], "sigv4a").verdict,
        super::Verdict::Allow
    );
    assert_eq!(
        ask("us-east-1", &["us-east-1"], "sigv4").verdict,
        super::Verdict::Allow
    );
}
