//! Single-range `Range: bytes=…` requests. Anything else (several ranges, other units,
//! syntax errors) is ignored and the whole blob is served, as RFC 9110 allows.

/// A requested range before the blob size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-b` or `bytes=a-` (`b` inclusive).
    From(u64, Option<u64>),
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Parse a `Range` header value; `None` means "serve everything".
    pub fn parse(value: &str) -> Option<ByteRange> {
        let spec = value.trim().strip_prefix("bytes=")?.trim();
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.split_once('-')?;
        let num = |s: &str| s.trim().parse::<u64>().ok();
        match (a.trim().is_empty(), b.trim().is_empty()) {
            (true, false) => Some(ByteRange::Suffix(num(b)?)),
            (false, true) => Some(ByteRange::From(num(a)?, None)),
            (false, false) => {
                let (a, b) = (num(a)?, num(b)?);
                (a <= b).then_some(ByteRange::From(a, Some(b)))
            }
            (true, true) => None,
        }
    }

    /// `start..end` (end exclusive) within a blob of `size` bytes; `None` when unsatisfiable.
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        match self {
            ByteRange::From(a, _) if a >= size => None,
            ByteRange::From(a, b) => Some((a, b.map_or(size, |b| b.min(size - 1) + 1))),
            ByteRange::Suffix(0) => None,
            ByteRange::Suffix(_) if size == 0 => None,
            ByteRange::Suffix(n) => Some((size.saturating_sub(n), size)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ByteRange::{self, *};

    #[test]
    fn parses_single_ranges_only() {
        for (v, want) in [
            ("bytes=0-99", Some(From(0, Some(99)))),
            ("bytes=100-", Some(From(100, None))),
            ("bytes=-5", Some(Suffix(5))),
            (" bytes= 1 - 2 ", Some(From(1, Some(2)))),
            ("bytes=5-1", None),
            ("bytes=0-1,5-6", None),
            ("items=0-1", None),
            ("bytes=-", None),
            ("bytes=a-b", None),
            ("", None),
        ] {
            assert_eq!(ByteRange::parse(v), want, "{v:?}");
        }
    }

    #[test]
    fn resolves_against_the_size() {
        assert_eq!(From(0, Some(99)).resolve(10), Some((0, 10)));
        assert_eq!(From(2, Some(4)).resolve(10), Some((2, 5)));
        assert_eq!(From(9, None).resolve(10), Some((9, 10)));
        assert_eq!(From(10, None).resolve(10), None);
        assert_eq!(Suffix(3).resolve(10), Some((7, 10)));
        assert_eq!(Suffix(30).resolve(10), Some((0, 10)));
        assert_eq!(Suffix(0).resolve(10), None);
        assert_eq!(Suffix(1).resolve(0), None);
        assert_eq!(From(0, None).resolve(0), None);
    }
}
