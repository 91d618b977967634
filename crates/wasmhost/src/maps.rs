//! The proxy-wasm wire formats the host speaks: header maps (pairs), property paths, and the
//! [`Headers`] type the test API hands around.
//!
//! Pairs layout (little-endian, lengths exclude the NULs), as Envoy's cpp-host writes it:
//! `u32 n; n × (u32 key_len, u32 value_len); n × (key 0x00 value 0x00)`.

/// Envoy's limits on a serialized map (cpp-host `limits.h`): beyond them a map parses as empty.
const MAX_PAIRS: usize = 1024;
const MAX_PAIRS_BYTES: usize = 1 << 20;

/// An ordered list of header (or trailer, or metadata) entries, as a proxy holds them: names
/// and values are raw bytes, names may repeat. Lookups by name ignore ASCII case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<(Vec<u8>, Vec<u8>)>);

impl Headers {
    /// No headers.
    pub fn new() -> Headers {
        Headers(Vec::new())
    }

    /// Headers from `(name, value)` pairs, in order.
    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Headers
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        Headers(
            pairs
                .into_iter()
                .map(|(k, v)| (k.as_ref().to_vec(), v.as_ref().to_vec()))
                .collect(),
        )
    }

    /// The entries, in order.
    pub fn pairs(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.0
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of `name`, decoded lossily as UTF-8.
    pub fn get_str(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.0
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.as_slice())
    }

    /// Whether any entry is named `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Appends an entry (Envoy's `addCopy`; the name is lower-cased as Envoy does).
    pub fn add(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.0
            .push((name.as_ref().to_ascii_lowercase(), value.as_ref().to_vec()));
    }

    /// Envoy's `setCopy`: replaces the first entry named `name` in place and drops the
    /// others, or appends when there is none.
    pub fn replace(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let name = name.as_ref().to_ascii_lowercase();
        let value = value.as_ref().to_vec();
        match self
            .0
            .iter()
            .position(|(k, _)| k.eq_ignore_ascii_case(&name))
        {
            Some(first) => {
                self.0[first].1 = value;
                let mut i = 0;
                self.0.retain(|(k, _)| {
                    let keep = i <= first || !k.eq_ignore_ascii_case(&name);
                    i += 1;
                    keep
                });
            }
            None => self.0.push((name, value)),
        }
    }

    /// Removes every entry named `name`.
    pub fn remove(&mut self, name: impl AsRef<[u8]>) {
        let name = name.as_ref();
        self.0.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    /// Sum of name and value lengths: Envoy's `byteSize`, what `proxy_get_header_map_size`
    /// reports.
    pub fn byte_size(&self) -> usize {
        self.0.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// The pairs serialization. An empty map serializes to no bytes at all: Envoy answers
    /// pointer 0 / length 0, and the Rust SDK would slice-panic on the 1-byte form.
    pub fn serialize(&self) -> Vec<u8> {
        serialize_pairs(self.0.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
    }

    /// Parses the pairs serialization the way cpp-host does: malformed or oversized input is
    /// an empty map, silently.
    pub fn deserialize(bytes: &[u8]) -> Headers {
        Headers(deserialize_pairs(bytes).unwrap_or_default())
    }
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Headers {
        Headers::from_pairs(iter)
    }
}

/// Serializes pairs; nothing at all for no pairs.
pub(crate) fn serialize_pairs<'a>(
    pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
) -> Vec<u8> {
    let n = pairs.clone().count();
    if n == 0 {
        return Vec::new();
    }
    let size: usize = 4 + pairs
        .clone()
        .map(|(k, v)| 8 + k.len() + v.len() + 2)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Parses pairs; `None` when malformed or beyond Envoy's limits. No bytes is no pairs.
pub(crate) fn deserialize_pairs(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    if bytes.len() > MAX_PAIRS_BYTES {
        return None;
    }
    let word = |at: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u32::from_le_bytes(b) as usize)
    };
    let n = word(0)?;
    if n > MAX_PAIRS {
        return None;
    }
    let mut data = 4 + n * 8;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (klen, vlen) = (word(4 + i * 8)?, word(8 + i * 8)?);
        let key = bytes.get(data..data.checked_add(klen)?)?;
        data += klen;
        (*bytes.get(data)? == 0).then_some(())?;
        data += 1;
        let value = bytes.get(data..data.checked_add(vlen)?)?;
        data += vlen;
        (*bytes.get(data)? == 0).then_some(())?;
        data += 1;
        out.push((key.to_vec(), value.to_vec()));
    }
    Some(out)
}

/// Splits a property path the SDK serialized (`segments` joined by NUL, no trailing NUL).
pub(crate) fn property_path(bytes: &[u8]) -> Vec<&[u8]> {
    bytes.split(|&b| b == 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_layout_matches_the_spec() {
        let h = Headers::from_pairs([("a", "1"), ("bc", "")]);
        let bytes = h.serialize();
        let mut want = vec![2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(b"a\x001\x00bc\x00\x00");
        assert_eq!(bytes, want);
        assert_eq!(Headers::deserialize(&bytes), h);
        assert!(Headers::new().serialize().is_empty());
        for cut in 1..bytes.len() {
            assert!(deserialize_pairs(&bytes[..cut]).is_none(), "cut {cut}");
        }
    }

    #[test]
    fn replace_keeps_position_and_drops_duplicates() {
        let mut h = Headers::from_pairs([("x", "1"), ("y", "2"), ("X", "3")]);
        h.replace("x", "9");
        assert_eq!(h, Headers::from_pairs([("x", "9"), ("y", "2")]));
        h.replace("Z", "0");
        assert_eq!(h.get("z"), Some(&b"0"[..]));
        h.remove("Y");
        assert_eq!(h.len(), 2);
        assert_eq!(h.byte_size(), 4);
    }

    #[test]
    fn property_paths_split_on_nul() {
        assert_eq!(
            property_path(b"source\0address"),
            vec![&b"source"[..], b"address"]
        );
    }
}
