//! Streaming UTF-8 decoding for process output.
//!
//! Output arrives in arbitrary chunks; a multi-byte character split across
//! two reads must arrive whole in one event, never as two replacement
//! characters (the reference decodes each chunk on its own and mangles it).
//! Invalid bytes become U+FFFD, as with `String::from_utf8_lossy`.

/// Decoder state: at most three bytes of an incomplete trailing character.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes `chunk`, holding back an incomplete character at its end for
    /// the next call.
    pub fn decode(&mut self, chunk: &[u8]) -> String {
        if self.pending.is_empty() {
            let mut out = String::with_capacity(chunk.len());
            let tail = decode_into(chunk, &mut out);
            self.pending.extend_from_slice(tail);
            return out;
        }
        let mut joined = std::mem::take(&mut self.pending);
        joined.extend_from_slice(chunk);
        let mut out = String::with_capacity(joined.len());
        let tail = decode_into(&joined, &mut out);
        self.pending = tail.to_vec();
        out
    }

    /// Flushes whatever is left at end of stream; an incomplete character
    /// becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        if self.pending.is_empty() {
            return String::new();
        }
        self.pending.clear();
        char::REPLACEMENT_CHARACTER.to_string()
    }

    /// True when no partial character is held back.
    pub fn is_clean(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Appends the decodable prefix of `bytes` to `out` and returns the
/// incomplete tail (possibly empty).
fn decode_into<'a>(mut bytes: &'a [u8], out: &mut String) -> &'a [u8] {
    loop {
        match std::str::from_utf8(bytes) {
            Ok(valid) => {
                out.push_str(valid);
                return &[];
            }
            Err(err) => {
                let (valid, rest) = bytes.split_at(err.valid_up_to());
                // from_utf8 validated exactly this prefix, so this cannot fail.
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match err.error_len() {
                    // Truncated character at the end: keep it for later.
                    None => return rest,
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        bytes = &rest[bad..];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn decode_all(chunks: &[&[u8]]) -> Vec<String> {
        let mut d = Utf8Stream::new();
        let mut out: Vec<String> = chunks.iter().map(|c| d.decode(c)).collect();
        out.push(d.finish());
        out
    }

    #[test]
    fn decoding_table() {
        let euro = "€".as_bytes(); // e2 82 ac
        let smile = "😀".as_bytes(); // f0 9f 98 80
        type Case<'a> = (&'a str, Vec<&'a [u8]>, Vec<&'a str>);
        let cases: Vec<Case> = vec![
            ("ascii", vec![b"ab", b"c"], vec!["ab", "c", ""]),
            (
                "3-byte char split 1+2",
                vec![&euro[..1], &euro[1..]],
                vec!["", "€", ""],
            ),
            (
                "3-byte char split 2+1 with text around",
                vec![b"a\xe2\x82", b"\xacb"],
                vec!["a", "€b", ""],
            ),
            (
                "4-byte char split into single bytes",
                vec![&smile[..1], &smile[1..2], &smile[2..3], &smile[3..]],
                vec!["", "", "", "😀", ""],
            ),
            (
                "invalid byte in the middle",
                vec![b"a\xffb"],
                vec!["a\u{fffd}b", ""],
            ),
            (
                "truncated character at end of stream",
                vec![b"x\xe2\x82"],
                vec!["x", "\u{fffd}"],
            ),
            (
                "invalid continuation after a held prefix",
                vec![b"\xe2", b"A"],
                vec!["", "\u{fffd}A", ""],
            ),
        ];
        for (name, chunks, want) in cases {
            assert_eq!(decode_all(&chunks), want, "{name}");
        }
    }
}
