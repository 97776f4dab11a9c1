//! Error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
pub type Result<T> = std::result::Result<T, Error>;
