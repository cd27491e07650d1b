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
    let reads_statement = gw.services.policy.current().reads_statement;
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
///
/// A refusal can carry names from the agent's own statement (the column a
/// write was refused for), so the quotes are chosen to occur nowhere in
/// the message, nor where it meets them, and the message is kept whole:
/// removing a tag from the text instead can join what surrounds it into
/// the tag again (`$$m$m$`), which would end the quoted message early and
/// run the rest as SQL.
pub fn raise(message: &str, ascii_only: bool) -> String {
    let literal: String = if ascii_only {
        message
            .chars()
            .map(|c| if c.is_ascii() { c } else { '?' })
            .collect()
    } else {
        message.to_string()
    };
    let inner = dollar_quote("m", &literal);
    let body = format!(
        " BEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = {inner}{literal}{inner}; END "
    );
    let outer = dollar_quote("blastgate", &body);
    format!("DO {outer}{body}{outer}")
}

/// A dollar quote (`$name$`, `$name1$`, …) that closes a string holding
/// `text` exactly where the string ends: its first occurrence in `text`
/// followed by the quote is that closing quote.
fn dollar_quote(name: &str, text: &str) -> String {
    (0u32..)
        .map(|n| match n {
            0 => format!("${name}$"),
            n => format!("${name}{n}$"),
        })
        .find(|q| format!("{text}{q}").find(q.as_str()) == Some(text.len()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raise_statement_quotes_the_message() {
        let sql = raise("it's $blastgate$ $m$denied\\ é", true);
        assert_eq!(
            sql,
            "DO $blastgate1$ BEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = $m1$it's $blastgate$ $m$denied\\ ?$m1$; END $blastgate1$"
        );
        let parsed = super::super::classify::classify(&sql);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].command, "DO");
    }

    /// The body of a DO block, read by the real PL/pgSQL parser: its
    /// statements' kinds, in order.
    fn plpgsql_statements(sql: &str) -> Vec<String> {
        let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).expect("parses");
        let [raw] = parsed.protobuf.stmts.as_slice() else {
            panic!("{sql:?} is not one statement");
        };
        let Some(pg_query::NodeEnum::DoStmt(d)) = raw.stmt.as_ref().and_then(|s| s.node.as_ref())
        else {
            panic!("{sql:?} is not a DO statement");
        };
        let body = d
            .args
            .iter()
            .find_map(|a| match a.node.as_ref() {
                Some(pg_query::NodeEnum::DefElem(e)) if e.defname == "as" => {
                    match e.arg.as_ref()?.node.as_ref()? {
                        pg_query::NodeEnum::String(s) => Some(s.sval.clone()),
                        _ => None,
                    }
                }
                _ => None,
            })
            .expect("a body");
        let function = format!(
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS '{}'",
            body.replace('\'', "''")
        );
        let tree = pg_query::parse_plpgsql(&function).expect("the body parses");
        let body = &tree[0]["PLpgSQL_function"]["action"]["PLpgSQL_stmt_block"]["body"];
        body.as_array()
            .expect("statements")
            .iter()
            .filter_map(|st| st.as_object()?.keys().next().cloned())
            // The parser ends every body with an implicit RETURN.
            .filter(|kind| kind != "PLpgSQL_stmt_return")
            .collect()
    }

    /// A refusal can carry names from the agent's statement (a column it
    /// writes to). Whatever they spell, the raise statement is one DO
    /// block that raises, and nothing else: removing the quote tags from
    /// the message used to join the text around them into a new tag
    /// (`$$m$m$` became `$m$`), which ended the quoted message early and
    /// ran the rest as SQL.
    #[test]
    fn no_message_breaks_out_of_the_raise_statement() {
        for message in [
            "denied",
            "writing into t.\"$$m$m$; DELETE FROM orders; RAISE EXCEPTION $m$x\"",
            "x.\"$$blastgate$blastgate$; DROP TABLE orders; --\"",
            "$blast$m$gate$; DROP TABLE orders; --",
            "ends in $m",
            "ends in $blastgate",
            "$m1$ $blastgate1$ $m$ $blastgate$ $$ $",
        ] {
            for ascii_only in [false, true] {
                let sql = raise(message, ascii_only);
                assert_eq!(
                    plpgsql_statements(&sql),
                    vec!["PLpgSQL_stmt_raise".to_string()],
                    "{sql}"
                );
                if !ascii_only {
                    assert!(sql.contains(message), "the message is kept whole: {sql}");
                }
            }
        }
    }
}
