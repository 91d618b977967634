//! Byte mutation of corpus entries (AFL's classic moves, with a per-target dictionary of
//! tokens so a mutation can add a `&&` or a `"routes":` rather than only a random byte).

use fastrand::Rng;

/// Inputs never grow past this by mutation: the parsers' own limits are far lower (1 MiB is
/// the document limit, checked by size before anything else), and big inputs only slow the
/// loop down. The generators make the few inputs that test the size limits themselves.
pub const MAX_MUTATED: usize = 256 << 10;

/// Applies one to four mutations to `input`, using `dict` for token insertions.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, dict: &[&[u8]]) {
    for _ in 0..rng.usize(1..=4) {
        one(rng, input, dict);
    }
    input.truncate(MAX_MUTATED);
}

fn one(rng: &mut Rng, b: &mut Vec<u8>, dict: &[&[u8]]) {
    let len = b.len();
    let at = |rng: &mut Rng| rng.usize(..=len);
    match rng.u32(..11) {
        0 if len > 0 => {
            let i = rng.usize(..len);
            b[i] ^= 1 << rng.u32(..8);
        }
        1 if len > 0 => {
            let i = rng.usize(..len);
            b[i] = rng.u8(..);
        }
        2 => {
            let i = at(rng);
            b.insert(i, rng.u8(..));
        }
        3 if len > 0 => {
            let i = rng.usize(..len);
            let n = rng.usize(1..=(len - i).min(16));
            b.drain(i..i + n);
        }
        4 | 5 if !dict.is_empty() => {
            let tok = dict[rng.usize(..dict.len())];
            let i = at(rng);
            b.splice(i..i, tok.iter().copied());
        }
        6 if len > 0 => {
            // Duplicate a range, many times now and then: grows nesting and lists.
            let i = rng.usize(..len);
            let n = rng.usize(1..=(len - i).min(64));
            let piece = b[i..i + n].to_vec();
            let times = if rng.u32(..8) == 0 {
                rng.usize(2..2000)
            } else {
                1
            };
            let mut ins = Vec::with_capacity(piece.len() * times);
            for _ in 0..times {
                ins.extend_from_slice(&piece);
            }
            b.splice(i..i, ins);
        }
        7 if len > 1 => {
            // Swap two ranges' worth of bytes: moves a token elsewhere.
            let i = rng.usize(..len);
            let j = rng.usize(..len);
            b.swap(i, j);
        }
        8 if len > 0 => {
            let i = rng.usize(..len);
            b.truncate(i);
        }
        9 if len > 0 && !dict.is_empty() => {
            // Replace a range with a token.
            let i = rng.usize(..len);
            let n = rng.usize(1..=(len - i).min(8));
            let tok = dict[rng.usize(..dict.len())];
            b.splice(i..i + n, tok.iter().copied());
        }
        _ => {
            // An interesting number where a digit is.
            if let Some(i) = (0..len)
                .map(|_| rng.usize(..len))
                .find(|&i| b[i].is_ascii_digit())
            {
                let n: &[u8] = match rng.u32(..6) {
                    0 => b"18446744073709551615",
                    1 => b"-1",
                    2 => b"1e308",
                    3 => b"4294967296",
                    4 => b"0",
                    _ => b"65536",
                };
                b.splice(i..i + 1, n.iter().copied());
            }
        }
    }
}

/// The second half of `b` after the first half of `a`: mixes two entries' structures.
pub fn splice(rng: &mut Rng, a: &[u8], b: &[u8]) -> Vec<u8> {
    let i = rng.usize(..=a.len());
    let j = rng.usize(..=b.len());
    let mut out = a[..i].to_vec();
    out.extend_from_slice(&b[j..]);
    out.truncate(MAX_MUTATED);
    out
}
