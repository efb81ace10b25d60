//! Value types every layer shares: what a delivery carries once it has been parsed, and the order
//! that decides which of two states of a prediction is the latest. Nothing here does I/O.

mod members;
mod micros;
mod prediction;
mod progress;
mod text;

pub use members::Members;
pub use micros::{from_unix_micros, unix_micros};
pub use prediction::{InvalidPrediction, MAX_DEPTH, Prediction, Status};
pub use progress::Progress;
pub use text::{InvalidText, PredictionId, WebhookId, holdable, nul_free};
