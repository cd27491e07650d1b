//! The agent's side of a session blastgate refuses as a whole (its connect
//! denied, or no login upstream possible): the SSH handshake completes so
//! the agent can be told why, and every command, shell or subsystem ends
//! at once with the reason on stderr and the refusal's exit status — what
//! a per-command refusal looks like, so scripts read both the same way.

use russh::{
    server::{self, Msg, Session},
    Channel, ChannelId,
};

use super::handler::SshError;

pub struct Refusing {
    /// Shown on stderr.
    pub message: String,
    pub exit_status: u32,
}

impl Refusing {
    fn refuse(&self, channel: ChannelId, session: &mut Session) -> Result<(), SshError> {
        session.channel_success(channel)?;
        session.extended_data(channel, 1, format!("{}\r\n", self.message).into_bytes())?;
        session.exit_status_request(channel, self.exit_status)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }
}

impl server::Handler for Refusing {
    type Error = SshError;

    super::accept_any_login!();

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse(channel, session)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse(channel, session)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse(channel, session)
    }
}
