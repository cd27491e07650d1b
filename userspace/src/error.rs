use crate::{config::ConfigError, records::spool::SpoolError};

/// Errors inside the daemon and CLI; `main` reports them through anyhow.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Invalid(String),
    #[error("kernel: {0}")]
    Kernel(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("control socket: {0}")]
    Control(String),
    /// The daemon understood the request and said no (its message says
    /// why).
    #[error("{0}")]
    Refused(String),
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
