//! What of one channel is kept for replay.
//!
//! A terminal (pty) channel is recorded whole, as asciicast events:
//! output, keystrokes and resizes, up to a cap per channel. A plain exec
//! keeps a bounded excerpt of its output: scp, rsync and git stream binary
//! data nobody replays, and recording it would cost the spool as much as
//! the transfer. Everything passes the masking detectors first (split
//! secrets included: see [`Redactor`]), and a cut is always marked in the
//! recording, never silent.

use crate::{
    policy::masking::MaskPlan,
    records::{redact::Redactor, IoChunk, IoStream},
};

/// Output kept of a plain exec.
pub const EXCERPT_BYTES: usize = 4096;
/// Terminal data kept per channel before the recording is cut.
pub const TERMINAL_CAP_BYTES: usize = 64 << 20;

pub struct Recording {
    /// Bytes of replay data this channel may still record.
    budget: usize,
    /// Whether keystrokes and resizes are recorded (terminals only).
    terminal: bool,
    output: Redactor,
    input: Redactor,
    /// Output not recorded once the budget ran out.
    unrecorded: u64,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub input_bytes: u64,
}

impl Recording {
    /// A pty channel: everything, starting with its window size.
    pub fn terminal(plan: &MaskPlan, at_us: u64, cols: u32, rows: u32) -> (Recording, IoChunk) {
        let r = Recording::new(plan, TERMINAL_CAP_BYTES, true);
        (r, resize_chunk(at_us, cols, rows))
    }

    /// A plain exec or subsystem: the first [`EXCERPT_BYTES`] of output.
    pub fn excerpt(plan: &MaskPlan) -> Recording {
        Recording::new(plan, EXCERPT_BYTES, false)
    }

    fn new(plan: &MaskPlan, budget: usize, terminal: bool) -> Recording {
        Recording {
            budget,
            terminal,
            output: Redactor::new(plan.clone()),
            input: Redactor::new(plan.clone()),
            unrecorded: 0,
            stdout_bytes: 0,
            stderr_bytes: 0,
            input_bytes: 0,
        }
    }

    /// Output to the agent (`stderr` for extended data).
    pub fn output(&mut self, at_us: u64, data: &[u8], stderr: bool) -> Vec<IoChunk> {
        if stderr {
            self.stderr_bytes += data.len() as u64;
        } else {
            self.stdout_bytes += data.len() as u64;
        }
        let Some(kept) = self.take_budget(data) else {
            return Vec::new();
        };
        chunks(IoStream::Output, self.output.push(at_us, kept))
    }

    /// Keystrokes (terminals only).
    pub fn input(&mut self, at_us: u64, data: &[u8]) -> Vec<IoChunk> {
        self.input_bytes += data.len() as u64;
        if !self.terminal {
            return Vec::new();
        }
        let Some(kept) = self.take_budget(data) else {
            return Vec::new();
        };
        chunks(IoStream::Input, self.input.push(at_us, kept))
    }

    pub fn resize(&mut self, at_us: u64, cols: u32, rows: u32) -> Option<IoChunk> {
        self.terminal.then(|| resize_chunk(at_us, cols, rows))
    }

    /// The channel ended: what the redactors still hold, and a marker when
    /// output was left out.
    pub fn finish(&mut self, at_us: u64) -> Vec<IoChunk> {
        let mut out = chunks(IoStream::Output, self.output.finish());
        out.extend(chunks(IoStream::Input, self.input.finish()));
        if self.unrecorded > 0 {
            out.push(IoChunk {
                stream: IoStream::Output,
                offset_us: at_us,
                data: format!(
                    "\r\n[blastgate: {} more bytes of output not recorded]\r\n",
                    self.unrecorded
                ),
            });
        }
        out
    }

    /// Secrets masked in the recording so far.
    pub fn masked(&self) -> u64 {
        self.output.masked() + self.input.masked()
    }

    fn take_budget<'a>(&mut self, data: &'a [u8]) -> Option<&'a [u8]> {
        let n = data.len().min(self.budget);
        self.budget -= n;
        self.unrecorded += (data.len() - n) as u64;
        (n > 0).then(|| &data[..n])
    }
}

fn resize_chunk(at_us: u64, cols: u32, rows: u32) -> IoChunk {
    IoChunk {
        stream: IoStream::Resize,
        offset_us: at_us,
        data: format!("{cols}x{rows}"),
    }
}

fn chunks(stream: IoStream, parts: Vec<(u64, String)>) -> Vec<IoChunk> {
    parts
        .into_iter()
        .map(|(offset_us, data)| IoChunk {
            stream,
            offset_us,
            data,
        })
        .collect()
}
