//! `Range` request headers (`airlock::api::range::ByteRange`). The input is an optional first
//! line with a blob size, then the header value.
//!
//! Properties: a range that parses prints back (`bytes=a-b`, `bytes=a-`, `bytes=-n`) as the
//! same range; `a <= b`; resolved against any size it is a non-empty `start..end` within the
//! blob, the bytes asked for (clipped to the blob), and unsatisfiable only when it must be.

use airlock::api::range::ByteRange;

/// Sizes every parsed range is resolved against, besides the input's own.
const SIZES: [u64; 7] = [0, 1, 2, 10, 4096, u64::MAX - 1, u64::MAX];

/// Parse the header in `data`; whether it was a single satisfiable-looking range.
pub fn check(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let (size, value) = match text.split_once('\n') {
        Some((first, rest)) => match first.trim().parse::<u64>() {
            Ok(n) => (Some(n), rest),
            Err(_) => (None, text.as_ref()),
        },
        None => (None, text.as_ref()),
    };
    let Some(range) = ByteRange::parse(value) else {
        return false;
    };
    assert_eq!(ByteRange::parse(&print(range)), Some(range), "{range:?}");
    if let ByteRange::From(a, Some(b)) = range {
        assert!(a <= b, "{range:?}");
    }
    for size in size.into_iter().chain(SIZES) {
        check_resolve(range, size);
    }
    true
}

/// The header value asking for `range`.
pub fn print(range: ByteRange) -> String {
    match range {
        ByteRange::From(a, Some(b)) => format!("bytes={a}-{b}"),
        ByteRange::From(a, None) => format!("bytes={a}-"),
        ByteRange::Suffix(n) => format!("bytes=-{n}"),
    }
}

fn check_resolve(range: ByteRange, size: u64) {
    let resolved = range.resolve(size);
    let Some((start, end)) = resolved else {
        let must = match range {
            ByteRange::From(a, _) => a >= size,
            ByteRange::Suffix(n) => n == 0 || size == 0,
        };
        assert!(must, "{range:?} of {size} bytes is satisfiable");
        return;
    };
    assert!(
        start < end && end <= size,
        "{range:?} of {size}: {start}..{end}"
    );
    match range {
        ByteRange::From(a, b) => {
            assert_eq!(start, a);
            assert_eq!(end, b.map_or(size, |b| b.saturating_add(1).min(size)));
        }
        ByteRange::Suffix(n) => {
            assert_eq!(end, size);
            assert_eq!(end - start, n.min(size));
        }
    }
}

/// Ranges clients send, some with a blob size first.
pub fn seeds() -> Vec<Vec<u8>> {
    [
        "bytes=0-99",
        "bytes=100-",
        "bytes=-5",
        " bytes= 1 - 2 ",
        "10\nbytes=9-",
        "0\nbytes=0-0",
    ]
    .into_iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}
