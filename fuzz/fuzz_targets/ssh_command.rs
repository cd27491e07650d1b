//! The SSH exec command parser (`protocols::ssh::command::parse`): any
//! line, and what it must keep true of it.
#![no_main]

#[path = "common.rs"]
mod common;

use blastgate::protocols::ssh::command::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: common::init(), |data: &[u8]| {
    common::run(|| {
        // The gateway gets the line as bytes; a line that is not UTF-8 is
        // read lossily, as the handler does.
        let line = String::from_utf8_lossy(data);
        let cmd = parse(&line);
        assert_eq!(cmd.line, line, "the recorded line is the line sent");
        assert!(!cmd.program.contains('/'), "program names carry no directory");
        // Parsing is a function of the line.
        let again = parse(&line);
        assert_eq!(
            (cmd.program, cmd.args, cmd.shell_features),
            (again.program, again.args, again.shell_features)
        );
    })
});
