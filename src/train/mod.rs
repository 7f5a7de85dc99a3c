//! Training: the published algorithms' steps and the machinery of a run around them (a run
//! directory, replayable randomness, progress).
pub mod dpcgan;
pub mod gswgan;
pub mod progress;
pub mod replay;
pub mod run_dir;
