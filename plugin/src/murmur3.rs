//! MurmurHash3 x86_32, streamed over several byte slices.
//!
//! Sticky buckets hash `"<salt>:<key>"`. Hashing the parts in sequence gives the same result as
//! hashing their concatenation, without building that string on every request.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline]
fn mix_k1(mut k1: u32) -> u32 {
    k1 = k1.wrapping_mul(C1);
    k1 = k1.rotate_left(15);
    k1.wrapping_mul(C2)
}

/// MurmurHash3 x86_32 of the concatenation of `parts`, with `seed`.
pub fn murmur3_x86_32_parts(parts: &[&[u8]], seed: u32) -> u32 {
    let mut h1 = seed;
    let mut tail = [0u8; 4];
    let mut tail_len = 0usize;
    let mut total: usize = 0;
    for part in parts {
        total = total.wrapping_add(part.len());
        for &b in *part {
            if let Some(slot) = tail.get_mut(tail_len) {
                *slot = b;
            }
            tail_len += 1;
            if tail_len == 4 {
                h1 ^= mix_k1(u32::from_le_bytes(tail));
                h1 = h1.rotate_left(13);
                h1 = h1.wrapping_mul(5).wrapping_add(0xe654_6b64);
                tail_len = 0;
            }
        }
    }
    if tail_len > 0 {
        let mut k1 = 0u32;
        for (i, b) in tail.iter().take(tail_len).enumerate() {
            k1 |= u32::from(*b) << (8 * i);
        }
        h1 ^= mix_k1(k1);
    }
    // The reference implementation mixes in the length as a 32-bit value.
    h1 ^= total as u32;
    fmix32(h1)
}

/// MurmurHash3 x86_32 of `data` with `seed`.
pub fn murmur3_x86_32(data: &[u8], seed: u32) -> u32 {
    murmur3_x86_32_parts(&[data], seed)
}

#[inline]
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors from the reference SMHasher implementation, as published in its verification
    // lists and reproduced by most ports (e.g. Guava's Murmur3_32 tests, Python's mmh3).
    #[test]
    fn known_vectors() {
        assert_eq!(murmur3_x86_32(b"", 0), 0);
        assert_eq!(murmur3_x86_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_x86_32(b"", 0xffff_ffff), 0x81f1_6f39);
        assert_eq!(murmur3_x86_32(&[0, 0, 0, 0], 0), 0x2362_f9de);
        assert_eq!(murmur3_x86_32(&[0x21, 0x43, 0x65, 0x87], 0), 0xf55b_516b);
        assert_eq!(
            murmur3_x86_32(&[0x21, 0x43, 0x65, 0x87], 0x5082_edee),
            0x2362_f9de
        );
        assert_eq!(murmur3_x86_32(&[0x21, 0x43, 0x65], 0), 0x7e4a_8634);
        assert_eq!(murmur3_x86_32(&[0x21, 0x43], 0), 0xa0f7_b07a);
        assert_eq!(murmur3_x86_32(&[0x21], 0), 0x7266_1cf4);
        assert_eq!(murmur3_x86_32(&[0xff, 0xff, 0xff, 0xff], 0), 0x7629_3b50);
        assert_eq!(murmur3_x86_32(b"test", 0), 0xba6b_d213);
        assert_eq!(murmur3_x86_32(b"Hello, world!", 0), 0xc036_3e43);
        assert_eq!(murmur3_x86_32(b"Hello, world!", 1234), 0xfaf6_cdb3);
        assert_eq!(
            murmur3_x86_32(b"The quick brown fox jumps over the lazy dog", 0),
            0x2e4f_f723
        );
        assert_eq!(murmur3_x86_32(b"aaaa", 0x9747_b28c), 0x5a97_808a);
        assert_eq!(murmur3_x86_32(b"Hello, world!", 0x9747_b28c), 0x2488_4cba);
    }

    #[test]
    fn parts_equal_concatenation() {
        let whole = b"flask:user-123456789";
        let expected = murmur3_x86_32(whole, 0);
        for split in 0..whole.len() {
            let (a, b) = whole.split_at(split);
            assert_eq!(
                murmur3_x86_32_parts(&[a, b], 0),
                expected,
                "split at {split}"
            );
            let (b1, b2) = b.split_at(b.len() / 2);
            assert_eq!(murmur3_x86_32_parts(&[a, b1, &[], b2], 0), expected);
        }
    }
}
