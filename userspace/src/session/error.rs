//! Why a session (or one of its phases) ended, and whose fault that was:
//! the record says it, and each protocol tells the agent in its own form
//! (a SQLSTATE, an HTTP status, an SSH exit status).

/// Who caused an ending. It decides what the agent is told and how the
/// record reads; operators triage by it (an upstream at fault is not an
/// agent misbehaving, and neither is a blastgate bug).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The agent sent something its protocol or blastgate does not accept.
    Agent,
    /// The real server could not be reached, logged in to, or understood.
    Upstream,
    /// Policy (or a human it asked) refused.
    Policy,
    /// blastgate itself: a missing setting, a broken invariant, or the
    /// daemon shutting down.
    Blastgate,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Agent => "agent",
            Fault::Upstream => "upstream",
            Fault::Policy => "policy",
            Fault::Blastgate => "blastgate",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", fault.name())]
pub struct SessionError {
    pub fault: Fault,
    pub message: String,
    /// The daemon is stopping: not a fault in the usual sense, and agents
    /// are told to come back rather than that something is wrong.
    pub shutdown: bool,
    /// The protocol's own code when the gateway knows a more precise one
    /// than the fault's (SQLSTATE 28P01 for a wrong password, which makes
    /// psql ask for another).
    pub code: Option<&'static str>,
}

impl SessionError {
    pub fn new(fault: Fault, message: impl Into<String>) -> SessionError {
        SessionError {
            fault,
            message: message.into(),
            shutdown: false,
            code: None,
        }
    }

    pub fn with_code(self, code: &'static str) -> SessionError {
        SessionError {
            code: Some(code),
            ..self
        }
    }

    pub fn agent(message: impl Into<String>) -> SessionError {
        SessionError::new(Fault::Agent, message)
    }

    pub fn upstream(message: impl Into<String>) -> SessionError {
        SessionError::new(Fault::Upstream, message)
    }

    pub fn policy(message: impl Into<String>) -> SessionError {
        SessionError::new(Fault::Policy, message)
    }

    pub fn blastgate(message: impl Into<String>) -> SessionError {
        SessionError::new(Fault::Blastgate, message)
    }

    pub fn shutdown() -> SessionError {
        SessionError {
            shutdown: true,
            ..SessionError::blastgate("the blastgate daemon is shutting down")
        }
    }

    /// The SQLSTATE a PostgreSQL client is given.
    pub fn sqlstate(&self) -> &'static str {
        if let Some(code) = self.code {
            return code;
        }
        if self.shutdown {
            return "57P01"; // admin_shutdown: clients reconnect
        }
        match self.fault {
            Fault::Agent => "08P01",     // protocol_violation
            Fault::Upstream => "08006",  // connection_failure
            Fault::Policy => "42501",    // insufficient_privilege
            Fault::Blastgate => "XX000", // internal_error
        }
    }

    /// The HTTP status an API client is given.
    pub fn http_status(&self) -> u16 {
        if self.shutdown {
            return 503;
        }
        match self.fault {
            Fault::Agent => 400,
            Fault::Upstream => 502,
            Fault::Policy => 403,
            Fault::Blastgate => 500,
        }
    }

    /// The exit status an SSH command ends with: 126 ("cannot execute") for
    /// a refusal, as for a command policy refuses; 255, what `ssh` itself
    /// returns for a connection that failed, otherwise.
    pub fn exit_status(&self) -> u32 {
        match self.fault {
            Fault::Policy if !self.shutdown => 126,
            _ => 255,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_fault_maps_to_a_distinct_answer_in_every_protocol() {
        let all = [
            SessionError::agent("a"),
            SessionError::upstream("u"),
            SessionError::policy("p"),
            SessionError::blastgate("b"),
            SessionError::shutdown(),
        ];
        let states: std::collections::HashSet<_> = all.iter().map(|e| e.sqlstate()).collect();
        let statuses: std::collections::HashSet<_> = all.iter().map(|e| e.http_status()).collect();
        assert_eq!(states.len(), all.len());
        assert_eq!(statuses.len(), all.len());
        assert_eq!(SessionError::policy("p").exit_status(), 126);
        assert_eq!(SessionError::shutdown().exit_status(), 255);
        assert_eq!(
            SessionError::upstream("no route").to_string(),
            "upstream: no route"
        );
    }
}
