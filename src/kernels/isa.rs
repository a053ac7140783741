//! Instruction-set extensions the kernels need, for x86-64 and aarch64 alike: one name per
//! extension, one parser (`QPARITY_REQUIRE_ISA`), one detector.

use crate::{Error, Result};

/// An instruction-set extension a kernel needs.
///
/// This is the CPU feature a kernel is compiled for, not the numerics class of a golden capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// x86-64 AVX2 (`vpmaddubsw`, `vpmaddwd`).
    Avx2,
    /// x86-64 AVX-512 F/BW with VNNI (`vpdpbusd`).
    Avx512Vnni,
    /// x86-64 AMX-TILE with AMX-INT8 (`tdpbusd`), usable only once the OS grants the tile state.
    Amx,
    /// aarch64 Advanced SIMD, part of every aarch64 CPU.
    Neon,
    /// aarch64 FEAT_DotProd (`sdot`, `udot`).
    Dotprod,
    /// aarch64 FEAT_I8MM (`usmmla`, `usdot`, `sudot`).
    I8mm,
}

/// The architecture an [`Isa`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The architecture this build targets, if it has kernels.
    pub fn native() -> Option<Arch> {
        if cfg!(target_arch = "x86_64") {
            Some(Arch::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Arch::Aarch64)
        } else {
            None
        }
    }

    /// `x86_64` or `aarch64`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
}

impl Isa {
    /// Every extension, x86-64 first, each architecture in increasing order.
    pub const ALL: [Isa; 6] = [
        Isa::Avx2,
        Isa::Avx512Vnni,
        Isa::Amx,
        Isa::Neon,
        Isa::Dotprod,
        Isa::I8mm,
    ];

    /// The name used by `QPARITY_REQUIRE_ISA`, benchmark reports and kernel names.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Amx => "amx-int8",
            Isa::Neon => "neon",
            Isa::Dotprod => "dotprod",
            Isa::I8mm => "i8mm",
        }
    }

    /// The architecture the extension belongs to.
    pub fn arch(self) -> Arch {
        match self {
            Isa::Avx2 | Isa::Avx512Vnni | Isa::Amx => Arch::X86_64,
            Isa::Neon | Isa::Dotprod | Isa::I8mm => Arch::Aarch64,
        }
    }

    /// Parses a name (case-insensitive; `avx512_vnni` and `vnni` name [`Isa::Avx512Vnni`],
    /// `amx`, `amx_int8` and `amxint8` name [`Isa::Amx`]).
    pub fn parse(s: &str) -> Result<Isa> {
        let t = s.trim().to_ascii_lowercase();
        let alias = match t.as_str() {
            "avx512_vnni" | "vnni" => "avx512vnni",
            "amx" | "amx_int8" | "amxint8" => "amx-int8",
            other => other,
        };
        Isa::ALL
            .into_iter()
            .find(|i| i.name() == alias)
            .ok_or_else(|| {
                let known: Vec<&str> = Isa::ALL.iter().map(|i| i.name()).collect();
                Error::invalid("ISA name", format!("{s:?} (known: {})", known.join(", ")))
            })
    }

    /// Whether the running CPU has the extension (false for another architecture's). The
    /// standard library caches the CPU probe.
    pub fn detected(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            // CPUID alone is not enough: the OS must grant the tile state (requested once).
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => crate::kernels::x86::amx_detected(),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Isa::Dotprod => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[cfg(target_arch = "aarch64")]
            Isa::I8mm => std::arch::is_aarch64_feature_detected!("i8mm"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The extensions listed in `QPARITY_REQUIRE_ISA` (comma-separated; empty when unset). A
    /// name that is unknown, or that belongs to another architecture than this build's, is an
    /// error: a run that asks for an extension must exercise it, never skip it.
    pub fn required() -> Result<Vec<Isa>> {
        let Ok(list) = std::env::var("QPARITY_REQUIRE_ISA") else {
            return Ok(Vec::new());
        };
        Isa::parse_required(&list)
    }

    /// [`Isa::required`] on an explicit list.
    pub fn parse_required(list: &str) -> Result<Vec<Isa>> {
        let mut out = Vec::new();
        for name in list.split(',').filter(|s| !s.trim().is_empty()) {
            let isa = Isa::parse(name)?;
            let native = Arch::native();
            if native != Some(isa.arch()) {
                return Err(Error::invalid(
                    "QPARITY_REQUIRE_ISA",
                    format!(
                        "{} is an {} extension, but this build targets {}",
                        isa.name(),
                        isa.arch().name(),
                        native.map_or("an architecture without kernels", Arch::name)
                    ),
                ));
            }
            if !out.contains(&isa) {
                out.push(isa);
            }
        }
        Ok(out)
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_aliases_parse() {
        for isa in Isa::ALL {
            assert_eq!(Isa::parse(isa.name()).unwrap(), isa);
            assert_eq!(Isa::parse(&isa.name().to_uppercase()).unwrap(), isa);
        }
        assert_eq!(Isa::parse(" avx512_vnni").unwrap(), Isa::Avx512Vnni);
        assert_eq!(Isa::parse("vnni").unwrap(), Isa::Avx512Vnni);
        assert_eq!(Isa::parse("AMX").unwrap(), Isa::Amx);
        assert_eq!(Isa::parse("amx_int8").unwrap(), Isa::Amx);
        let e = Isa::parse("sse9").unwrap_err().to_string();
        assert!(e.contains("sse9") && e.contains("i8mm"), "{e}");
    }

    #[test]
    fn a_foreign_extension_is_an_error_not_a_skip() {
        let (own, foreign) = if cfg!(target_arch = "aarch64") {
            ("neon,i8mm", "avx2")
        } else {
            ("avx2,avx512vnni", "neon")
        };
        let got = Isa::parse_required(own).unwrap();
        assert_eq!(got.len(), 2);
        let e = Isa::parse_required(&format!("{own},{foreign}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(foreign), "{e}");
        assert!(Isa::parse_required("avx2,bogus").is_err());
        assert!(Isa::parse_required(" , ").unwrap().is_empty());
    }

    #[test]
    fn other_architectures_are_never_detected() {
        for isa in Isa::ALL {
            if Some(isa.arch()) != Arch::native() {
                assert!(!isa.detected(), "{isa}");
            }
        }
        #[cfg(target_arch = "aarch64")]
        assert!(Isa::Neon.detected(), "NEON is part of every aarch64 CPU");
    }
}
