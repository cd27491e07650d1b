//! Statements before they reach the server: classified by the real
//! Postgres parser, decided by policy, held for a human where the policy
//! says so.

use std::sync::Arc;

use serde_json::json;
use uuid::Uuid;

use super::{
    classify::{Statement, ACTION_DCL, ACTION_DDL, ACTION_OPAQUE},
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
}

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
    let mut ruled: Vec<(Ruling, String)> = Vec::with_capacity(statements.len());
    let mut refusal: Option<String> = None;
    let reads_statement = gw
        .ctx
        .policy
        .as_ref()
        .is_some_and(|e| e.current().reads_statement);
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
        let ruling = gw.rule(decision, st.action, &text, notify).await;
        if !ruling.allowed && refusal.is_none() {
            refusal = Some(format!(
                "blastgate: {} denied by policy {}: {}",
                st.command,
                ruling.policy_id.as_deref().unwrap_or("(default deny)"),
                ruling.reason
            ));
        }
        ruled.push((ruling, text));
    }
    let mut admitted = Vec::with_capacity(ruled.len());
    for ((mut ruling, text), st) in ruled.into_iter().zip(statements.iter()) {
        if let Some(why) = &refusal {
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
        admitted.push(Admitted { event });
    }
    match refusal {
        Some(message) => Verdict::Refuse(message),
        None => Verdict::Run(admitted),
    }
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
