//! One function per operation, each choosing its kernel by device, dtype, weight format and mode
//! (inference or training).
pub(super) mod attention;
pub(super) mod elementwise;
pub(super) mod linear;
pub(super) mod norm;
