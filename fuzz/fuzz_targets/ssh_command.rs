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
        assert!(!cmd.name().contains('/'), "a program's name carries no directory");
        // `X=1 rm -rf /` runs rm, not `X=1`: an assignment prefix is never
        // taken for the program.
        if cmd.program.contains('=') && !cmd.program.starts_with('=') {
            let before = cmd.program.split('=').next().unwrap_or_default();
            if !before.is_empty()
                && before.chars().all(|c| c == '_' || c.is_ascii_alphanumeric())
                && !before.starts_with(|c: char| c.is_ascii_digit())
            {
                assert!(cmd.shell_features, "assignment prefix not flagged: {line:?}");
            }
        }
        // Parsing is a function of the line.
        let again = parse(&line);
        assert_eq!(
            (cmd.program, cmd.args, cmd.shell_features, cmd.recursive_delete),
            (again.program, again.args, again.shell_features, again.recursive_delete)
        );
    })
});
