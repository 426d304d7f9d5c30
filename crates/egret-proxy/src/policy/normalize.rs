//! Request path normalization, done once before policy and routing; the normalized path is
//! both what policies and routes match and what is forwarded upstream, so a policy can never
//! see a different path from the one the external service serves.
//!
//! Istio's `meshConfig.pathNormalization` default (`BASE`) only applies RFC 3986 dot-segment
//! removal, which lets `//admin` and `/%2Fadmin` past a DENY on `/admin*` (the reason Istio's
//! security best-practices page asks users to choose a stricter mode). egret always applies
//! the strictest of Istio's modes, `DECODE_AND_MERGE_SLASHES`:
//!
//! 1. percent-encoded unreserved characters are decoded (`%61` -> `a`, `%2E` -> `.`);
//! 2. `%2F`/`%2f` and `%5C`/`%5c` are decoded to `/` (Envoy's `UNESCAPE_AND_FORWARD`), and a
//!    literal `\` becomes `/`;
//! 3. repeated slashes are merged;
//! 4. `.` and `..` segments are removed (RFC 3986 §5.2.4; `..` never climbs above `/`).
//!
//! Other percent-encodings are kept, upper-cased (`%3a` -> `%3A`). A path that is not
//! origin-form, has an invalid percent-encoding, or contains control characters is rejected
//! (400). Case is kept: paths are case-sensitive in HTTP and in Istio's matching.

use std::borrow::Cow;

/// Why a path was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path does not start with '/'")]
    NotOriginForm,
    #[error("invalid percent-encoding in path")]
    BadPercent,
    #[error("control character in path")]
    Control,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalize a path (without its query). Borrows when the path is already normal, which is
/// the common case: no allocation per request.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    // Fast path: nothing to decode, no `\`, no `//`, no dot segments.
    let mut needs_work = false;
    for (i, &c) in b.iter().enumerate() {
        if c < 0x20 || c == 0x7f {
            return Err(PathError::Control);
        }
        if c == b'%' || c == b'\\' {
            needs_work = true;
            break;
        }
        if c == b'/' {
            let next = b.get(i + 1).copied();
            let next2 = b.get(i + 2).copied();
            let next3 = b.get(i + 3).copied();
            if next == Some(b'/')
                || (next == Some(b'.') && matches!(next2, None | Some(b'/')))
                || (next == Some(b'.') && next2 == Some(b'.') && matches!(next3, None | Some(b'/')))
            {
                needs_work = true;
                break;
            }
        }
    }
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }

    // 1 + 2: decode into bytes; keep other escapes (upper-cased).
    let mut decoded: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c < 0x20 || c == 0x7f {
            return Err(PathError::Control);
        }
        if c == b'%' {
            let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadPercent);
            };
            let v = h * 16 + l;
            if v < 0x20 || v == 0x7f {
                return Err(PathError::Control);
            }
            if unreserved(v) {
                decoded.push(v);
            } else if v == b'/' || v == b'\\' {
                decoded.push(b'/');
            } else {
                decoded.push(b'%');
                decoded.push(b[i + 1].to_ascii_uppercase());
                decoded.push(b[i + 2].to_ascii_uppercase());
            }
            i += 3;
        } else {
            decoded.push(if c == b'\\' { b'/' } else { c });
            i += 1;
        }
    }

    // 3 + 4: split on '/', drop empty and '.' segments, pop on '..'.
    let trailing_slash =
        decoded.last() == Some(&b'/') || decoded.ends_with(b"/.") || decoded.ends_with(b"/..");
    let mut segments: Vec<&[u8]> = Vec::new();
    for seg in decoded.split(|&c| c == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = Vec::with_capacity(decoded.len());
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if segments.is_empty() || trailing_slash {
        out.push(b'/');
    }
    // Decoding only produced ASCII from escapes, and the rest was the input's UTF-8.
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| PathError::BadPercent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalize_path(p)
            .map(|c| c.into_owned())
            .unwrap_or_else(|e| format!("ERR {e:?}"))
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(normalize_path("/a/b.c/d"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize_path("/"), Ok(Cow::Borrowed(_))));
        assert!(matches!(
            normalize_path("/a/.well-known/x"),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn the_bypass_table() {
        assert_eq!(n("/allowed/../admin"), "/admin");
        assert_eq!(n("//admin"), "/admin");
        assert_eq!(n("/%61dmin"), "/admin");
        assert_eq!(n("/%2Fadmin"), "/admin");
        assert_eq!(n("/%2fadmin/x"), "/admin/x");
        assert_eq!(n("/x/..%2Fadmin"), "/admin");
        assert_eq!(n("/x/%2E%2E/admin"), "/admin");
        assert_eq!(n("/./admin/./"), "/admin/");
        assert_eq!(n("\\admin".replacen('\\', "/\\", 1).as_str()), "/admin");
        assert_eq!(n("/../../admin"), "/admin");
        // Case is kept: Istio's matching is case-sensitive.
        assert_eq!(n("/Admin"), "/Admin");
    }

    #[test]
    fn other_escapes_are_kept_upper_cased() {
        assert_eq!(n("/a%3ab//c"), "/a%3Ab/c");
        assert_eq!(n("/a%20b"), "/a%20b");
    }

    #[test]
    fn bad_paths_are_rejected() {
        assert_eq!(n("admin"), "ERR NotOriginForm");
        assert_eq!(n("/a%zz"), "ERR BadPercent");
        assert_eq!(n("/a%2"), "ERR BadPercent");
        assert_eq!(n("/a%00b"), "ERR Control");
        assert_eq!(n("/a\u{1}b"), "ERR Control");
    }

    #[test]
    fn dots_inside_names_stay() {
        assert_eq!(n("/a..b/c"), "/a..b/c");
        assert_eq!(n("/a/..b"), "/a/..b");
        assert_eq!(n("/a/b/.."), "/a/");
    }
}
