//! Text from a bundle, made safe to show (docs/FORMAT.md, "Reader rules"):
//! a name or value read from unsigned bytes, or from a manifest, may hold
//! terminal escapes or be megabytes long. [`shown`] escapes every control
//! and bidirectional formatting character and keeps a short prefix, so an
//! error message or an audit entry can quote it without painting over the
//! terminal or growing without bound.

/// Characters of a quoted value kept, at most.
pub const SHOWN_CHARS: usize = 80;

/// Whether `c` can change how a terminal shows the text around it: control
/// characters (C0, DEL, C1) and Unicode's bidirectional formatting characters.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Bytes as a person reads them: `512 B`, `3.4 KiB`, `201.4 MiB`, `4.0 GiB`
/// (powers of 1024).
pub fn bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    #[allow(clippy::cast_precision_loss)] // Shown to one decimal.
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `text` with unsafe characters escaped (`\u{1b}`, `\n`, ...) and cut to
/// [`SHOWN_CHARS`] characters, with `…` and the full length when cut.
pub fn shown(text: &str) -> String {
    shown_at_most(text, SHOWN_CHARS)
}

/// [`shown`] with room for `max` characters (a whole message that quotes
/// values, such as a JSON parser's).
pub fn shown_at_most(text: &str, max: usize) -> String {
    let (mut out, cut) = escaped_prefix(text, max);
    if cut {
        out.push_str(&format!("… ({} bytes)", text.len()));
    }
    out
}

/// [`shown`] of bytes that may not be UTF-8 (invalid sequences become `�`).
pub fn shown_bytes(bytes: &[u8]) -> String {
    let prefix = &bytes[..bytes.len().min(4 * SHOWN_CHARS)];
    let (mut out, cut) = escaped_prefix(&String::from_utf8_lossy(prefix), SHOWN_CHARS);
    if cut || bytes.len() > prefix.len() {
        out.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    out
}

/// The first `max` characters of `text`, unsafe ones escaped, and whether
/// more followed.
fn escaped_prefix(text: &str, max: usize) -> (String, bool) {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max {
            return (out, true);
        }
        if is_unsafe(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    (out, false)
}

/// Whether `text` may be stored and shown as it is: no unsafe character.
pub fn is_safe(text: &str) -> bool {
    !text.chars().any(is_unsafe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_as_a_person_reads_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(211_230_250), "201.4 MiB");
        assert_eq!(bytes(4 << 30), "4.0 GiB");
    }

    #[test]
    fn escapes_controls_and_cuts_long_text() {
        assert_eq!(shown("bin/demo"), "bin/demo");
        assert_eq!(shown("a\u{1b}[2Kok verify\r"), "a\\u{1b}[2Kok verify\\r");
        assert_eq!(shown("x\u{202e}y"), "x\\u{202e}y");
        let long = "a".repeat(10_000);
        let s = shown(&long);
        assert!(s.len() < 120, "{s}");
        assert!(s.ends_with("… (10000 bytes)"), "{s}");
        assert_eq!(shown_bytes(b"ok\xff"), "ok\u{fffd}");
        assert!(shown_bytes(&vec![b'x'; 1 << 20]).ends_with("(1048576 bytes)"));
        assert!(!is_safe("a\nb"));
        assert!(is_safe("add_order_status"));
    }
}
