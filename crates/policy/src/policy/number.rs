//! Decimal numbers in and out of `f64`, without core's float parsing and formatting.
//!
//! `str::parse::<f64>` links Eisel-Lemire with a 10 KB table of powers of five, and `{}` or
//! `{:.3}` on an `f64` link Grisu and Dragon4 with their tables: all that for numbers read
//! and printed at configuration time and in breaker transition logs. Here values are rounded
//! exactly in integers instead: printing from the float's bits, the shortest text found by
//! trying 0, 1, 2, … decimals until it reads back as the same `f64`; parsing with one
//! floating-point operation when that is exact, else corrected against the exact value.
//!
//! Measured on the filter's `.wasm` (`make wasm`), each part replaced by core's: [`parse`]
//! by `str::parse` +14,180 B and both printers by `format!` +12,674 B (on 326,129 B);
//! [`text`] alone by `{}` +14,580 B and [`fixed`] alone by `{:.N}` +15,744 B (on 325,433 B;
//! alone, each keeps the other's code and adds core's Grisu and Dragon4). All three by
//! core's: +26,794 B, 8 % of the filter.

/// `x` as its shortest decimal text that parses back to `x`, as `{}` prints it (`150`,
/// `10.005`, `-1`). Magnitudes beyond 10^15 or below 10^-17, which no policy needs, come out
/// in scientific notation, rounded to 16 significant digits.
pub fn text(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    let sign = if x.is_sign_negative() { "-" } else { "" };
    let a = x.abs();
    if a.is_infinite() {
        return format!("{sign}inf");
    }
    for decimals in 0..=17 {
        let Some(t) = rounded(a, decimals, false) else {
            break;
        };
        if parse(&t) == Some(a) {
            return format!("{sign}{t}");
        }
    }
    if a == 0.0 {
        return format!("{sign}0");
    }
    // Scientific: scale into [1, 10) by powers of ten, in large steps first to keep the
    // rounding error small (hence 16 digits, not 17).
    let (mut m, mut exp) = (a, 0i32);
    for (p, k) in [(1e100, 100), (1e10, 10), (10.0, 1)] {
        while m >= p {
            m /= p;
            exp += k;
        }
    }
    for (p, k) in [(1e100, 100), (1e10, 10), (10.0, 1)] {
        while m * p < 10.0 {
            m *= p;
            exp -= k;
        }
    }
    let mut mantissa = rounded(m, 15, false).unwrap_or_default();
    while mantissa.ends_with('0') {
        mantissa.pop();
    }
    if mantissa.ends_with('.') {
        mantissa.pop();
    }
    format!("{sign}{mantissa}e{exp}")
}

/// `x` with exactly `decimals` decimals, as `{:.N}` prints it (ties to even); from 10^15 on
/// as [`text`] does.
pub fn fixed(x: f64, decimals: usize) -> String {
    let sign = if x.is_sign_negative() && !x.is_nan() {
        "-"
    } else {
        ""
    };
    match rounded(x.abs(), decimals, true) {
        Some(t) => format!("{sign}{t}"),
        None => text(x),
    }
}

/// Non-negative `a` rounded to `decimals` decimals (at most 17), exactly, as text; `None`
/// from 10^15 on (or for `inf` and `NaN`), where integers would overflow. Ties go to even as
/// `{:.N}` does, else away from zero as the shortest form of `{}` does.
fn rounded(a: f64, decimals: usize, ties_to_even: bool) -> Option<String> {
    if a.is_nan() || a >= 1e15 || decimals > 17 {
        return None;
    }
    let bits = a.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1 << 52) - 1);
    // a = mantissa × 2^-shift exactly; below 10^15 the exponent is negative.
    let (mantissa, shift) = match biased {
        0 => (fraction, 1074),
        _ => (fraction | 1 << 52, 1075 - biased),
    };
    let scale = 10u128.pow(decimals as u32);
    // Below 2^53 × 10^17 < 2^110: no overflow.
    let v = u128::from(mantissa) * scale;
    let n = match u32::try_from(shift) {
        Ok(0) => v,
        Ok(s @ 1..=127) => {
            let (q, r, half) = (v >> s, v & ((1 << s) - 1), 1 << (s - 1));
            if r > half || (r == half && (!ties_to_even || q % 2 == 1)) {
                q + 1
            } else {
                q
            }
        }
        _ => 0,
    };
    let int = u64::try_from(n / scale).ok()?;
    let frac = u64::try_from(n % scale).ok()?;
    Some(if decimals == 0 {
        int.to_string()
    } else {
        format!("{int}.{frac:0decimals$}")
    })
}

/// Parses a decimal number as `str::parse::<f64>` does, correctly rounded, in the forms
/// policies, durations and breaker expressions use: `12`, `-0.5`, `1.`, `.5`, `2.5e-3`, `+3`.
/// `None` for anything else, `inf` and `NaN` included.
pub fn parse(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let (negative, mut i) = match b.first() {
        Some(b'-') => (true, 1),
        Some(b'+') => (false, 1),
        _ => (false, 0),
    };
    // The value is `digits` (significant, leading zeros dropped) × 10^exp.
    let mut digits = Vec::new();
    let mut exp: i64 = 0;
    let (mut any, mut fraction) = (false, false);
    while let Some(&c) = b.get(i) {
        match c {
            b'0'..=b'9' => {
                any = true;
                if !(digits.is_empty() && c == b'0') {
                    digits.push(c - b'0');
                }
                if fraction {
                    exp -= 1;
                }
            }
            b'.' if !fraction => fraction = true,
            _ => break,
        }
        i += 1;
    }
    if !any {
        return None;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        let minus = b.get(i) == Some(&b'-');
        if let Some(b'-' | b'+') = b.get(i) {
            i += 1;
        }
        let start = i;
        let mut e: i64 = 0;
        while let Some(&c @ b'0'..=b'9') = b.get(i) {
            // Saturated: far beyond any f64 either way.
            e = (e * 10 + i64::from(c - b'0')).min(1 << 40);
            i += 1;
        }
        if i == start {
            return None;
        }
        exp += if minus { -e } else { e };
    }
    if i != b.len() {
        return None;
    }
    while digits.last() == Some(&0) {
        digits.pop();
        exp += 1;
    }
    let x = magnitude(&digits, exp);
    Some(if negative { -x } else { x })
}

/// Significant digits kept: any f64 rounding is decided within 768 of them; the rest only
/// says whether something non-zero follows (as core's parser does). The bound also keeps the
/// work linear in a long number.
const MAX_DIGITS: usize = 800;

/// `digits` × 10^`exp`, correctly rounded (ties to even); `digits` has no leading zero.
fn magnitude(digits: &[u8], exp: i64) -> f64 {
    let n = digits.len() as i64;
    if n == 0 || n + exp < -330 {
        return 0.0;
    }
    if n + exp > 310 {
        return f64::INFINITY;
    }
    // One rounding when both operands are exact: an integer below 2^53, 10^k up to 10^22.
    if n <= 15 && exp.abs() <= 22 {
        let w = digits.iter().fold(0u64, |w, &d| w * 10 + u64::from(d)) as f64;
        let p = pow10(exp.unsigned_abs() as u32);
        return if exp < 0 { w / p } else { w * p };
    }
    // The exact path below (with `compare` and `Big`) costs 2,373 B of `.wasm` against the
    // guess alone, which can be a unit in the last place off from 16 significant digits on:
    // `0.30000000000000004`, as JavaScript and serde_json print 0.1 + 0.2, would not read back
    // as the value that was written.
    let (kept, sticky) = match digits.split_at_checked(MAX_DIGITS) {
        // Trailing zeros are gone: whatever follows is non-zero.
        Some((kept, rest)) if !rest.is_empty() => (kept, true),
        _ => (digits, false),
    };
    let exp = exp + (n - kept.len() as i64);
    let mut exact = Big(vec![0]);
    for &d in kept {
        exact.mul_add(10, u32::from(d));
    }
    // A guess within a few units in the last place, from the leading 19 digits...
    let lead = kept.len().min(19);
    let w = kept[..lead]
        .iter()
        .fold(0u64, |w, &d| w * 10 + u64::from(d)) as f64;
    let mut x = scale10(w, exp + (kept.len() - lead) as i64);
    if x == 0.0 {
        x = f64::from_bits(1);
    }
    if x.is_infinite() {
        x = f64::MAX;
    }
    // ...then moved one place at a time until the exact value lies between its midpoints.
    for _ in 0..64 {
        let bits = x.to_bits();
        let biased = (bits >> 52) as i64;
        let (m, k) = match biased {
            0 => (bits, -1074),
            _ => (bits & ((1 << 52) - 1) | 1 << 52, biased - 1075),
        };
        let odd = m & 1 == 1;
        let above = compare(&exact, sticky, exp, 2 * m + 1, k - 1);
        if above.is_gt() || (above.is_eq() && odd) {
            x = f64::from_bits(bits + 1);
            if x.is_infinite() {
                return x;
            }
            continue;
        }
        // Just above a power of two the gap below is half the gap above.
        let below = if m == 1 << 52 && biased > 1 {
            compare(&exact, sticky, exp, 4 * m - 1, k - 2)
        } else {
            compare(&exact, sticky, exp, 2 * m - 1, k - 1)
        };
        if below.is_lt() || (below.is_eq() && odd) {
            x = f64::from_bits(bits - 1);
            if x == 0.0 {
                return x;
            }
            continue;
        }
        break;
    }
    x
}

/// 10^k, exact up to 10^22 (each product is a representable integer).
fn pow10(k: u32) -> f64 {
    (0..k).fold(1.0, |p, _| p * 10.0)
}

/// `w` × 10^`e` in floating point: a few rounding errors, corrected afterwards.
fn scale10(mut w: f64, mut e: i64) -> f64 {
    while e > 22 {
        w *= 1e22;
        e -= 22;
    }
    while e < -22 {
        w /= 1e22;
        e += 22;
    }
    let p = pow10(e.unsigned_abs() as u32);
    if e < 0 {
        w / p
    } else {
        w * p
    }
}

/// (`exact` + something if `sticky`) × 10^`exp` against `c` × 2^`t`, in integers.
fn compare(exact: &Big, sticky: bool, exp: i64, c: u64, t: i64) -> std::cmp::Ordering {
    let mut left = exact.clone();
    let mut right = Big(vec![c as u32, (c >> 32) as u32]);
    // 10^exp = 5^exp × 2^exp: the fives go to whichever side keeps them positive, then the
    // smaller power of two is divided out of both.
    if exp >= 0 {
        left.mul_pow5(exp as u64);
    } else {
        right.mul_pow5(exp.unsigned_abs());
    }
    let low = exp.min(t);
    left.shl((exp - low) as u64);
    right.shl((t - low) as u64);
    left.cmp(&right).then(if sticky {
        std::cmp::Ordering::Greater
    } else {
        std::cmp::Ordering::Equal
    })
}

/// An unsigned integer in little-endian 32-bit limbs: just what exact comparisons need.
#[derive(Clone)]
struct Big(Vec<u32>);

impl Big {
    /// self × m + a.
    fn mul_add(&mut self, m: u32, a: u32) {
        let mut carry = u64::from(a);
        for limb in &mut self.0 {
            let v = u64::from(*limb) * u64::from(m) + carry;
            *limb = v as u32;
            carry = v >> 32;
        }
        if carry > 0 {
            self.0.push(carry as u32);
        }
    }

    fn mul_pow5(&mut self, mut e: u64) {
        // 5^13 is the largest power of five below 2^32.
        while e >= 13 {
            self.mul_add(1_220_703_125, 0);
            e -= 13;
        }
        self.mul_add(5u32.pow(e as u32), 0);
    }

    fn shl(&mut self, bits: u64) {
        let (limbs, bits) = ((bits / 32) as usize, (bits % 32) as u32);
        if bits > 0 {
            self.mul_add(1 << bits, 0);
        }
        self.0.splice(0..0, std::iter::repeat_n(0, limbs));
    }

    fn cmp(&self, other: &Big) -> std::cmp::Ordering {
        let trim = |v: &[u32]| v.len() - v.iter().rev().take_while(|&&l| l == 0).count();
        let (a, b) = (&self.0[..trim(&self.0)], &other.0[..trim(&other.0)]);
        a.len()
            .cmp(&b.len())
            .then_with(|| a.iter().rev().cmp(b.iter().rev()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::rng;

    #[test]
    fn policy_numbers_print_as_display_does() {
        for x in [
            0.0,
            -0.0,
            1.0,
            -1.0,
            150.0,
            10.005,
            33.33,
            99.99,
            0.1,
            0.3,
            110.0,
            1e-7,
            0.5,
            2.5e-3,
            65_536.0,
            123_456.789,
            1e14,
            999_999_999_999_999.0,
            0.1 + 0.2,
        ] {
            assert_eq!(text(x), format!("{x}"), "{x:?}");
        }
        // Every value with up to four decimals in a policy's range.
        for i in -20_000..=1_010_000i64 {
            let x = i as f64 / 10_000.0;
            assert_eq!(text(x), format!("{x}"));
        }
        assert_eq!(text(f64::NAN), "NaN");
        assert_eq!(text(f64::INFINITY), "inf");
        assert_eq!(text(f64::NEG_INFINITY), "-inf");
    }

    #[test]
    fn fixed_prints_as_precision_does() {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let mut values = vec![
            0.0,
            -0.0,
            0.25,
            0.125,
            2.5,
            0.5,
            1.5,
            0.0005,
            0.35,
            123.456_789,
            -7.25,
        ];
        for _ in 0..50_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // Ratios and latencies as breakers see them, and exact binary fractions (ties).
            values.push((s % 1_000_000) as f64 / 997.0);
            values.push((s % 4096) as f64 / 256.0);
        }
        for x in values {
            for d in [0, 1, 3] {
                assert_eq!(fixed(x, d), format!("{x:.d$}"), "{x:?} with {d}");
            }
        }
        assert_eq!(fixed(1e20, 1), "1e20");
        assert_eq!(fixed(f64::NAN, 3), "NaN");
    }

    fn same_as_core(t: &str) {
        let want = t.parse::<f64>().ok().filter(|x| !x.is_nan());
        let got = parse(t);
        assert_eq!(got.map(f64::to_bits), want.map(f64::to_bits), "{t}");
    }

    #[test]
    fn parse_rounds_as_core_does() {
        for t in [
            "0",
            "-0",
            "+3",
            "1.",
            ".5",
            "-.5",
            "12",
            "0.05",
            "33.33",
            "10.005",
            "1e2",
            "1E+2",
            "2.5e-3",
            "0001.2500",
            "9007199254740993",
            "9007199254740993.0000000000001",
            "9007199254740995",
            "1.7976931348623157e308",
            "1.7976931348623158e308",
            "1.797693134862315807937e308",
            "1.7976931348623159e308",
            "2.4703282292062327e-324",
            "2.4703282292062328e-324",
            "4.9406564584124654e-324",
            "2.2250738585072011e-308",
            "2.2250738585072012e-308",
            "1e-400",
            "1e400",
            "123456789012345678901234567890",
            "0.1000000000000000055511151231257827021181583404541015625",
            "0.1000000000000000055511151231257827021181583404541015624",
            "0.1000000000000000055511151231257827021181583404541015626",
        ] {
            same_as_core(t);
        }
        // A halfway case decided only by the 801st significant digit.
        let long = format!("9007199254740993{}1e-784", "0".repeat(784));
        same_as_core(&long);
        same_as_core(&format!("9007199254740993{}e-784", "0".repeat(784)));
        for bad in [
            "", ".", "-", "+", "1..2", "e5", "1e", "1e+", "inf", "NaN", "1x", "--1", " 1",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn parse_reads_back_what_is_printed() {
        let mut next = rng(0x1234_5678_9ABC_DEF1);
        for _ in 0..20_000 {
            let x = f64::from_bits(next());
            if !x.is_finite() {
                continue;
            }
            for t in [
                format!("{x}"),
                format!("{x:e}"),
                format!("{x:.25e}"),
                format!("{x:.3e}"),
            ] {
                same_as_core(&t);
            }
        }
    }

    #[test]
    fn parse_random_decimals_as_core_does() {
        let mut next = rng(0x0BAD_5EED_0BAD_5EED);
        for _ in 0..20_000 {
            let len = 1 + next() % 30;
            let mut t: String = (0..len)
                .map(|_| char::from(b'0' + (next() % 10) as u8))
                .collect();
            if next().is_multiple_of(2) {
                let at = (next() % (len + 1)) as usize;
                t.insert(at, '.');
            }
            let e = (next() % 700) as i64 - 350;
            same_as_core(&format!("{t}e{e}"));
            same_as_core(&t);
        }
    }

    #[test]
    fn any_value_reads_back_close() {
        for x in [
            1e300,
            -2.5e20,
            1.234e-30,
            5e-324,
            f64::MAX,
            f64::MIN_POSITIVE,
        ] {
            let t = text(x);
            let back: f64 = t.parse().unwrap();
            assert!(((back - x) / x).abs() < 1e-14, "{x:?} -> {t}");
        }
        assert_eq!(text(1e300), "1e300");
        assert_eq!(text(-2.5e20), "-2.5e20");
        // Pseudo-random bit patterns in the fixed range print exactly as `{}` does.
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..100_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let x = f64::from_bits(s);
            if x.is_finite() && (1.0..1e15).contains(&x.abs()) {
                assert_eq!(text(x), format!("{x}"), "{x:?}");
            }
        }
    }
}
