//! The policy context every `ssh:*` action carries: one shape, the
//! schema's `SshContext`, with empty values for what an action does not
//! have.

use serde::Serialize;

#[derive(Debug, Default, Clone, Serialize)]
pub struct SshContext {
    /// exec: the command line as sent.
    pub command: String,
    /// exec: the absolute path the remote will execute ("" when blastgate
    /// could not tell).
    pub program: String,
    /// exec: the first word as typed.
    pub program_typed: String,
    /// exec: the last component of `program`.
    pub program_name: String,
    /// exec: `program` lies in a directory of the login shell's PATH on
    /// the host.
    pub program_on_path: bool,
    /// exec: `program` is a file an agent wrote through blastgate.
    pub uploaded: bool,
    /// exec: arguments naming paths an agent wrote or wrote under (a
    /// repository holding a file it uploaded, a hook perhaps).
    pub uploaded_args: Vec<String>,
    pub args: Vec<String>,
    pub shell_features: bool,
    pub recursive_delete: bool,
    pub forward_host: String,
    pub forward_port: u32,
    /// write: the absolute path written ("" when it cannot be told).
    pub path: String,
    /// write: the last component of `path`.
    pub path_name: String,
    /// write: `path` relative to the login's home ("." for home itself,
    /// "" outside it).
    pub home_relative: String,
    /// write: "open", "setstat", "remove", "mkdir", "rmdir", "rename",
    /// "rename-from", "symlink", "symlink-target", "hardlink",
    /// "hardlink-target", "scp-sink", "rsync-receive".
    pub write_op: String,
    /// write: the client names files under `path` in a stream blastgate
    /// does not read (legacy scp sink, rsync receiver).
    pub tree: bool,
    /// env: the variable's name and value.
    pub env_name: String,
    pub env_value: String,
}

impl SshContext {
    pub fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}
