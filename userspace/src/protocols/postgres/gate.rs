//! Statements before they reach the server: classified by the real
//! Postgres parser, decided by policy, held for a human where the policy
//! says so.

use std::sync::Arc;

use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    classify::{
        Statement, ACTION_DCL, ACTION_DDL, ACTION_DELETE, ACTION_INSERT, ACTION_OPAQUE,
        ACTION_UPDATE,
    },
    functions::Functions,
};
use crate::policy::masking::MaskPlan;
use crate::{
    protocols::gateway::{Gateway, Ruling},
    records::{Event, EventKind},
};

/// A statement allowed to run, with the record to complete once the
/// server has answered.
pub struct Admitted {
    pub event: Event,
    /// Allowed as written, but a policy limits the rows it may change: it
    /// runs first where blastgate can undo it, and is decided again on
    /// the rows it really changed.
    pub measure: Option<Measure>,
}

/// What deciding a write again on its measured effect needs.
#[derive(Debug, Clone)]
pub struct Measure {
    pub action: &'static str,
    pub command: String,
    pub text: String,
    context: Value,
}

/// Rows standing for "could not be measured": every limit applies.
pub const UNMEASURED: i64 = i64::MAX;

pub enum Verdict {
    /// Every statement may run; one record each, in order.
    Run(Vec<Admitted>),
    /// Nothing runs. The message goes to the agent as a 42501 error.
    Refuse(String),
}

/// Decides every statement of one Query or Parse. One refusal refuses the
/// whole string: Postgres runs a multi-statement string as one implicit
/// transaction, so running its allowed part would be a different query.
pub async fn check(
    gw: &Gateway,
    statements: &Arc<Vec<Statement>>,
    mask: Option<&MaskPlan>,
    functions: &mut Functions,
    notify: &(dyn Fn(Uuid) + Sync),
) -> Verdict {
    let mut ruled: Vec<(Ruling, String, Option<Measure>)> = Vec::with_capacity(statements.len());
    let mut refused: Option<String> = None;
    let reads_statement = gw.ctx.policy.current().reads_statement;
    for st in statements.iter() {
        let text = match mask {
            Some(m) if m.has_detectors() => m.scan(&st.text).0,
            _ => st.text.clone(),
        };
        let user = functions.of(st).await;
        let context = json!({
            "statement": if reads_statement { text.as_str() } else { "" },
            "command": st.command,
            "tables_read": st.tables_read,
            "tables_written": st.tables_written,
            "has_where": st.has_where,
            "functions": st.functions,
            "user_functions": user.names,
            "function_volatility": user.volatility.map_or("", |v| v.name()),
            "dynamic_sql": st.dynamic_sql,
            "copy_program": st.copy_program,
            "rows_affected": -1,
        });
        let decision = gw.decide(st.action, &context);
        // A row limit decides a write only once its effect is known: does
        // one apply to this statement at all?
        let limited = decision.verdict == crate::policy::Verdict::Allow
            && matches!(st.action, ACTION_INSERT | ACTION_UPDATE | ACTION_DELETE)
            && gw.target.enforce
            && gw
                .decide(st.action, &with_rows(&context, UNMEASURED))
                .verdict
                != crate::policy::Verdict::Allow;
        let measure = limited.then(|| Measure {
            action: st.action,
            command: st.command.clone(),
            text: text.clone(),
            context: context.clone(),
        });
        let ruling = gw.rule(decision, st.action, &text, notify).await;
        if !ruling.allowed && refused.is_none() {
            refused = Some(refusal(&st.command, &ruling));
        }
        ruled.push((ruling, text, measure));
    }
    let mut admitted = Vec::with_capacity(ruled.len());
    for ((mut ruling, text, measure), st) in ruled.into_iter().zip(statements.iter()) {
        if let Some(why) = &refused {
            if ruling.allowed {
                ruling.allowed = false;
                ruling.reason =
                    format!("not run: another statement of the query was refused ({why})");
            }
            let event = gw.ruled(EventKind::Statement, st.action, text, &ruling);
            gw.record(event).await;
            continue;
        }
        if matches!(st.action, ACTION_DDL | ACTION_DCL | ACTION_OPAQUE) {
            // It may create or replace a function, trigger, rule or view.
            functions.invalidate();
        }
        let mut event = gw.ruled(EventKind::Statement, st.action, text, &ruling);
        event.duration_us = None;
        admitted.push(Admitted { event, measure });
    }
    match refused {
        Some(message) => Verdict::Refuse(message),
        None => Verdict::Run(admitted),
    }
}

fn with_rows(context: &Value, rows: i64) -> Value {
    let mut c = context.clone();
    if let Some(m) = c.as_object_mut() {
        m.insert("rows_affected".into(), Value::from(rows));
    }
    c
}

/// The decision on a write that ran (and was undone) once its effect was
/// measured: allow, or hold (a human is asked now, nothing is running) or
/// refuse. `rows` is [`UNMEASURED`] when the effect could not be measured.
pub async fn on_effect(
    gw: &Gateway,
    m: &Measure,
    rows: i64,
    notify: &(dyn Fn(Uuid) + Sync),
) -> Ruling {
    let decision = effect_decision(gw, m, rows);
    gw.rule(decision, m.action, &m.text, notify).await
}

/// The policy's answer for a write that changes `rows` rows.
pub fn effect_decision(gw: &Gateway, m: &Measure, rows: i64) -> crate::policy::Decision {
    let mut decision = gw.decide(m.action, &with_rows(&m.context, rows));
    if rows == UNMEASURED {
        decision.reason = format!("{} (its effect could not be measured)", decision.reason);
    } else {
        decision.reason = format!("{} ({rows} rows changed)", decision.reason);
    }
    decision
}

/// The refusal message for a ruling that did not allow a statement.
pub fn refusal(command: &str, ruling: &Ruling) -> String {
    format!(
        "blastgate: {} denied by policy {}: {}",
        command,
        ruling.policy_id.as_deref().unwrap_or("(default deny)"),
        ruling.reason
    )
}

/// A statement that makes the server itself raise the refusal, so the
/// error reaches the agent in order with every other response and the
/// server's transaction state becomes what the agent expects: a refused
/// statement inside a transaction block leaves it failed, as a real error
/// would. Needs PL/pgSQL (installed by default).
///
/// The message is dollar-quoted, which reads the same whatever
/// `standard_conforming_strings` is; with `ascii_only` (a client encoding
/// other than UTF-8, which the server converts from) other characters
/// become `?`.
pub fn raise(message: &str, ascii_only: bool) -> String {
    let mut literal = message.replace("$blastgate$", "").replace("$m$", "");
    if ascii_only {
        literal = literal
            .chars()
            .map(|c| if c.is_ascii() { c } else { '?' })
            .collect();
    }
    format!(
        "DO $blastgate$ BEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = $m${literal}$m$; END $blastgate$"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raise_statement_quotes_the_message() {
        let sql = raise("it's $blastgate$ $m$denied\\ é", true);
        assert_eq!(
            sql,
            "DO $blastgate$ BEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = $m$it's  denied\\ ?$m$; END $blastgate$"
        );
        let parsed = super::super::classify::classify(&sql);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].command, "DO");
    }
}
