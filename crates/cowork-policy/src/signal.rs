//! Signal names as the client sends them (`SIGTERM`, `TERM`, `kill`, `9`)
//! and as exit events report them (`SIGTERM`).

/// (number, name without `SIG`) for the signals a client may send or a
/// process may die of on x86_64 and aarch64 Linux.
const SIGNALS: &[(i32, &str)] = &[
    (1, "HUP"),
    (2, "INT"),
    (3, "QUIT"),
    (4, "ILL"),
    (5, "TRAP"),
    (6, "ABRT"),
    (7, "BUS"),
    (8, "FPE"),
    (9, "KILL"),
    (10, "USR1"),
    (11, "SEGV"),
    (12, "USR2"),
    (13, "PIPE"),
    (14, "ALRM"),
    (15, "TERM"),
    (16, "STKFLT"),
    (17, "CHLD"),
    (18, "CONT"),
    (19, "STOP"),
    (20, "TSTP"),
    (21, "TTIN"),
    (22, "TTOU"),
    (23, "URG"),
    (24, "XCPU"),
    (25, "XFSZ"),
    (26, "VTALRM"),
    (27, "PROF"),
    (28, "WINCH"),
    (29, "IO"),
    (30, "PWR"),
    (31, "SYS"),
];

pub const SIGTERM: i32 = 15;
pub const SIGKILL: i32 = 9;

/// How a requested signal was understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParsedSignal {
    Known(i32),
    /// Empty or unrecognised: the client's convention is SIGTERM.
    DefaultedToTerm,
}

impl ParsedSignal {
    pub fn number(self) -> i32 {
        match self {
            ParsedSignal::Known(n) => n,
            ParsedSignal::DefaultedToTerm => SIGTERM,
        }
    }
}

/// Parses a signal name in any case, with or without `SIG`, or a number.
pub fn parse_signal(spec: &str) -> ParsedSignal {
    let trimmed = spec.trim();
    if let Ok(n) = trimmed.parse::<i32>() {
        return if SIGNALS.iter().any(|(num, _)| *num == n) {
            ParsedSignal::Known(n)
        } else {
            ParsedSignal::DefaultedToTerm
        };
    }
    let upper = trimmed.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(_, name)| *name == bare)
        .map_or(ParsedSignal::DefaultedToTerm, |(n, _)| {
            ParsedSignal::Known(*n)
        })
}

/// Parses a numeric signal from the client.
pub fn signal_from_number(n: i32) -> ParsedSignal {
    parse_signal(&n.to_string())
}

/// `SIGTERM` for 15; `SIG<n>` for numbers without a name (real-time ones).
pub fn signal_name(number: i32) -> String {
    SIGNALS
        .iter()
        .find(|(n, _)| *n == number)
        .map_or_else(|| format!("SIG{number}"), |(_, name)| format!("SIG{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let cases = [
            ("SIGTERM", ParsedSignal::Known(15)),
            ("TERM", ParsedSignal::Known(15)),
            ("sigkill", ParsedSignal::Known(9)),
            ("Kill", ParsedSignal::Known(9)),
            ("SIGINT", ParsedSignal::Known(2)),
            (" HUP ", ParsedSignal::Known(1)),
            ("9", ParsedSignal::Known(9)),
            ("", ParsedSignal::DefaultedToTerm),
            ("SIGBOGUS", ParsedSignal::DefaultedToTerm),
            ("0", ParsedSignal::DefaultedToTerm),
            ("-9", ParsedSignal::DefaultedToTerm),
        ];
        for (input, want) in cases {
            assert_eq!(parse_signal(input), want, "{input:?}");
        }
        assert_eq!(signal_from_number(2), ParsedSignal::Known(2));
    }

    #[test]
    fn names() {
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(40), "SIG40");
    }
}
