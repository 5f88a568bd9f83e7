//! Caller-supplied text in messages: an error names what was wrong, but never echoes an
//! unbounded input back (a 100 KB pattern once made a 200 KB `grpc-message` that the client
//! saw as RESOURCE_EXHAUSTED instead of the real error).

use std::borrow::Cow;

/// Longest piece of caller input an error message repeats.
pub const ECHO_MAX: usize = 64;

/// `s` cut to at most `max` bytes on a character boundary, saying how long it really was.
pub fn clip(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…({} bytes)", &s[..end], s.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_and_long_text_is_cut_with_its_length() {
        assert_eq!(clip("abc", 8), "abc");
        let long = "é".repeat(100);
        let cut = clip(&long, 9);
        assert!(cut.starts_with("éééé…"), "{cut}");
        assert!(cut.ends_with("(200 bytes)"), "{cut}");
    }
}
