//! An independent model of the filter's sticky bucketing, so tests can predict where a user
//! lands without trusting the plugin's own code: `bucket = murmur3_x86_32("<salt>:<key>", 0)
//! % 10000`, and a split of weight `w` percent takes buckets `< w * 100`.

/// MurmurHash3 x86_32 (Austin Appleby's reference algorithm) of `data` with `seed`.
pub fn murmur3_x86_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut h = seed;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, b) in tail.iter().enumerate() {
            k |= u32::from(*b) << (8 * i);
        }
        h ^= k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The sticky bucket (0..10000) of `key` under `salt` (the policy name unless overridden).
pub fn bucket(salt: &str, key: &[u8]) -> u32 {
    let mut data = Vec::with_capacity(salt.len() + 1 + key.len());
    data.extend_from_slice(salt.as_bytes());
    data.push(b':');
    data.extend_from_slice(key);
    murmur3_x86_32(&data, 0) % 10_000
}

/// Whether `key` falls inside a split of `weight` percent.
pub fn in_split(salt: &str, key: &[u8], weight: u32) -> bool {
    bucket(salt, key) < weight * 100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_vectors() {
        assert_eq!(murmur3_x86_32(b"", 0), 0);
        assert_eq!(murmur3_x86_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_x86_32(&[0x21, 0x43, 0x65, 0x87], 0), 0xf55b_516b);
        assert_eq!(murmur3_x86_32(&[0x21, 0x43, 0x65], 0), 0x7e4a_8634);
        assert_eq!(murmur3_x86_32(&[0x21, 0x43], 0), 0xa0f7_b07a);
        assert_eq!(murmur3_x86_32(&[0x21], 0), 0x7266_1cf4);
        assert_eq!(murmur3_x86_32(b"Hello, world!", 1234), 0xfaf6_cdb3);
        assert_eq!(
            murmur3_x86_32(b"The quick brown fox jumps over the lazy dog", 0),
            0x2e4f_f723
        );
    }

    #[test]
    fn split_is_monotonic_in_weight() {
        for n in 0..500 {
            let key = format!("user-{n}");
            if in_split("flask", key.as_bytes(), 50) {
                assert!(in_split("flask", key.as_bytes(), 80));
            }
        }
    }
}
