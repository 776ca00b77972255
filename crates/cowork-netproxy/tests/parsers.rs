//! The pure parse entry points (the future `cargo fuzz` targets) on many
//! generated inputs: mutated valid messages and random bytes. They must
//! never panic, and what they accept must be consistent: a `Complete(len)`
//! fits the input and parses the same from its own prefix, an accepted
//! pattern or target reads back from its canonical text.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cowork_netproxy::{HeadParse, Parsed, parse_greeting, parse_request, parse_request_head};
use cowork_policy::net::{Pattern, Target};

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A seed mutated: bytes flipped, inserted, removed, or cut short.
fn mutate(rng: &mut Rng, seed: &[u8], alphabet: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(4) {
            0 if at < out.len() => out[at] = *rng.pick(alphabet),
            1 => out.insert(at, *rng.pick(alphabet)),
            2 if at < out.len() => {
                out.remove(at);
            }
            _ => out.truncate(at),
        }
    }
    out
}

const ROUNDS: usize = 20_000;

#[test]
fn socks_parsers_are_total_and_consistent() {
    let mut rng = Rng(0x5eed_0001);
    let seeds: [&[u8]; 5] = [
        b"\x05\x02\x00\x02",
        b"\x05\x01\x00\x03\x0bexample.com\x01\xbb",
        b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50",
        b"\x05\x01\x00\x04\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x01\x1f\x90",
        b"\x05\x03\x00\x03\x01a\x00\x00",
    ];
    let alphabet: Vec<u8> = (0..=255).collect();
    let mut accepted = 0;
    for _ in 0..ROUNDS {
        let input = if rng.below(4) == 0 {
            (0..rng.below(300)).map(|_| rng.next() as u8).collect()
        } else {
            let seed = rng_pick_seed(&mut rng, &seeds);
            mutate(&mut rng, seed, &alphabet)
        };
        if let Parsed::Complete(greeting, len) = parse_greeting(&input) {
            assert!(len <= input.len() && len == 2 + greeting.methods.len());
            assert_eq!(
                parse_greeting(&input[..len]),
                Parsed::Complete(greeting, len)
            );
        }
        match parse_request(&input) {
            Parsed::Complete(request, len) => {
                accepted += 1;
                assert!(len <= input.len());
                assert_eq!(parse_request(&input[..len]), Parsed::Complete(request, len));
                // Any shorter prefix is incomplete.
                assert_eq!(parse_request(&input[..len - 1]), Parsed::Incomplete);
            }
            Parsed::Incomplete => assert!(input.len() < 262, "{input:?}"),
            Parsed::Invalid(_) => {}
        }
    }
    assert!(accepted > ROUNDS / 20, "only {accepted} requests accepted");
}

fn rng_pick_seed<'a>(rng: &mut Rng, seeds: &[&'a [u8]]) -> &'a [u8] {
    seeds[rng.below(seeds.len())]
}

#[test]
fn http_head_parser_is_total_and_consistent() {
    let mut rng = Rng(0x5eed_0002);
    let seeds: [&[u8]; 4] = [
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        b"GET http://example.com/a?b HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"POST http://[::1]:8080/ HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    let alphabet = b"\r\n :/[]@.%*?#\x00\xffabcHTPGETCONNECT0123456789xn--";
    let mut accepted = 0;
    for _ in 0..ROUNDS {
        let seed = rng_pick_seed(&mut rng, &seeds);
        let input = mutate(&mut rng, seed, alphabet);
        match parse_request_head(&input, 1024) {
            Ok(HeadParse::Complete { request, head_len }) => {
                accepted += 1;
                assert!(head_len <= input.len());
                assert_eq!(
                    parse_request_head(&input[..head_len], 1024),
                    Ok(HeadParse::Complete { request, head_len })
                );
            }
            Ok(HeadParse::Incomplete) | Err(_) => {}
        }
    }
    assert!(accepted > ROUNDS / 20, "only {accepted} heads accepted");
}

#[test]
fn patterns_and_targets_read_back_from_their_canonical_text() {
    let mut rng = Rng(0x5eed_0003);
    let seeds: [&str; 8] = [
        "example.com",
        "*.example.com:443",
        "*",
        "[::1]:8080",
        "127.0.0.2",
        "Bücher.example.",
        "a.b-c_d.example:1",
        "[::ffff:10.0.0.1]",
    ];
    let alphabet = "*.:[]-_/@ %0129afxAZüß。ｅ\u{0}\u{200d}".as_bytes();
    let (mut patterns, mut targets) = (0, 0);
    for _ in 0..ROUNDS {
        let seed = rng_pick_seed_str(&mut rng, &seeds);
        let bytes = mutate(&mut rng, seed, alphabet);
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(pattern) = Pattern::parse(&text) {
            patterns += 1;
            let canonical = pattern.to_string();
            assert_eq!(Pattern::parse(&canonical), Ok(pattern), "{text:?}");
        }
        if let Ok(target) = Target::parse_authority(&text) {
            targets += 1;
            let canonical = target.to_string();
            assert_eq!(Target::parse_authority(&canonical), Ok(target), "{text:?}");
        }
        let _ = Target::new(&text, 1);
    }
    assert!(patterns > ROUNDS / 20, "only {patterns} patterns accepted");
    assert!(targets > ROUNDS / 50, "only {targets} targets accepted");
}

fn rng_pick_seed_str<'a>(rng: &mut Rng, seeds: &[&'a str]) -> &'a [u8] {
    seeds[rng.below(seeds.len())].as_bytes()
}
