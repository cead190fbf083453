//! Kubernetes-style resource quantities: memory in bytes (`64Mi`, `1.5Gi`, `1G`, `1e9`) and
//! CPU in millicpus (`500m`, `0.5`, `2`).
//!
//! Parsing is exact: numbers are read as decimal mantissa and power of ten, never through
//! floating point, so `0.1Gi` is the same number of bytes on every machine. Memory rounds a
//! fractional byte count up to the next whole byte (as Kubernetes does); CPU rejects anything
//! finer than one millicpu instead of rounding, since a silently changed CPU limit is a
//! surprise. Zero is accepted; callers decide whether it is meaningful.

use thiserror::Error;

/// The memory forms accepted, quoted in every memory error.
const MEMORY_FORMS: &str = "a byte count as an integer or decimal, optionally with a binary \
    suffix (Ki, Mi, Gi, Ti, Pi, Ei), a decimal suffix (k, K, M, G, T, P, E) or an exponent \
    (e.g. 134217728, 128Mi, 1.5Gi, 1G, 1e9)";

/// The CPU forms accepted, quoted in every CPU error.
const CPU_FORMS: &str = "a number of cpus as an integer or decimal, or millicpus with the \
    suffix m (e.g. 2, 0.5, 1.25, 500m)";

/// Most significant digits kept exactly; more than a u64 can hold anyway, few enough that
/// `mantissa * 2^60` fits in a u128.
const MAX_SIGNIFICANT_DIGITS: usize = 20;

/// Binary suffixes with their power of two, largest first (for formatting).
const BINARY_SUFFIXES: [(&str, u32); 6] = [
    ("Ei", 60),
    ("Pi", 50),
    ("Ti", 40),
    ("Gi", 30),
    ("Mi", 20),
    ("Ki", 10),
];

/// Why a quantity could not be parsed. Every variant names the input and the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QuantityError {
    /// The string was empty (or only whitespace).
    #[error("empty {kind} quantity: expected {forms}")]
    Empty {
        /// `memory` or `cpu`.
        kind: &'static str,
        /// The accepted forms.
        forms: &'static str,
    },
    /// The quantity had a minus sign.
    #[error("negative {kind} quantity {input:?}: expected {forms}")]
    Negative {
        /// `memory` or `cpu`.
        kind: &'static str,
        /// The rejected input.
        input: String,
        /// The accepted forms.
        forms: &'static str,
    },
    /// The quantity did not match the grammar (bad digits, unknown suffix, ...).
    #[error("invalid {kind} quantity {input:?}: {reason}; expected {forms}")]
    Invalid {
        /// `memory` or `cpu`.
        kind: &'static str,
        /// The rejected input.
        input: String,
        /// What exactly is wrong.
        reason: String,
        /// The accepted forms.
        forms: &'static str,
    },
    /// The value does not fit the unit's 64-bit range.
    #[error("{kind} quantity {input:?} is too large: the limit is {max}")]
    Overflow {
        /// `memory` or `cpu`.
        kind: &'static str,
        /// The rejected input.
        input: String,
        /// The largest value accepted, in the unit's base form.
        max: String,
    },
    /// A CPU quantity with a fraction of a millicpu.
    #[error("cpu quantity {input:?} is finer than 1m (one millicpu); expected {forms}")]
    TooPrecise {
        /// The rejected input.
        input: String,
        /// The accepted forms.
        forms: &'static str,
    },
}

/// A parsed decimal number `mantissa * 10^exp10` and the suffix text that followed it.
#[derive(Debug, PartialEq, Eq)]
struct Decimal<'a> {
    mantissa: u128,
    exp10: i32,
    suffix: &'a str,
}

/// Who is parsing, for error messages.
#[derive(Clone, Copy)]
struct Kind {
    name: &'static str,
    forms: &'static str,
}

const MEMORY: Kind = Kind {
    name: "memory",
    forms: MEMORY_FORMS,
};
const CPU: Kind = Kind {
    name: "cpu",
    forms: CPU_FORMS,
};

impl Kind {
    fn invalid(self, input: &str, reason: impl Into<String>) -> QuantityError {
        QuantityError::Invalid {
            kind: self.name,
            input: input.to_string(),
            reason: reason.into(),
            forms: self.forms,
        }
    }
}

/// Parses a memory quantity into bytes.
///
/// Accepts an integer or decimal number with an optional binary suffix (`Ki` … `Ei`), decimal
/// suffix (`k`/`K`, `M`, `G`, `T`, `P`, `E`) or exponent (`1e6`); a fractional byte count is
/// rounded up. Zero is accepted.
///
/// # Errors
/// [`QuantityError`] for empty, negative, malformed or out-of-range (> `u64::MAX` bytes) input.
pub fn parse_memory(s: &str) -> Result<u64, QuantityError> {
    let d = parse_decimal(s, MEMORY)?;
    let (pow2, extra10) = match d.suffix {
        "" => (0, 0),
        "k" | "K" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "m" => return Err(MEMORY.invalid(s, "the suffix \"m\" (milli) makes no sense for bytes")),
        other => return Err(MEMORY.invalid(s, format!("unknown suffix {other:?}"))),
    };
    let overflow = || QuantityError::Overflow {
        kind: MEMORY.name,
        input: s.to_string(),
        max: u64::MAX.to_string(),
    };
    // mantissa < 10^20 and 2^60 < 1.2 * 10^18, so this cannot overflow a u128.
    let scaled = d.mantissa << pow2;
    let exp10 = d.exp10 + extra10;
    let bytes = if exp10 >= 0 {
        pow10(exp10.unsigned_abs())
            .and_then(|p| scaled.checked_mul(p))
            .ok_or_else(overflow)?
    } else {
        match pow10(exp10.unsigned_abs()) {
            Some(p) => scaled.div_ceil(p),
            // The divisor exceeds any possible numerator: a positive fraction below 1 byte.
            None => u128::from(scaled != 0),
        }
    };
    u64::try_from(bytes).map_err(|_| overflow())
}

/// Parses a CPU quantity into millicpus: `500m` → 500, `0.5` → 500, `2` → 2000.
///
/// # Errors
/// [`QuantityError`] for empty, negative, malformed, finer-than-1m or out-of-range input.
pub fn parse_cpu(s: &str) -> Result<u64, QuantityError> {
    let d = parse_decimal(s, CPU)?;
    let extra10 = match d.suffix {
        "" => 3,
        "m" => 0,
        other => return Err(CPU.invalid(s, format!("unknown suffix {other:?}"))),
    };
    let overflow = || QuantityError::Overflow {
        kind: CPU.name,
        input: s.to_string(),
        max: format_cpu(u64::MAX),
    };
    let exp10 = d.exp10 + extra10;
    let millis = if d.mantissa == 0 {
        0
    } else if exp10 >= 0 {
        pow10(exp10.unsigned_abs())
            .and_then(|p| d.mantissa.checked_mul(p))
            .ok_or_else(overflow)?
    } else {
        // The mantissa has no trailing zeros, so any negative exponent leaves a fraction.
        return Err(QuantityError::TooPrecise {
            input: s.to_string(),
            forms: CPU_FORMS,
        });
    };
    u64::try_from(millis).map_err(|_| overflow())
}

/// Formats bytes with the largest binary suffix that divides them exactly (`67108864` →
/// `64Mi`, `3221225472` → `3Gi`); counts that are not a multiple of 1 KiB stay plain
/// (`1536` → `1536`, `0` → `0`). [`parse_memory`] reads every output back to the same value.
pub fn format_memory(bytes: u64) -> String {
    if bytes != 0 {
        for (suffix, shift) in BINARY_SUFFIXES {
            if bytes.trailing_zeros() >= shift {
                return format!("{}{suffix}", bytes >> shift);
            }
        }
    }
    bytes.to_string()
}

/// Formats millicpus: whole cpus without suffix (`2000` → `2`), otherwise millicpus
/// (`500` → `500m`, `1250` → `1250m`).
pub fn format_cpu(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// 10^n as a u128, `None` past 10^38.
fn pow10(n: u32) -> Option<u128> {
    10u128.checked_pow(n)
}

/// Splits `[+]digits[.digits][(e|E)[+-]digits]suffix` into an exact decimal and the suffix.
/// A bare `E` (not followed by an exponent) is left as the exa suffix.
fn parse_decimal(input: &str, kind: Kind) -> Result<Decimal<'_>, QuantityError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(QuantityError::Empty {
            kind: kind.name,
            forms: kind.forms,
        });
    }
    let s = match s.as_bytes()[0] {
        b'-' => {
            return Err(QuantityError::Negative {
                kind: kind.name,
                input: input.to_string(),
                forms: kind.forms,
            })
        }
        b'+' => &s[1..],
        _ => s,
    };
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, mut rest) = s.split_at(number_end);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if frac_part.contains('.') {
        return Err(kind.invalid(input, "more than one decimal point"));
    }
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(kind.invalid(input, "no digits"));
    }

    let mut exp10: i64 = 0;
    if let Some(after_e) = rest.strip_prefix(['e', 'E']) {
        let digits = after_e.strip_prefix(['+', '-']).unwrap_or(after_e);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            // At most 4 digits: larger exponents overflow or vanish anyway.
            exp10 = if digits.len() > 4 {
                return Err(kind.invalid(input, "exponent out of range"));
            } else {
                after_e
                    .parse::<i64>()
                    .map_err(|_| kind.invalid(input, "malformed exponent"))?
            };
            rest = "";
        }
    }

    // Significant digits without leading zeros; trailing zeros move into the exponent.
    let all_digits = format!("{int_part}{frac_part}");
    exp10 -= frac_part.len() as i64;
    let trimmed = all_digits.trim_start_matches('0');
    let significant = trimmed.trim_end_matches('0');
    exp10 += (trimmed.len() - significant.len()) as i64;
    if significant.len() > MAX_SIGNIFICANT_DIGITS {
        return Err(kind.invalid(
            input,
            format!("more than {MAX_SIGNIFICANT_DIGITS} significant digits"),
        ));
    }
    let mantissa = if significant.is_empty() {
        exp10 = 0;
        0
    } else {
        significant
            .parse::<u128>()
            .map_err(|_| kind.invalid(input, "malformed number"))?
    };
    let exp10 = i32::try_from(exp10).map_err(|_| kind.invalid(input, "exponent out of range"))?;
    Ok(Decimal {
        mantissa,
        exp10,
        suffix: rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn memory_plain_and_suffixed() {
        assert_eq!(parse_memory("0"), Ok(0));
        assert_eq!(parse_memory("134217728"), Ok(134_217_728));
        assert_eq!(parse_memory("64Mi"), Ok(64 << 20));
        assert_eq!(parse_memory("1Ki"), Ok(1024));
        assert_eq!(parse_memory("2Gi"), Ok(2 << 30));
        assert_eq!(parse_memory("1Ti"), Ok(1 << 40));
        assert_eq!(parse_memory("1Pi"), Ok(1 << 50));
        assert_eq!(parse_memory("15Ei"), Ok(15 << 60));
        assert_eq!(parse_memory("1k"), Ok(1000));
        assert_eq!(parse_memory("1K"), Ok(1000));
        assert_eq!(parse_memory("128M"), Ok(128_000_000));
        assert_eq!(parse_memory("1G"), Ok(1_000_000_000));
        assert_eq!(parse_memory("1T"), Ok(1_000_000_000_000));
        assert_eq!(parse_memory("1P"), Ok(1_000_000_000_000_000));
        assert_eq!(parse_memory("1E"), Ok(1_000_000_000_000_000_000));
        assert_eq!(parse_memory("+5"), Ok(5));
        assert_eq!(parse_memory(" 64Mi "), Ok(64 << 20));
    }

    #[test]
    fn memory_exponents_and_decimals() {
        assert_eq!(parse_memory("1e6"), Ok(1_000_000));
        assert_eq!(parse_memory("1E6"), Ok(1_000_000));
        assert_eq!(parse_memory("1e+3"), Ok(1000));
        assert_eq!(parse_memory("25e-1"), Ok(3), "2.5 bytes rounds up");
        assert_eq!(parse_memory("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_memory("0.5Ki"), Ok(512));
        assert_eq!(parse_memory(".5Ki"), Ok(512));
        assert_eq!(parse_memory("1.Ki"), Ok(1024));
        assert_eq!(parse_memory("0.1Ki"), Ok(103), "102.4 rounds up to 103");
        assert_eq!(parse_memory("1.5"), Ok(2));
        assert_eq!(
            parse_memory("1e-99"),
            Ok(1),
            "a positive fraction of a byte rounds up"
        );
        assert_eq!(parse_memory("000064Mi"), Ok(64 << 20));
        assert_eq!(parse_memory("0.000Gi"), Ok(0));
        assert_eq!(parse_memory("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn memory_rejects_bad_input_with_clear_errors() {
        let e = parse_memory("").unwrap_err();
        assert!(e.to_string().starts_with("empty memory quantity"), "{e}");
        let e = parse_memory("-1Gi").unwrap_err();
        assert!(matches!(e, QuantityError::Negative { .. }), "{e}");
        assert!(e.to_string().contains("\"-1Gi\""), "{e}");
        assert!(
            e.to_string().contains("Mi"),
            "error should list the forms: {e}"
        );
        for bad in [
            "abc", "1Xi", "1 Gi", "Gi", "1.2.3", "1e", "1ee3", "1Gib", "1gi", ".",
        ] {
            let e = parse_memory(bad).unwrap_err();
            assert!(matches!(e, QuantityError::Invalid { .. }), "{bad}: {e}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        assert!(parse_memory("500m")
            .unwrap_err()
            .to_string()
            .contains("milli"));
    }

    #[test]
    fn memory_overflow_is_reported() {
        for big in [
            "18446744073709551616",
            "16Ei",
            "1e20",
            "99999999999999999999999Ei",
        ] {
            let e = parse_memory(big).unwrap_err();
            assert!(
                matches!(
                    e,
                    QuantityError::Overflow { .. } | QuantityError::Invalid { .. }
                ),
                "{big}: {e}"
            );
            assert!(e.to_string().contains(big), "{e}");
        }
        assert!(matches!(
            parse_memory("16Ei"),
            Err(QuantityError::Overflow { .. })
        ));
    }

    #[test]
    fn cpu_forms() {
        assert_eq!(parse_cpu("500m"), Ok(500));
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert_eq!(parse_cpu("1.25"), Ok(1250));
        assert_eq!(parse_cpu("0"), Ok(0));
        assert_eq!(parse_cpu("0m"), Ok(0));
        assert_eq!(parse_cpu("1m"), Ok(1));
        assert_eq!(parse_cpu("0.001"), Ok(1));
        assert_eq!(parse_cpu("1e-3"), Ok(1));
        assert_eq!(parse_cpu("2.000"), Ok(2000));
        assert_eq!(parse_cpu("1500.0m"), Ok(1500));
    }

    #[test]
    fn cpu_rejects_bad_input() {
        assert!(matches!(
            parse_cpu("-1"),
            Err(QuantityError::Negative { .. })
        ));
        assert!(matches!(parse_cpu(""), Err(QuantityError::Empty { .. })));
        for fine in ["0.0005", "1.5m", "0.1m", "1e-4"] {
            let e = parse_cpu(fine).unwrap_err();
            assert!(matches!(e, QuantityError::TooPrecise { .. }), "{fine}: {e}");
            assert!(e.to_string().contains("finer than 1m"), "{e}");
        }
        for bad in ["two", "1Gi", "1k", "m", "1 m"] {
            assert!(
                matches!(parse_cpu(bad), Err(QuantityError::Invalid { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_cpu("18446744073709552"),
            Err(QuantityError::Overflow { .. })
        ));
    }

    #[test]
    fn formatting() {
        assert_eq!(format_memory(0), "0");
        assert_eq!(format_memory(64 << 20), "64Mi");
        assert_eq!(format_memory(1536), "1536");
        assert_eq!(format_memory(3 << 29), "1536Mi");
        assert_eq!(format_memory(1 << 60), "1Ei");
        assert_eq!(format_memory(1000), "1000");
        assert_eq!(format_cpu(0), "0");
        assert_eq!(format_cpu(500), "500m");
        assert_eq!(format_cpu(2000), "2");
        assert_eq!(format_cpu(1250), "1250m");
    }

    proptest! {
        #[test]
        fn memory_round_trips(bytes in any::<u64>()) {
            prop_assert_eq!(parse_memory(&format_memory(bytes)), Ok(bytes));
        }

        #[test]
        fn memory_round_trips_suffixed(n in 0u64..1024, shift in prop::sample::select(vec![0u32, 10, 20, 30, 40, 50])) {
            let bytes = n << shift;
            prop_assert_eq!(parse_memory(&format_memory(bytes)), Ok(bytes));
        }

        #[test]
        fn cpu_round_trips(millis in any::<u64>()) {
            prop_assert_eq!(parse_cpu(&format_cpu(millis)), Ok(millis));
        }

        #[test]
        fn cpu_decimal_matches_millis(whole in 0u64..1_000_000, frac in 0u64..1000) {
            let decimal = format!("{whole}.{frac:03}");
            prop_assert_eq!(parse_cpu(&decimal), Ok(whole * 1000 + frac));
        }

        #[test]
        fn decimal_suffixes_match_integer_math(n in 0u64..1_000_000, e in 0u32..12) {
            let expected = n * 10u64.pow(e);
            prop_assert_eq!(parse_memory(&format!("{n}e{e}")), Ok(expected));
        }

        #[test]
        fn garbage_never_panics(s in "\\PC{0,24}") {
            let _ = parse_memory(&s);
            let _ = parse_cpu(&s);
        }
    }
}
