//! The instruction set the CPU kernels run on, at the bottom of the kernel layer: the best one this CPU
//! has, capped by the environment variable [`VARIABLE`] (read once per process), as PyTorch's
//! `ATEN_CPU_CAPABILITY` caps its kernels. The cap lets one machine run and measure the code paths of
//! smaller ones (the AVX2 kernels on an AVX-512 CPU, say); asking for more than the CPU has gives what
//! it has.
use std::sync::OnceLock;

use crate::{Error, Result};

/// The environment variable that caps the instruction set: `avx512`, `avx2` or `generic`.
pub(crate) const VARIABLE: &str = "ACTIONCLIP_CPU_ISA";

/// An instruction set level of the CPU kernels, ordered from the least to the most capable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Isa {
    /// Baseline code only (what the compiler targets), the `gemm` crate's own kernels for f32 GEMMs.
    Generic,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512F (with AVX2 and FMA).
    Avx512,
}

impl Isa {
    /// The instruction set the kernels use: [`Isa::detected`] capped by [`VARIABLE`] when it is set; an
    /// error naming the variable when its value is none of `avx512`, `avx2`, `generic`.
    pub(crate) fn selected() -> Result<Self> {
        static SELECTED: OnceLock<std::result::Result<Isa, String>> = OnceLock::new();
        SELECTED
            .get_or_init(|| {
                let detected = Self::detected();
                match std::env::var(VARIABLE) {
                    Err(std::env::VarError::NotPresent) => Ok(detected),
                    Ok(value) => Self::parse(&value).map(|cap| cap.min(detected)).ok_or(value),
                    Err(std::env::VarError::NotUnicode(value)) => Err(value.to_string_lossy().into_owned()),
                }
            })
            .as_ref()
            .copied()
            .map_err(|value| Error::Config(format!("{VARIABLE}={value:?}: expected avx512, avx2 or generic")))
    }

    /// [`Isa::selected`], or [`Isa::detected`] where the variable is invalid: for the kernels that cannot
    /// fail (the linear layers report the invalid value).
    pub(crate) fn selected_or_detected() -> Self {
        Self::selected().unwrap_or_else(|_| Self::detected())
    }

    /// The most capable instruction set this CPU has (checked at run time).
    pub(crate) fn detected() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Self::Avx2;
            }
        }
        Self::Generic
    }

    /// The level a value of [`VARIABLE`] names (case and surrounding blanks ignored).
    fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "avx512" => Some(Self::Avx512),
            "avx2" => Some(Self::Avx2),
            "generic" => Some(Self::Generic),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_variable_values() {
        assert_eq!(Isa::parse("avx512"), Some(Isa::Avx512));
        assert_eq!(Isa::parse(" AVX2\n"), Some(Isa::Avx2));
        assert_eq!(Isa::parse("generic"), Some(Isa::Generic));
        assert_eq!(Isa::parse("sse4"), None);
        assert!(Isa::Generic < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
    }

    #[test]
    fn the_selection_never_exceeds_the_cpu() {
        assert!(Isa::selected_or_detected() <= Isa::detected());
    }
}
