//! The one error type of dpgan. Context is added where an error crosses a boundary (CUDA, files);
//! only `main` turns an error into an exit code.
use std::fmt;
use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug)]
pub enum Error {
    /// Shapes that an op cannot combine, with the op's name and what it expected.
    Shape { op: &'static str, msg: String },
    /// Tensors on different devices handed to one op (never copied silently).
    DeviceMismatch { op: &'static str, a: String, b: String },
    /// An op this backend does not provide (yet), named with the device.
    Unsupported { op: &'static str, device: String },
    /// Anything the CUDA driver or a launch reported, with what we were doing.
    Cuda { context: String, msg: String },
    /// The driver refused to capture work into a CUDA graph (the driver's error, with what we
    /// were doing). Nothing of the work ran; the device stays usable, so a caller may take it
    /// eagerly instead.
    CaptureRefused(String),
    /// No usable CUDA device, and why.
    NoDevice(String),
    /// A file that could not be read or written, or whose contents are malformed.
    File { path: PathBuf, msg: String },
    /// An invalid argument: a hyper-parameter, a value out of range.
    Invalid(String),
    /// Autograd misuse: differentiating through something that cannot be, a missing gradient.
    Autograd(String),
    /// A privacy-spending step refused because it would take ε past the run's budget.
    PrivacyBudget(String),
    /// A training step (1-based) whose private update held a NaN or an infinity: an example whose
    /// gradient norm is not finite cannot be clipped, so the run stops rather than apply it.
    NonFinite { step: u64, what: String },
    /// Not a failure: a command that stopped before its end, with the exit status that says why
    /// (the ε budget, a signal) and what to do next.
    Stopped { code: u8, msg: String },
}

impl Error {
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape { op, msg: msg.into() }
    }
    pub fn file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::File { path: path.into(), msg: msg.into() }
    }
    pub fn cuda(context: impl Into<String>, err: impl fmt::Display) -> Self {
        Error::Cuda { context: context.into(), msg: err.to_string() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape { op, msg } => write!(f, "{op}: shape error: {msg}"),
            Error::DeviceMismatch { op, a, b } => {
                write!(f, "{op}: operands live on different devices ({a} and {b}); move one explicitly")
            }
            Error::Unsupported { op, device } => write!(f, "{op} is not available on {device}"),
            Error::Cuda { context, msg } => write!(f, "CUDA error while {context}: {msg}"),
            Error::CaptureRefused(why) => write!(f, "the driver refused a CUDA graph capture: {why}"),
            Error::NoDevice(why) => write!(f, "no CUDA device: {why}"),
            Error::File { path, msg } => write!(f, "{}: {msg}", path.display()),
            Error::Invalid(msg) => write!(f, "invalid argument: {msg}"),
            Error::Autograd(msg) => write!(f, "autograd: {msg}"),
            Error::PrivacyBudget(msg) => write!(f, "privacy budget exceeded: {msg}"),
            Error::NonFinite { step, what } => write!(
                f,
                "step {step}: {what} holds a NaN or an infinity (an example whose gradient norm is not finite cannot be \
                 clipped); the run stops without writing anything of this step or later, its last checkpoint is intact"
            ),
            Error::Stopped { msg, .. } => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for Error {}

/// Returns `Err(Error::Shape)` unless `cond` holds.
macro_rules! ensure_shape {
    ($cond:expr, $op:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::error::Error::shape($op, format!($($fmt)+)));
        }
    };
}
pub(crate) use ensure_shape;
