//! ActionCLIP on candle.
pub mod error;
pub use error::{Error, Result};
