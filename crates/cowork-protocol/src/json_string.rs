//! JSON string literals for output data, written byte for byte as
//! serde_json writes them, eight bytes at a time.
//!
//! Output events carry most of the bytes a daemon sends (a build log, a
//! `cat` of a large file). serde_json checks every byte against a table;
//! here a whole word is checked at once for the three kinds of bytes that
//! need escaping (`"`, `\` and controls below 0x20) and clean runs are
//! copied in bulk. The bytewise table is kept for the words that do need
//! work, so the output is exactly serde_json's (tests compare them).

use bytes::{BufMut, BytesMut};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of `word` is below 0x20, `"` or `\`. Exact as a yes/no
/// answer (the usual zero-byte tricks only misplace *which* byte).
#[inline]
fn needs_escape(word: u64) -> bool {
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let is_quote = quote.wrapping_sub(ONES) & !quote;
    let is_backslash = backslash.wrapping_sub(ONES) & !backslash;
    (below_space | is_quote | is_backslash) & HIGHS != 0
}

/// How serde_json escapes each byte: 0 for none, `u` for `\u00XX`.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` as a JSON string literal, quotes included.
pub fn push_json_string(out: &mut BytesMut, s: &str) {
    let bytes = s.as_bytes();
    // Clean text grows by the quotes only; escapes reserve as they come.
    out.reserve(bytes.len() + 2);
    out.put_u8(b'"');
    let mut clean_from = 0;
    let mut i = 0;
    while i < bytes.len() {
        while let Some(chunk) = bytes.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if needs_escape(u64::from_le_bytes(word)) {
                break;
            }
            i += 8;
        }
        let Some(&b) = bytes.get(i) else { break };
        let escape = ESCAPE[usize::from(b)];
        i += 1;
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[clean_from..i - 1]);
        clean_from = i;
        if escape == b'u' {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
    }
    out.extend_from_slice(&bytes[clean_from..]);
    out.put_u8(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(s: &str) -> String {
        let mut out = BytesMut::new();
        push_json_string(&mut out, s);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn matches_serde_json_byte_for_byte() {
        let every_ascii: String = (0u8..0x80).map(char::from).collect();
        let long_clean = "0123456789abcdefghijklmnopqrstuvwxyz".repeat(100);
        let mut cases = vec![
            String::new(),
            "plain".into(),
            "\"".into(),
            "\\".into(),
            "line\nnext\r\n\ttab\u{8}\u{c}".into(),
            "\u{0}\u{1}\u{1f}\u{7f}".into(),
            "é€😀 \u{2028}\u{2029} </script>".into(),
            every_ascii.clone(),
            every_ascii.repeat(3),
            long_clean.clone(),
            format!("{long_clean}\n"),
            format!("\"{long_clean}\\"),
        ];
        // An escape at every offset of a word, and runs of escapes.
        for at in 0..17 {
            let mut s = "x".repeat(20);
            s.insert(at, '\n');
            cases.push(s);
        }
        cases.push("\n".repeat(33));
        for s in cases {
            assert_eq!(ours(&s), serde_json::to_string(&s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn the_word_test_finds_every_kind_of_byte_anywhere() {
        for special in [0u8, 0x1f, b'"', b'\\', b'\n'] {
            for at in 0..8 {
                let mut word = *b"abcdefgh";
                word[at] = special;
                assert!(needs_escape(u64::from_le_bytes(word)), "{special} at {at}");
            }
        }
        for clean in [*b"abcdefgh", *b" !#[]~\x7f\xff", [0x20; 8], [0xc3; 8]] {
            assert!(!needs_escape(u64::from_le_bytes(clean)), "{clean:?}");
        }
    }
}
