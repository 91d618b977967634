//! The JSON path (`routes[2].split[0].weight`) at a position in a JSON text.
//!
//! serde_json reports where parsing stopped (line, column); scanning the text up to there while
//! tracking objects' keys and arrays' indices names the field. Much smaller in the filter than
//! tracking the path during deserialization.

enum Frame {
    Object {
        key: Option<String>,
        expecting_key: bool,
    },
    Array {
        index: usize,
    },
}

/// Byte offset of 1-based (`line`, `column`), columns counted in bytes as serde_json does.
fn offset_of(text: &[u8], line: usize, column: usize) -> usize {
    let mut start = 0;
    for _ in 1..line {
        match text
            .get(start..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
        {
            Some(nl) => start += nl + 1,
            None => return text.len(),
        }
    }
    (start + column).min(text.len())
}

/// The path of the value being read at (`line`, `column`); empty at the top level.
pub fn path_at(text: &[u8], line: usize, column: usize) -> String {
    let end = offset_of(text, line, column);
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < end {
        let Some(&b) = text.get(i) else { break };
        match b {
            b'{' => stack.push(Frame::Object {
                key: None,
                expecting_key: true,
            }),
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                // A finished value: the path goes back to its container. Parsing that stopped
                // right at this bracket (a missing field) is about the object itself.
                if i + 1 < end {
                    stack.pop();
                } else if let Some(Frame::Object { key, .. }) = stack.last_mut() {
                    *key = None;
                }
            }
            b',' => match stack.last_mut() {
                Some(Frame::Array { index }) => *index += 1,
                Some(Frame::Object { expecting_key, .. }) => *expecting_key = true,
                None => {}
            },
            b'"' => {
                let start = i + 1;
                i += 1;
                while let Some(&c) = text.get(i) {
                    match c {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                if let Some(Frame::Object { key, expecting_key }) = stack.last_mut() {
                    if *expecting_key {
                        let raw = text.get(start..i.min(text.len())).unwrap_or(&[]);
                        *key = Some(String::from_utf8_lossy(raw).into_owned());
                        *expecting_key = false;
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for frame in &stack {
        match frame {
            Frame::Object { key: Some(k), .. } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
            }
            Frame::Object { key: None, .. } => {}
            Frame::Array { index } => {
                path.push('[');
                path.push_str(&index.to_string());
                path.push(']');
            }
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str, needle: &str) -> String {
        // The column just after `needle`, as serde_json reports errors.
        let off = text.find(needle).unwrap() + needle.len();
        let line = text[..off].matches('\n').count() + 1;
        let col = off - text[..off].rfind('\n').map_or(0, |n| n + 1);
        path_at(text.as_bytes(), line, col)
    }

    #[test]
    fn paths_of_keys_values_and_elements() {
        let t = r#"{"name":"f","routes":[{"variant":"a"},{"split":[{"variant":"c","weight":"50"}],"x\"y":1}]}"#;
        assert_eq!(at(t, r#""name""#), "name");
        assert_eq!(at(t, r#""weight":"50""#), "routes[1].split[0].weight");
        assert_eq!(at(t, r#""variant":"a""#), "routes[0].variant");
        assert_eq!(at(t, r#""x\"y""#), r#"routes[1].x\"y"#);
        let multi = "{\n  \"a\": [1,\n   2,\n   {\"b\": true}]\n}";
        assert_eq!(at(multi, "\"b\": true"), "a[2].b");
        assert_eq!(path_at(b"{}", 1, 1), "");
        // Stopped on a closing brace (missing field): the object, not its last key.
        assert_eq!(path_at(br#"{"source":{"path":"/p"}}"#, 1, 23), "source");
        assert_eq!(path_at(br#"{"a":[{"b":1}]}"#, 1, 13), "a[0]");
    }
}
