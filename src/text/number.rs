//! Number formatting that matches C++ `std::to_chars` (plain, shortest round trip),
//! which is what `onnx.printer` uses, so that every float prints as the shortest
//! decimal string that parses back to the same bits.

use std::fmt::Write;

/// Formats an `f32` as the shortest string that parses back to the same value.
/// NaN prints as `nan` / `-nan` (payload bits other than the sign are not kept).
pub fn fmt_f32(x: f32) -> String {
    let mut s = String::new();
    push_f32(&mut s, x);
    s
}

/// Formats an `f64` as the shortest string that parses back to the same value.
pub fn fmt_f64(x: f64) -> String {
    let mut s = String::new();
    push_f64(&mut s, x);
    s
}

/// Appends [`fmt_f32`] of `x` to `out`.
pub fn push_f32(out: &mut String, x: f32) {
    if special(out, f64::from(x)) {
        return;
    }
    let mut sci = StackBuf::new();
    let _ = write!(sci, "{x:e}");
    shortest(out, sci.as_str(), f64::from(x), |t| {
        t.parse::<f32>().is_ok_and(|v| v == x)
    });
}

/// Appends [`fmt_f64`] of `x` to `out`.
pub fn push_f64(out: &mut String, x: f64) {
    if special(out, x) {
        return;
    }
    let mut sci = StackBuf::new();
    let _ = write!(sci, "{x:e}");
    shortest(out, sci.as_str(), x, |t| {
        t.parse::<f64>().is_ok_and(|v| v == x)
    });
}

fn special(out: &mut String, x: f64) -> bool {
    let s = if x.is_nan() {
        if x.is_sign_negative() { "-nan" } else { "nan" }
    } else if x.is_infinite() {
        if x < 0.0 { "-inf" } else { "inf" }
    } else {
        return false;
    };
    out.push_str(s);
    true
}

/// A small stack buffer for `{:e}` output (at most about 25 bytes).
struct StackBuf {
    buf: [u8; 48],
    len: usize,
}

impl StackBuf {
    fn new() -> Self {
        StackBuf {
            buf: [0; 48],
            len: 0,
        }
    }
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("0e0")
    }
}

impl Write for StackBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let b = s.as_bytes();
        let dst = self
            .buf
            .get_mut(self.len..self.len + b.len())
            .ok_or(std::fmt::Error)?;
        dst.copy_from_slice(b);
        self.len += b.len();
        Ok(())
    }
}

/// `sci` is Rust's `{:e}` output (shortest round-trip digits, e.g. `-1.25e-7`) of `x`.
/// Appends the form `std::to_chars` chooses: the shorter of fixed and scientific notation,
/// fixed on ties; exponents have a sign and at least two digits; a fixed integer prints the
/// exact value. `round_trips` tells whether a decimal string parses back to the value.
fn shortest(out: &mut String, sci: &str, x: f64, round_trips: impl Fn(&str) -> bool) {
    let (neg, body) = match sci.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, sci),
    };
    let (mant, exp) = match body.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (body, 0),
    };
    let mut dbuf = StackBuf::new();
    for c in mant.chars().filter(|c| *c != '.') {
        let _ = dbuf.write_char(c);
    }
    let mut digits: &str = dbuf.as_str();
    let mut n = digits.len() as i32;
    // value = digits * 10^e
    let mut e = exp - (n - 1);
    let tie = even_tie(digits, e, x.abs(), &round_trips);
    if let Some((d, de)) = &tie {
        digits = d;
        n = digits.len() as i32;
        e = *de;
    }
    let exp = e + (n - 1);
    if neg {
        out.push('-');
    }
    if digits == "0" || digits.is_empty() {
        out.push('0');
        return;
    }
    let ae = exp.unsigned_abs();
    let exp_digits = if ae >= 100 { 3 } else { 2 };
    let sci_len = n as usize + usize::from(n > 1) + 2 + exp_digits;
    let fixed_len = if e >= 0 {
        (n + e) as usize
    } else if -e < n {
        (n + 1) as usize
    } else {
        (2 - e) as usize
    };
    if fixed_len <= sci_len {
        if e >= 0 {
            // An integer: the exact value (below 10^23 here, so it fits a u128).
            let _ = write!(out, "{}", x.abs() as u128);
        } else if -e < n {
            let point = (n + e) as usize;
            out.push_str(&digits[..point]);
            out.push('.');
            out.push_str(&digits[point..]);
        } else {
            out.push_str("0.");
            for _ in 0..(-e - n) {
                out.push('0');
            }
            out.push_str(digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if n > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        if ae < 10 {
            out.push('0');
        }
        let _ = write!(out, "{ae}");
    }
}

/// Rust's shortest digits round a tie (the value exactly halfway between two shortest
/// candidates) up; `std::to_chars` (Ryu) picks the even one. Returns the even candidate and
/// its exponent when `digits * 10^e` is odd and such a tie holds.
fn even_tie(
    digits: &str,
    e: i32,
    x: f64,
    round_trips: &impl Fn(&str) -> bool,
) -> Option<(String, i32)> {
    let d: u64 = digits.parse().ok()?;
    if d.is_multiple_of(2) || digits.len() > 17 {
        return None;
    }
    for nb in [d - 1, d + 1] {
        if nb == 0 || !is_midpoint(x, d + nb, e) {
            continue;
        }
        let cand = format!("{nb}e{e}");
        if round_trips(&cand) || round_trips(&format!("-{cand}")) {
            let mut s = nb.to_string();
            let mut ne = e;
            while s.len() > 1 && s.ends_with('0') {
                s.pop();
                ne += 1;
            }
            return Some((s, ne));
        }
    }
    None
}

/// Whether `x == s * 10^e / 2` exactly (`x` finite, non-negative).
fn is_midpoint(x: f64, s: u64, e: i32) -> bool {
    if x == 0.0 {
        return false;
    }
    // x = m * 2^k
    let bits = x.to_bits();
    let be = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    let (m, k) = if be == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), be - 1075)
    };
    // s is odd, so x == s * 5^e * 2^(e-1) needs the powers of two to match: a cheap filter
    // that rules out nearly every value before the exact comparison.
    if m.trailing_zeros() as i32 + k != e - 1 {
        return false;
    }
    // compare m * 2^k with s * 5^e * 2^(e-1)
    let (l2, r2, l5, r5) = (k, e - 1, 0, e);
    let (c2, c5) = (l2.min(r2), l5.min(r5));
    let mut l = Big::from(m);
    l.mul_pow(2, (l2 - c2) as u32);
    l.mul_pow(5, (l5 - c5) as u32);
    let mut r = Big::from(s);
    r.mul_pow(2, (r2 - c2) as u32);
    r.mul_pow(5, (r5 - c5) as u32);
    l.trim();
    r.trim();
    l.0 == r.0
}

/// A minimal unsigned big integer (little-endian 32-bit limbs) for exact comparisons.
struct Big(Vec<u32>);

impl Big {
    fn from(v: u64) -> Self {
        Big(vec![v as u32, (v >> 32) as u32])
    }
    fn mul_small(&mut self, f: u32) {
        let mut carry = 0u64;
        for limb in self.0.iter_mut() {
            let p = u64::from(*limb) * u64::from(f) + carry;
            *limb = p as u32;
            carry = p >> 32;
        }
        if carry > 0 {
            self.0.push(carry as u32);
        }
    }
    fn mul_pow(&mut self, base: u32, mut n: u32) {
        // largest power of base that fits in u32: 2^31, 5^13
        let (step, chunk) = if base == 2 {
            (31, 1u32 << 31)
        } else {
            (13, 1_220_703_125)
        };
        while n >= step {
            self.mul_small(chunk);
            n -= step;
        }
        for _ in 0..n {
            self.mul_small(base);
        }
    }
    fn trim(&mut self) {
        while self.0.len() > 1 && self.0.last() == Some(&0) {
            self.0.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_to_chars() {
        let cases: &[(f32, &str)] = &[
            (1e-5, "1e-05"),
            (1e5, "1e+05"),
            (1.5e-7, "1.5e-07"),
            (123456789.0, "123456792"),
            (1e16, "1e+16"),
            (1e-4, "1e-04"),
            (1e-3, "0.001"),
            (0.0001234, "0.0001234"),
            (3.4028235e38, "3.4028235e+38"),
            (1e-45, "1e-45"),
            (1.0 / 3.0, "0.33333334"),
            (100.0, "100"),
            (1e4, "10000"),
            (12345678.0, "12345678"),
            (0.5, "0.5"),
            (65504.0, "65504"),
            (-0.0, "-0"),
            (0.0, "0"),
            (-2.5, "-2.5"),
            (f32::INFINITY, "inf"),
            (f32::NEG_INFINITY, "-inf"),
        ];
        for (v, s) in cases {
            assert_eq!(fmt_f32(*v), *s, "{v}");
        }
        assert_eq!(fmt_f64(5e-324), "5e-324");
        assert_eq!(fmt_f64(1.7976931348623157e308), "1.7976931348623157e+308");
        assert_eq!(fmt_f64(123456789.0), "123456789");
        assert_eq!(fmt_f64(0.1), "0.1");
        assert_eq!(fmt_f32(f32::NAN), "nan");
        assert_eq!(fmt_f32(-f32::NAN), "-nan");
        // ties go to the even digit, as in std::to_chars
        assert_eq!(fmt_f32(-450651.62), "-450651.62");
        assert_eq!(fmt_f32(1767845.2), "1767845.2");
    }

    #[test]
    fn round_trips() {
        let mut s: u32 = 12345;
        for _ in 0..20000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let f = f32::from_bits(s);
            if f.is_nan() {
                continue;
            }
            let t = fmt_f32(f);
            let back: f32 = t.parse().unwrap();
            assert_eq!(back.to_bits(), f.to_bits(), "{t}");
            let d = f64::from_bits((u64::from(s) << 32) | u64::from(s.rotate_left(7)));
            if d.is_nan() {
                continue;
            }
            let t = fmt_f64(d);
            let back: f64 = t.parse().unwrap();
            assert_eq!(back.to_bits(), d.to_bits(), "{t}");
        }
    }
}
