//! What the binary writes: lines on stdout that end the command quietly when the reader has
//! gone (`qm jobs | head -3`), the documented exit codes, and errors as text or JSON.

use serde_json::json;
use std::fmt;
use std::io::{ErrorKind, Write};
use std::process::ExitCode;

/// Writes a line on stdout; see [`write`].
macro_rules! say {
    () => {
        $crate::out::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::out::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use say;

/// Writes on stdout. When the reader has closed the pipe the command has nothing left to say,
/// so the process ends at once with exit code 0 (as `head` expects); any other failure to write
/// ends it with code 1.
pub fn write(args: fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    written(stdout.write_fmt(args).and_then(|()| stdout.flush()));
}

/// Writes bytes on stdout as they are (a replica's log), as `write` does.
pub fn write_bytes(bytes: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    written(stdout.write_all(bytes).and_then(|()| stdout.flush()));
}

fn written(result: std::io::Result<()>) {
    if let Err(e) = result {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("qm: writing to stdout: {e}");
        std::process::exit(Exit::Failed as i32);
    }
}

/// The exit codes, as documented in `docs/cli.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Anything else that failed.
    Failed = 1,
    /// The command line or the request was malformed (clap's own code for usage errors).
    Usage = 2,
    /// The job, node, team or member named does not exist.
    NotFound = 3,
    /// No replica could be reached or none could answer (no quorum, no leader).
    Unavailable = 4,
    /// The cluster understood the request and refused it: the state or the policy forbids it.
    Refused = 5,
}

impl Exit {
    /// The word that JSON errors carry.
    pub fn word(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Usage => "usage",
            Self::NotFound => "not_found",
            Self::Unavailable => "unavailable",
            Self::Refused => "refused",
        }
    }

    /// The exit code a replica's answer maps to.
    pub fn of_status(code: tonic::Code) -> Self {
        use tonic::Code::*;
        match code {
            InvalidArgument | OutOfRange => Self::Usage,
            NotFound => Self::NotFound,
            Unavailable | DeadlineExceeded => Self::Unavailable,
            FailedPrecondition | PermissionDenied | Unauthenticated | ResourceExhausted | AlreadyExists | Aborted => {
                Self::Refused
            }
            _ => Self::Failed,
        }
    }
}

/// An error that knows its exit code; any other error exits with [`Exit::Failed`].
#[derive(Debug)]
pub struct Failure {
    /// The code.
    pub exit: Exit,
    /// What to tell the user.
    pub message: String,
}

impl Failure {
    /// A failure with this code.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self { exit, message: message.into() }
    }

    /// A malformed command line: the flag named and the reason.
    pub fn usage(message: impl Into<String>) -> anyhow::Error {
        Self::new(Exit::Usage, message).into()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Reports an error on stderr, as text or as one line of JSON, and returns its exit code.
pub fn report(e: &anyhow::Error, json: bool) -> ExitCode {
    let exit = e.chain().find_map(|c| c.downcast_ref::<Failure>()).map_or(Exit::Failed, |f| f.exit);
    let message = format!("{e:#}");
    if json {
        let value = json!({ "error": { "code": exit.word(), "exit_code": exit as u8, "message": message } });
        eprintln!("{value}");
    } else {
        eprintln!("qm: {message}");
    }
    ExitCode::from(exit as u8)
}
