//! A policy directory, loaded and validated as one unit.
//!
//! A bundle is only ever built whole: schema parsed, every `*.cedar` file
//! parsed, ids assigned from `@id`, the set validated in strict mode and
//! linted. Any error and there is no bundle, so the daemon keeps the one it
//! has and no request is evaluated against a half-loaded set.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    str::FromStr,
};

use cedar_policy::{
    Authorizer, Effect, Entities, PolicyId, PolicySet, Schema, ValidationMode, Validator,
};

use super::diagnostic::{from_miette, line_col, Diagnostic, Severity};

pub const SCHEMA_FILE: &str = "blastgate.cedarschema";

/// What blastgate knows about one policy beyond Cedar's view of it.
#[derive(Debug, Clone)]
pub struct PolicyMeta {
    pub id: String,
    pub effect: Effect,
    pub reason: Option<String>,
    /// `@approval("group")` on a forbid: hold instead of deny.
    pub approval: Option<String>,
    pub file: PathBuf,
    pub line: usize,
}

pub struct Bundle {
    pub dir: PathBuf,
    pub schema: Schema,
    /// Every policy.
    pub all: PolicySet,
    pub meta: HashMap<String, PolicyMeta>,
    /// Action entities (with their groups) from the schema.
    pub actions: Entities,
    pub authorizer: Authorizer,
    /// Lint findings that did not stop the load.
    pub warnings: Vec<Diagnostic>,
    /// Decisions of this bundle by request; a reload builds a new bundle,
    /// so a stale decision cannot outlive the policies that made it.
    pub cache: super::decide::DecisionCache,
    /// Whether any policy reads `context.statement`. When none does,
    /// gateways leave the text out of the request, so statements that
    /// differ only in literal values share one cached decision.
    pub reads_statement: bool,
    pub entities: super::decide::EntitiesCache,
    /// Per-request subsets of `all` by scope, split into the approval
    /// forbids and the rest.
    pub scopes: super::scope::ScopeIndex,
    /// Masking rules from `masking.toml` (empty when there is none).
    pub masking: super::masking::Masking,
}

fn err(file: &Path, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: file.to_owned(),
        line: 0,
        column: 0,
        message: message.into(),
    }
}

/// The text a bundle is built from: a policy directory on disk, or the
/// policies built into the binary (what a daemon with no `[policy]`
/// enforces). Read errors are kept, to be reported with the rest.
pub struct Sources {
    /// The directory, or a label naming the built-in set.
    pub origin: PathBuf,
    schema: Result<String, String>,
    policies: Vec<(PathBuf, Result<String, String>)>,
    masking: Option<Result<String, String>>,
}

/// `policies/*.cedar`, the schema and `masking.toml` by file name, as
/// they were when this binary was built (see build.rs).
const BUILTIN_FILES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/builtin_policies.rs"));

/// The built-in policy files: (file name, text).
pub fn builtin_files() -> &'static [(&'static str, &'static str)] {
    BUILTIN_FILES
}

/// Where the built-in set says it comes from in diagnostics and status.
pub const BUILTIN_ORIGIN: &str = "<built-in policies>";

impl Sources {
    /// Every `*.cedar` file of `dir`, its schema and its `masking.toml`.
    pub fn read(dir: &Path) -> Result<Sources, Vec<Diagnostic>> {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| e.to_string());
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(d) => d
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
                .collect(),
            Err(e) => {
                return Err(vec![err(
                    dir,
                    format!("cannot read the policy directory: {e}"),
                )])
            }
        };
        files.sort();
        let masking_path = dir.join(super::masking::MASKING_FILE);
        let masking = match std::fs::read_to_string(&masking_path) {
            Ok(t) => Some(Ok(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(Err(e.to_string())),
        };
        Ok(Sources {
            origin: dir.to_path_buf(),
            schema: read(&dir.join(SCHEMA_FILE)),
            policies: files.into_iter().map(|f| (f.clone(), read(&f))).collect(),
            masking,
        })
    }

    /// The policies shipped in `policies/`, compiled into this binary.
    pub fn builtin() -> Sources {
        const FILES: &[(&str, &str)] = BUILTIN_FILES;
        let origin = PathBuf::from(BUILTIN_ORIGIN);
        let named = |n: &str| {
            FILES
                .iter()
                .find(|(f, _)| *f == n)
                .map(|(_, t)| t.to_string())
        };
        Sources {
            schema: named(SCHEMA_FILE).ok_or_else(|| "not built in".to_string()),
            policies: FILES
                .iter()
                .filter(|(n, _)| n.ends_with(".cedar"))
                .map(|(n, t)| (origin.join(n), Ok(t.to_string())))
                .collect(),
            masking: named(super::masking::MASKING_FILE).map(Ok),
            origin,
        }
    }
}

impl Bundle {
    /// Loads `dir`; on failure returns every problem found (errors first).
    pub fn load(dir: &Path) -> Result<Bundle, Vec<Diagnostic>> {
        Bundle::build(Sources::read(dir)?)
    }

    /// Builds and validates a bundle from its text; on failure returns
    /// every problem found (errors first).
    pub fn build(sources: Sources) -> Result<Bundle, Vec<Diagnostic>> {
        let dir = sources.origin.as_path();
        let mut problems = Vec::new();
        let schema_path = dir.join(SCHEMA_FILE);
        let schema = match &sources.schema {
            Ok(text) => match Schema::from_cedarschema_str(text) {
                Ok((schema, _warnings)) => Some(schema),
                Err(e) => {
                    problems.push(from_miette(
                        Severity::Error,
                        schema_path.clone(),
                        text,
                        &e,
                        e.to_string(),
                    ));
                    None
                }
            },
            Err(e) => {
                problems.push(err(&schema_path, format!("cannot read the schema: {e}")));
                None
            }
        };
        if sources.policies.is_empty() {
            problems.push(err(dir, "no *.cedar policy files"));
        }

        let mut all = PolicySet::new();
        let mut meta: HashMap<String, PolicyMeta> = HashMap::new();
        let mut texts: HashMap<PathBuf, String> = HashMap::new();
        for (file, text) in &sources.policies {
            let text = match text {
                Ok(t) => t.clone(),
                Err(e) => {
                    problems.push(err(file, format!("cannot read: {e}")));
                    continue;
                }
            };
            let parsed = match PolicySet::from_str(&text) {
                Ok(p) => p,
                Err(errors) => {
                    for e in errors.iter() {
                        problems.push(from_miette(
                            Severity::Error,
                            file.clone(),
                            &text,
                            e,
                            e.to_string(),
                        ));
                    }
                    continue;
                }
            };
            let mut search_from = 0;
            for policy in parsed.policies() {
                // Position: the policy's own text, found in the file.
                let src = policy.to_string();
                let offset = text
                    .get(search_from..)
                    .and_then(|rest| rest.find(src.trim()))
                    .map_or(0, |o| o + search_from);
                search_from = offset + 1;
                let (line, column) = line_col(&text, offset);
                let at = |message: String| Diagnostic {
                    severity: Severity::Error,
                    file: file.clone(),
                    line,
                    column,
                    message,
                };
                let Some(id) = policy.annotation("id").map(str::to_string) else {
                    problems.push(at("policy has no @id(\"...\") annotation".into()));
                    continue;
                };
                if let Some(other) = meta.get(&id) {
                    problems.push(at(format!(
                        "duplicate policy id {id:?} (also at {}:{})",
                        other.file.display(),
                        other.line
                    )));
                    continue;
                }
                let approval = policy.annotation("approval").map(str::to_string);
                if approval.is_some() && policy.effect() == Effect::Permit {
                    problems.push(at(format!(
                        "policy {id:?}: @approval only makes sense on a forbid"
                    )));
                }
                let reason = policy.annotation("reason").map(str::to_string);
                if reason.is_none() {
                    let mut w = at(format!(
                        "policy {id:?} has no @reason(\"...\"): denials will only show its id"
                    ));
                    w.severity = Severity::Warning;
                    problems.push(w);
                }
                let renamed = policy.new_id(PolicyId::new(&id));
                if let Err(e) = all.add(renamed) {
                    problems.push(at(format!("policy {id:?}: {e}")));
                    continue;
                }
                meta.insert(
                    id.clone(),
                    PolicyMeta {
                        id,
                        effect: policy.effect(),
                        reason,
                        approval,
                        file: file.clone(),
                        line,
                    },
                );
            }
            texts.insert(file.clone(), text);
        }

        if let Some(schema) = &schema {
            let result = Validator::new(schema.clone()).validate(&all, ValidationMode::Strict);
            for e in result.validation_errors() {
                let id = e.policy_id().to_string();
                let (file, text) = meta
                    .get(&id)
                    .and_then(|m| texts.get(&m.file).map(|t| (m.file.clone(), t.as_str())))
                    .unwrap_or((dir.to_path_buf(), ""));
                problems.push(from_miette(
                    Severity::Error,
                    file,
                    text,
                    e,
                    format!("policy {id:?}: {e}"),
                ));
            }
            for w in result.validation_warnings() {
                problems.push(Diagnostic {
                    severity: Severity::Warning,
                    file: dir.to_path_buf(),
                    line: 0,
                    column: 0,
                    message: w.to_string(),
                });
            }
        }

        let masking_path = dir.join(super::masking::MASKING_FILE);
        let masking = match &sources.masking {
            None => Ok(super::masking::Masking::default()),
            Some(Ok(text)) => super::masking::Masking::parse(&masking_path, text),
            Some(Err(e)) => Err(vec![err(&masking_path, format!("cannot read: {e}"))]),
        };
        let masking = match masking {
            Ok(m) => Some(m),
            Err(p) => {
                problems.extend(p);
                None
            }
        };
        problems.sort_by(|a, b| {
            (a.severity, &a.file, a.line, a.column).cmp(&(b.severity, &b.file, b.line, b.column))
        });
        let (warnings, errors): (Vec<_>, Vec<_>) = problems
            .into_iter()
            .partition(|d| d.severity == Severity::Warning);
        let (schema, masking) = match (schema, masking) {
            (Some(s), Some(m)) if errors.is_empty() => (s, m),
            _ => {
                let mut all_problems = errors;
                all_problems.extend(warnings);
                return Err(all_problems);
            }
        };
        let actions = schema
            .action_entities()
            .map_err(|e| vec![err(&schema_path, format!("schema actions: {e}"))])?;
        let held = |p: &cedar_policy::Policy| {
            meta.get(&p.id().to_string())
                .is_some_and(|m| m.approval.is_some() && m.effect == Effect::Forbid)
        };
        let scopes = super::scope::ScopeIndex::new(&all, &held, &schema, &actions);
        let reads_statement = all.policies().any(|p| {
            let src: String = p
                .to_string()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            src.contains(".statement") || src.contains("[\"statement\"]")
        });
        Ok(Bundle {
            reads_statement,
            masking,
            scopes,
            dir: dir.to_path_buf(),
            schema,
            all,
            meta,
            actions,
            authorizer: Authorizer::new(),
            warnings,
            cache: Default::default(),
            entities: Default::default(),
        })
    }
}
