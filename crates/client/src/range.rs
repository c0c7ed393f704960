//! Key ranges in etcd's encoding: a start key and an exclusive `range_end`, where an empty
//! `range_end` means the single key and `"\0"` means every key from the start on.

/// A set of keys to read, delete or watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    /// Exactly one key.
    Key(Vec<u8>),
    /// Every key that starts with these bytes (the empty prefix is every key).
    Prefix(Vec<u8>),
    /// Keys in `[start, end)`; an empty `end` means no upper bound.
    Range {
        /// First key included.
        start: Vec<u8>,
        /// First key excluded (empty: none).
        end: Vec<u8>,
    },
}

impl KeyRange {
    /// One key.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        KeyRange::Key(key.into())
    }

    /// All keys under `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        KeyRange::Prefix(prefix.into())
    }

    /// Keys in `[start, end)`; an empty `end` means no upper bound.
    pub fn between(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        KeyRange::Range { start: start.into(), end: end.into() }
    }

    /// The `(key, range_end)` pair of etcd's requests.
    pub fn to_etcd(&self) -> (Vec<u8>, Vec<u8>) {
        match self {
            KeyRange::Key(k) => (k.clone(), Vec::new()),
            KeyRange::Prefix(p) if p.is_empty() => (vec![0], vec![0]),
            KeyRange::Prefix(p) => (p.clone(), prefix_range_end(p)),
            KeyRange::Range { start, end } => {
                // etcd reads an empty key with an empty range_end as "no key"; start at the
                // smallest key instead, which is what `[, end)` means.
                let start = if start.is_empty() { vec![0] } else { start.clone() };
                let end = if end.is_empty() { vec![0] } else { end.clone() };
                (start, end)
            }
        }
    }
}

/// The exclusive end of the keys starting with `prefix`: the prefix with its last byte that
/// is not 0xff incremented and everything after it dropped. A prefix with no such byte
/// (empty, or all 0xff) has no upper bound, which etcd writes as `"\0"`.
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|&b| b != 0xff) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            end
        }
        None => vec![0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_range_end(b"foo"), b"fop".to_vec());
        assert_eq!(prefix_range_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_range_end(&[0x61, 0xff]), vec![0x62]);
        assert_eq!(prefix_range_end(&[0x00]), vec![0x01]);
    }

    #[test]
    fn prefix_without_an_upper_bound_is_open() {
        assert_eq!(prefix_range_end(b""), vec![0]);
        assert_eq!(prefix_range_end(&[0xff, 0xff]), vec![0]);
    }

    #[test]
    fn every_key_under_the_prefix_sorts_below_its_end() {
        let prefixes: [&[u8]; 4] = [b"a", b"user/", &[0x10, 0xff], &[0xfe, 0xff, 0xff]];
        for p in prefixes {
            let end = prefix_range_end(p);
            for suffix in [&b""[..], b"\0", b"zzz", &[0xff, 0xff, 0xff]] {
                let mut k = p.to_vec();
                k.extend_from_slice(suffix);
                assert!(k.as_slice() >= p && k < end, "{k:?} vs {end:?}");
            }
            // The first key after the prefix's keys is not included.
            assert!(!end.starts_with(p));
        }
    }

    #[test]
    fn ranges_encode_as_etcd_does() {
        assert_eq!(KeyRange::key("k").to_etcd(), (b"k".to_vec(), vec![]));
        assert_eq!(KeyRange::prefix("k/").to_etcd(), (b"k/".to_vec(), b"k0".to_vec()));
        assert_eq!(KeyRange::prefix("").to_etcd(), (vec![0], vec![0]));
        assert_eq!(KeyRange::between("a", "c").to_etcd(), (b"a".to_vec(), b"c".to_vec()));
        assert_eq!(KeyRange::between("a", "").to_etcd(), (b"a".to_vec(), vec![0]));
        assert_eq!(KeyRange::between("", "c").to_etcd(), (vec![0], b"c".to_vec()));
    }
}
