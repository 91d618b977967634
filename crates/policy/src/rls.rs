//! Envoy's rate-limit protocol (RLS v3, `envoy.service.ratelimit.v3.RateLimitService/
//! ShouldRateLimit`) as the filter speaks it: one request message out, one answer in.
//!
//! Hand-written rather than prost: the filter needs four fields out and four in, and a
//! generated codec with its runtime would cost the `.wasm` more than this whole file. The
//! field numbers are those of data-plane-api `envoy/service/ratelimit/v3/rls.proto` and
//! `envoy/extensions/common/ratelimit/v3/ratelimit.proto`; `rollgate ratelimit` decodes what
//! this writes with prost (the service's tests check both ends agree).
//!
//! The decoder reads untrusted bytes: it is bounded by [`MAX_ANSWER_BYTES`], never recurses
//! beyond the message's fixed depth, skips unknown fields and fails on anything malformed.

/// The gRPC service and method a global limit calls.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
/// See [`SERVICE`].
pub const METHOD: &str = "ShouldRateLimit";

/// The descriptor entry naming the limit; the service selects the limit by it.
pub const LIMIT_ENTRY: &str = "limit";
/// The descriptor entry carrying the request's key.
pub const KEY_ENTRY: &str = "key";

/// Answers larger than this are refused as garbage (a real one is under 100 bytes).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// `RateLimitRequest{domain, descriptors: [{entries: [{limit, name}, {key, key}]}],
/// hits_addend}`.
pub fn encode_request(domain: &str, limit: &str, key: &str, hits: u32) -> Vec<u8> {
    let mut entries = Vec::with_capacity(32 + limit.len() + key.len());
    for (k, v) in [(LIMIT_ENTRY, limit), (KEY_ENTRY, key)] {
        let mut entry = Vec::with_capacity(4 + k.len() + v.len());
        put_bytes(&mut entry, 1, k.as_bytes());
        put_bytes(&mut entry, 2, v.as_bytes());
        put_bytes(&mut entries, 1, &entry);
    }
    let mut out = Vec::with_capacity(16 + domain.len() + entries.len());
    put_bytes(&mut out, 1, domain.as_bytes());
    put_bytes(&mut out, 2, &entries);
    if hits != 1 {
        put_varint(&mut out, 3 << 3, u64::from(hits));
    }
    out
}

/// What the service said about the one descriptor the filter sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Answer {
    /// `overall_code == OVER_LIMIT`.
    pub over_limit: bool,
    /// `statuses[0].limit_remaining`, when the service gave a status.
    pub remaining: Option<u64>,
    /// `statuses[0].duration_until_reset` in milliseconds, when given.
    pub reset_ms: Option<u64>,
}

/// Why an answer could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Decodes a `RateLimitResponse`. `UNKNOWN` (0) or a missing code is malformed: the service
/// must say OK (1) or OVER_LIMIT (2).
pub fn decode_answer(buf: &[u8]) -> Result<Answer, Malformed> {
    if buf.len() > MAX_ANSWER_BYTES {
        return Err(Malformed);
    }
    let mut code = 0;
    let mut answer = Answer::default();
    let mut first_status = true;
    let mut r = Reader(buf);
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Varint(c)) => code = c,
            (2, Value::Bytes(status)) if first_status => {
                first_status = false;
                read_status(status, &mut answer)?;
            }
            _ => {}
        }
    }
    match code {
        1 => Ok(answer),
        2 => Ok(Answer {
            over_limit: true,
            ..answer
        }),
        _ => Err(Malformed),
    }
}

/// `DescriptorStatus{code=1, current_limit=2, limit_remaining=3, duration_until_reset=4}`.
fn read_status(buf: &[u8], answer: &mut Answer) -> Result<(), Malformed> {
    let mut r = Reader(buf);
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (3, Value::Varint(n)) => answer.remaining = Some(n),
            (4, Value::Bytes(d)) => answer.reset_ms = Some(read_duration_ms(d)?),
            _ => {}
        }
    }
    Ok(())
}

/// `google.protobuf.Duration{seconds=1, nanos=2}` in milliseconds (rounded up).
fn read_duration_ms(buf: &[u8]) -> Result<u64, Malformed> {
    let (mut secs, mut nanos) = (0u64, 0u64);
    let mut r = Reader(buf);
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Varint(s)) => secs = s,
            (2, Value::Varint(n)) => nanos = n & 0xffff_ffff,
            _ => {}
        }
    }
    if secs > 1 << 40 || nanos >= 1_000_000_000 {
        return Err(Malformed);
    }
    Ok(secs * 1000 + nanos.div_ceil(1_000_000))
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.0.split_first().ok_or(Malformed)?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Malformed)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], Malformed> {
        let n = usize::try_from(n).map_err(|_| Malformed)?;
        if n > self.0.len() {
            return Err(Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// The next field number and value, `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, Malformed> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let field = tag >> 3;
        if field == 0 {
            return Err(Malformed);
        }
        let value = match tag & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Other
            }
            2 => {
                let n = self.varint()?;
                Value::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Value::Other
            }
            _ => return Err(Malformed),
        };
        Ok(Some((field, value)))
    }
}

fn put_varint(out: &mut Vec<u8>, tag: u64, value: u64) {
    push_varint(out, tag);
    push_varint(out, value);
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    push_varint(out, (field << 3) | 2);
    push_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_the_bytes_protoc_writes() {
        // protoc --encode=envoy.service.ratelimit.v3.RateLimitRequest (proto/rls.proto) of
        // domain: "d" descriptors { entries { key: "limit" value: "api" }
        // entries { key: "key" value: "k1" } } hits_addend: 5
        let want: &[u8] = &[
            0x0a, 0x01, b'd', 0x12, 0x19, 0x0a, 0x0c, 0x0a, 0x05, b'l', b'i', b'm', b'i', b't',
            0x12, 0x03, b'a', b'p', b'i', 0x0a, 0x09, 0x0a, 0x03, b'k', b'e', b'y', 0x12, 0x02,
            b'k', b'1', 0x18, 0x05,
        ];
        assert_eq!(encode_request("d", "api", "k1", 5), want);
        // hits_addend 1 is the proto default: left out, as protoc does.
        assert_eq!(encode_request("d", "api", "k1", 1), &want[..want.len() - 2]);
    }

    #[test]
    fn answers_decode_with_remaining_and_reset() {
        // protoc --encode=envoy.service.ratelimit.v3.RateLimitResponse (the service crate's
        // proto/rls.proto) of overall_code: OVER_LIMIT statuses { code: OVER_LIMIT
        // limit_remaining: 7 duration_until_reset { seconds: 2 nanos: 500000001 } }
        let over = [
            0x08, 0x02, 0x12, 0x0e, 0x08, 0x02, 0x18, 0x07, 0x22, 0x08, 0x08, 0x02, 0x10, 0x81,
            0xca, 0xb5, 0xee, 0x01,
        ];
        assert_eq!(
            decode_answer(&over),
            Ok(Answer {
                over_limit: true,
                remaining: Some(7),
                reset_ms: Some(2501)
            })
        );
        assert_eq!(
            decode_answer(&[0x08, 0x01]),
            Ok(Answer {
                over_limit: false,
                remaining: None,
                reset_ms: None
            })
        );
    }

    #[test]
    fn garbage_is_malformed_never_a_panic() {
        for bad in [
            &[][..],                               // no code: UNKNOWN
            &[0x08, 0x00],                         // UNKNOWN
            &[0x08],                               // truncated varint
            &[0x12, 0x05, 0x08],                   // length beyond the end
            &[0x0b],                               // group wire type
            &[0x00, 0x01],                         // field 0
            &[0xff; 11],                           // varint too long
            &[0x12, 0x04, 0x22, 0x02, 0x10, 0xff], // truncated nested
        ] {
            assert_eq!(decode_answer(bad), Err(Malformed), "{bad:?}");
        }
        let big = vec![0u8; MAX_ANSWER_BYTES + 1];
        assert_eq!(decode_answer(&big), Err(Malformed));
        // Unknown fields of every wire type are skipped.
        let mut ok = vec![0x08, 0x01, 0x19];
        ok.extend([0; 8]);
        ok.extend([0x25, 0, 0, 0, 0, 0x2a, 0x01, 0x00]);
        assert_eq!(decode_answer(&ok).map(|a| a.over_limit), Ok(false));
    }
}
