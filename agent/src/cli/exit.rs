//! The exit codes of every `stagewall` command, defined once (docs/exit-codes.md is their
//! table). Like `kubectl auth can-i`, a question answered "no" is not an error but has
//! its own code, so scripts can tell it from a failure.

use std::process::ExitCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Done; the answer is yes (allowed, nothing newly denied).
    Ok = 0,
    /// The answer is no: `check --explain` found the connection denied, `simulate` found
    /// flows that went through and would now be denied.
    Denied = 1,
    /// Bad input: the command line, policies, flow records or configuration are wrong
    /// (said on stderr with file, line and what was expected). clap's usage errors use 2
    /// too.
    BadInput = 2,
    /// The running agent could not be reached (its control socket or HTTP endpoint): it
    /// is not running, the caller is not root, or it did not answer within 10 s.
    AgentUnreachable = 3,
    /// Anything else failed: the agent refused the request, the kernel refused an
    /// operation, a file could not be written; `check --explain` could give no verdict.
    Failed = 4,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}
