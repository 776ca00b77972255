//! The network allowlist's parsers and matcher (`cowork_policy::net`):
//! of the input's lines (at most 8), those starting with `>` are targets,
//! tried as a Host header / URI authority (`parse_authority_or`) and as a
//! SOCKS5 domain (`Target::new`); the others are `allowedDomains`
//! patterns, which form an allowlist that judges every valid target; the
//! proxy's resolved-address vetting runs on the judged targets.
//!
//! Invariants: a pattern's and a target's canonical text parse back to the
//! same value; a match is what the grammar says (exact = same host,
//! `*.base` = a strict subdomain, port when given); matching does not
//! change when either side is replaced by its canonical text; the list's
//! decision is the best match of its patterns; vetted addresses keep the
//! target's port and pass the address checks unless the match was exact.
#![no_main]

use cowork_policy::net::{
    AllowList, Decision, Host, HostPattern, Match, Pattern, Target, vet_address, vet_destinations,
};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

fn check_match(pattern: &Pattern, target: &Target, canonical: &Target) -> Option<Match> {
    let got = pattern.matches(target);
    if got.is_some()
        && let Some(port) = pattern.port
    {
        assert_eq!(port, target.port);
    }
    match (&pattern.host, got) {
        (_, None) => {}
        (HostPattern::Any, m) => assert_eq!(m, Some(Match::Wildcard)),
        (HostPattern::Exact(name), m) => {
            assert_eq!(m, Some(Match::Exact));
            assert_eq!(target.host, Host::Name(name.clone()));
        }
        (HostPattern::Ip(ip), m) => {
            assert_eq!(m, Some(Match::Exact));
            assert_eq!(target.host, Host::Ip(*ip));
        }
        (HostPattern::Subdomains(base), m) => {
            assert_eq!(m, Some(Match::Wildcard));
            let name = target.host.name().expect("a subdomain match is a name");
            assert!(name.len() > base.len() + 1 && name.ends_with(&format!(".{base}")));
        }
    }
    assert_eq!(pattern.matches(canonical), got);
    got
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.split('\n').take(8).collect();
    let pattern_lines: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.starts_with('>'))
        .collect();
    let mut patterns = Vec::new();
    for line in &pattern_lines {
        if let Ok(pattern) = Pattern::parse(line) {
            assert_ne!(pattern.port, Some(0));
            let canonical = pattern.to_string();
            assert_eq!(
                Pattern::parse(&canonical).as_ref(),
                Ok(&pattern),
                "{canonical}"
            );
            patterns.push(pattern);
        }
    }
    // (target, the target parsed from its canonical text)
    let mut targets = Vec::new();
    for line in lines.iter().filter_map(|l| l.strip_prefix('>')) {
        let tries = [Target::parse_authority_or(line, 80), Target::new(line, 443)];
        for target in tries.into_iter().flatten() {
            assert_ne!(target.port, 0);
            let canonical = Target::parse_authority(&target.to_string());
            assert_eq!(canonical.as_ref(), Ok(&target));
            targets.push((target, canonical.expect("checked")));
        }
    }
    let list = AllowList::from_patterns(&pattern_lines);
    assert_eq!(list.warnings().len(), pattern_lines.len() - patterns.len());
    let mut sorted = patterns.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        list.patterns(),
        &sorted[..],
        "the key is sorted and deduplicated"
    );
    let own: Vec<IpAddr> = vec!["192.168.1.20".parse().expect("ip")];
    let resolved: Vec<IpAddr> = targets
        .iter()
        .filter_map(|(t, _)| match t.host {
            Host::Ip(ip) => Some(ip),
            Host::Name(_) => None,
        })
        .collect();
    for (target, canonical) in &targets {
        let matches: Vec<Option<Match>> = patterns
            .iter()
            .map(|p| check_match(p, target, canonical))
            .collect();
        let want = if matches.contains(&Some(Match::Exact)) {
            Decision::Allowed { exact: true }
        } else if matches.contains(&Some(Match::Wildcard)) {
            Decision::Allowed { exact: false }
        } else {
            Decision::Denied
        };
        let decision = list.check(target);
        assert_eq!(decision, want, "{target}");
        if let Ok(addrs) = vet_destinations(target, decision, &resolved, &own, &[]) {
            assert!(decision.is_allowed());
            for addr in addrs {
                assert_eq!(addr.port(), target.port);
                if !decision.is_exact() {
                    assert!(vet_address(addr.ip(), &own).is_ok(), "{addr}");
                }
            }
        }
    }
});
