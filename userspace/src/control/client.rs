//! Blocking client: `blastgate run` must not start a runtime (it execs, and
//! drops privileges first), and the other commands are one-shot.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
};

use super::{
    proto::{Request, Response},
    MAX_LINE,
};
use crate::Error;

pub struct Client {
    reader: BufReader<std::io::Take<UnixStream>>,
    writer: UnixStream,
    path: String,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, Error> {
        let s = UnixStream::connect(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                Error::Control(format!(
                    "{}: permission denied: the control socket is root-only; run this command as root",
                    path.display()
                ))
            } else {
                Error::Control(format!(
                    "cannot reach the blastgate daemon at {}: {e}",
                    path.display()
                ))
            }
        })?;
        let writer = s
            .try_clone()
            .map_err(|e| Error::Control(format!("{}: {e}", path.display())))?;
        Ok(Client {
            reader: BufReader::new(s.take(u64::MAX)),
            writer,
            path: path.display().to_string(),
        })
    }

    pub fn send(&mut self, req: &Request) -> Result<(), Error> {
        let mut line = serde_json::to_vec(req).map_err(|e| Error::Control(e.to_string()))?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .map_err(|e| Error::Control(format!("{}: {e}", self.path)))
    }

    /// Next response; `None` when the daemon closed the connection.
    pub fn recv(&mut self) -> Result<Option<Response>, Error> {
        let mut line = String::new();
        self.reader.get_mut().set_limit(MAX_LINE as u64);
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| Error::Control(format!("{}: {e}", self.path)))?;
        if n == 0 {
            return Ok(None);
        }
        if !line.ends_with('\n') {
            return Err(Error::Control(format!(
                "{}: response longer than {MAX_LINE} bytes",
                self.path
            )));
        }
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| Error::Control(format!("{}: bad response: {e}", self.path)))
    }

    /// One request, one response.
    pub fn call(path: &Path, req: &Request) -> Result<Response, Error> {
        let mut c = Client::connect(path)?;
        c.send(req)?;
        match c.recv()? {
            Some(Response::Error { message }) => Err(Error::Refused(message)),
            Some(r) => Ok(r),
            None => Err(Error::Control("the daemon closed the connection".into())),
        }
    }
}
