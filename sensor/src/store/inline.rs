//! Short byte strings (addresses as text, process names) as fixed-size hash keys.

/// A key of up to `N` bytes kept inline, so that adding a row up allocates nothing and
/// follows no pointer (every address as text fits in 46 bytes). Hashed and compared by
/// its used bytes only.
#[derive(Clone, Copy)]
pub struct Inline<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

impl<const N: usize> PartialEq for Inline<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<const N: usize> Eq for Inline<N> {}

impl<const N: usize> std::fmt::Debug for Inline<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_slice()))
    }
}

impl<const N: usize> std::hash::Hash for Inline<N> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(self.as_slice());
    }
}

impl<const N: usize> Inline<N> {
    /// `a`, then a NUL and `b` when there is a `b`; `None` when that does not fit.
    pub fn new(a: &[u8], b: Option<&[u8]>) -> Option<Self> {
        let len = a.len() + b.map_or(0, |b| b.len() + 1);
        if len > N || len > usize::from(u8::MAX) {
            return None;
        }
        let mut bytes = [0; N];
        bytes[..a.len()].copy_from_slice(a);
        if let Some(b) = b {
            bytes[a.len() + 1..len].copy_from_slice(b);
        }
        Some(Self {
            len: len as u8,
            bytes,
        })
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}
