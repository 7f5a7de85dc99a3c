//! Stopping a long run cleanly. Once [`install`]ed, SIGINT (Ctrl-C) and SIGTERM (a scheduler's
//! preemption) only ask: the training loops finish the step under way, write a checkpoint and
//! return, so the run can be resumed where it stopped. A second signal exits at once (130 or 143,
//! the shell's codes for death by SIGINT or SIGTERM), for when the first is not soon enough.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Once;

use signal_hook::consts::{SIGINT, SIGTERM};

use crate::error::{Error, Result};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static WHICH: AtomicUsize = AtomicUsize::new(0);
static INSTALL: Once = Once::new();

/// The signal that asked a run to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    /// The exit status a shell reports for a process that this signal ended: 128 + its number.
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Interrupt => 128 + SIGINT as u8,
            Signal::Terminate => 128 + SIGTERM as u8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }
}

/// Routes SIGINT and SIGTERM to [`requested`] for the rest of the process (once; later calls do
/// nothing). The handlers only store to atomics, which is all a signal handler may safely do.
pub fn install() -> Result<()> {
    let mut outcome = Ok(());
    INSTALL.call_once(|| {
        for signal in [SIGINT, SIGTERM] {
            // The exit goes first: a signal that finds a stop already requested ends the process.
            let registered = signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, &REQUESTED)
                .and_then(|_| signal_hook::flag::register_usize(signal, &WHICH, signal as usize))
                .and_then(|_| signal_hook::flag::register(signal, &REQUESTED));
            if let Err(e) = registered {
                outcome = Err(Error::Invalid(format!("cannot install the handler for signal {signal}: {e}")));
                return;
            }
        }
    });
    outcome
}

/// The signal that asked the run to stop, if one did.
pub fn requested() -> Option<Signal> {
    if !REQUESTED.load(Ordering::SeqCst) {
        return None;
    }
    Some(if WHICH.load(Ordering::SeqCst) == SIGTERM as usize { Signal::Terminate } else { Signal::Interrupt })
}
