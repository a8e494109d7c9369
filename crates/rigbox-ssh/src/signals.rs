//! SSH signal names (RFC 4254 §6.10, without the `SIG` prefix) and Linux
//! signal numbers, both ways.

use russh::Sig;

const TABLE: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("WINCH", 28),
];

/// The name of a russh signal.
fn name(sig: &Sig) -> &str {
    match sig {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(c) => c.as_str(),
    }
}

/// The Linux number of an SSH signal, if known.
pub fn number(sig: &Sig) -> Option<i32> {
    let n = name(sig);
    let n = n.strip_prefix("SIG").unwrap_or(n);
    TABLE.iter().find(|(s, _)| *s == n).map(|(_, v)| *v)
}

/// The SSH signal of a Linux signal number.
pub fn from_number(n: i32) -> Sig {
    match n {
        1 => Sig::HUP,
        2 => Sig::INT,
        3 => Sig::QUIT,
        4 => Sig::ILL,
        6 => Sig::ABRT,
        8 => Sig::FPE,
        9 => Sig::KILL,
        10 => Sig::USR1,
        11 => Sig::SEGV,
        13 => Sig::PIPE,
        14 => Sig::ALRM,
        15 => Sig::TERM,
        other => match TABLE.iter().find(|(_, v)| *v == other) {
            Some((s, _)) => Sig::Custom((*s).to_string()),
            None => Sig::Custom(format!("SIG{other}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for (_, n) in TABLE {
            assert_eq!(number(&from_number(*n)), Some(*n));
        }
        assert_eq!(number(&Sig::INT), Some(2));
        assert_eq!(number(&Sig::Custom("WINCH".into())), Some(28));
        assert_eq!(number(&Sig::Custom("NOPE".into())), None);
    }
}
