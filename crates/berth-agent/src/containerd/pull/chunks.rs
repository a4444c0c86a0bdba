//! The pure half of streaming a blob into containerd: counting what arrives against the size
//! the manifest declared, and gathering it into chunks for `Content.Write` requests.

/// What arrived does not match a blob's declared size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SizeMismatch {
    /// More than declared: reading stopped at once.
    TooMany { declared: u64 },
    /// The blob ended early.
    TooFew { declared: u64, arrived: u64 },
}

impl SizeMismatch {
    /// The sentence an error names the blob with.
    pub(super) fn describe(self, digest: &str) -> String {
        match self {
            Self::TooMany { declared } => {
                format!("blob {digest}: more than the declared {declared} bytes arrived")
            }
            Self::TooFew { declared, arrived } => {
                format!("blob {digest} was declared {declared} bytes but {arrived} arrived")
            }
        }
    }
}

/// Counts the bytes of a blob as they arrive against its declared size.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tally {
    declared: u64,
    arrived: u64,
}

impl Tally {
    pub(super) fn new(declared: u64) -> Self {
        Self {
            declared,
            arrived: 0,
        }
    }

    /// Refuses a length the registry announces (`Content-Length`) beyond the declared size,
    /// before a byte is read.
    pub(super) fn announced(&self, length: Option<u64>) -> Result<(), SizeMismatch> {
        match length {
            Some(length) if length > self.declared => Err(SizeMismatch::TooMany {
                declared: self.declared,
            }),
            _ => Ok(()),
        }
    }

    /// Counts `n` more bytes, refusing them when they go past the declared size (the caller
    /// stops reading: whatever follows is not wanted).
    pub(super) fn add(&mut self, n: usize) -> Result<(), SizeMismatch> {
        let arrived = self
            .arrived
            .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        if arrived > self.declared {
            return Err(SizeMismatch::TooMany {
                declared: self.declared,
            });
        }
        self.arrived = arrived;
        Ok(())
    }

    /// At the end of the blob: refuses fewer bytes than declared.
    pub(super) fn finish(&self) -> Result<(), SizeMismatch> {
        if self.arrived < self.declared {
            return Err(SizeMismatch::TooFew {
                declared: self.declared,
                arrived: self.arrived,
            });
        }
        Ok(())
    }
}

/// Gathers pieces of any size into chunks of exactly `size` bytes (the last one shorter), so
/// containerd gets few, bounded Write requests whatever the registry's read sizes.
#[derive(Debug)]
pub(in crate::containerd) struct Chunker {
    size: usize,
    buf: Vec<u8>,
}

impl Chunker {
    pub(in crate::containerd) fn new(size: usize) -> Self {
        Self {
            size: size.max(1),
            buf: Vec::new(),
        }
    }

    /// Takes bytes from the front of `data` until a chunk is full and returns it; `None` once
    /// `data` is used up without filling one. Call until `None`.
    pub(in crate::containerd) fn fill(&mut self, data: &mut &[u8]) -> Option<Vec<u8>> {
        if self.buf.capacity() == 0 && !data.is_empty() {
            self.buf.reserve_exact(self.size);
        }
        let take = data.len().min(self.size - self.buf.len());
        let (head, tail) = data.split_at(take);
        self.buf.extend_from_slice(head);
        *data = tail;
        (self.buf.len() == self.size).then(|| std::mem::take(&mut self.buf))
    }

    /// The last, partial chunk, if any bytes are left.
    pub(in crate::containerd) fn rest(self) -> Option<Vec<u8>> {
        (!self.buf.is_empty()).then_some(self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` to a tally of `declared` bytes: the first refusal, or what `finish` says.
    fn check(declared: u64, announced: Option<u64>, pieces: &[usize]) -> Result<(), SizeMismatch> {
        let mut tally = Tally::new(declared);
        tally.announced(announced)?;
        for &n in pieces {
            tally.add(n)?;
        }
        tally.finish()
    }

    #[test]
    fn exactly_the_declared_size_passes() {
        assert_eq!(check(10, Some(10), &[3, 7]), Ok(()));
        assert_eq!(check(10, None, &[10]), Ok(()));
        assert_eq!(check(0, Some(0), &[]), Ok(()));
        assert_eq!(check(5, None, &[0, 5, 0]), Ok(()));
    }

    #[test]
    fn more_than_declared_is_refused_as_soon_as_it_arrives() {
        // The piece that crosses the line is refused; the error comes before any later piece.
        let mut tally = Tally::new(10);
        assert_eq!(tally.add(8), Ok(()));
        assert_eq!(tally.add(3), Err(SizeMismatch::TooMany { declared: 10 }));
        assert_eq!(
            check(0, None, &[1]),
            Err(SizeMismatch::TooMany { declared: 0 })
        );
        assert_eq!(
            check(10, None, &[usize::MAX, usize::MAX]),
            Err(SizeMismatch::TooMany { declared: 10 })
        );
    }

    #[test]
    fn an_announced_length_beyond_the_declared_size_is_refused_before_reading() {
        assert_eq!(
            check(10, Some(11), &[]),
            Err(SizeMismatch::TooMany { declared: 10 })
        );
        // A shorter announcement is only checked when the blob ends.
        assert_eq!(
            check(10, Some(4), &[4]),
            Err(SizeMismatch::TooFew {
                declared: 10,
                arrived: 4
            })
        );
    }

    #[test]
    fn fewer_than_declared_is_refused_at_the_end() {
        let declared = 100 << 30;
        assert_eq!(
            check(declared, None, &[1 << 20, 5]),
            Err(SizeMismatch::TooFew {
                declared,
                arrived: (1 << 20) + 5
            })
        );
    }

    #[test]
    fn mismatches_name_the_blob_and_both_sizes() {
        assert_eq!(
            SizeMismatch::TooFew {
                declared: 107_374_182_400,
                arrived: 42
            }
            .describe("sha256:ab"),
            "blob sha256:ab was declared 107374182400 bytes but 42 arrived"
        );
        assert_eq!(
            SizeMismatch::TooMany { declared: 16 }.describe("sha256:ab"),
            "blob sha256:ab: more than the declared 16 bytes arrived"
        );
    }

    /// The chunk sizes `Chunker` makes of `pieces`, checking the bytes come out in order.
    fn chunks(size: usize, pieces: &[usize]) -> Vec<usize> {
        let mut chunker = Chunker::new(size);
        let (mut input, mut output) = (Vec::new(), Vec::new());
        let mut lens = Vec::new();
        let mut next = 0u8;
        for &n in pieces {
            let piece: Vec<u8> = (0..n)
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            input.extend_from_slice(&piece);
            let mut data = piece.as_slice();
            while let Some(chunk) = chunker.fill(&mut data) {
                lens.push(chunk.len());
                output.extend(chunk);
            }
            assert!(data.is_empty());
        }
        if let Some(chunk) = chunker.rest() {
            lens.push(chunk.len());
            output.extend(chunk);
        }
        assert_eq!(input, output);
        lens
    }

    #[test]
    fn chunks_are_full_but_the_last() {
        assert_eq!(chunks(4, &[1, 1, 1, 1, 1]), vec![4, 1]);
        assert_eq!(chunks(4, &[10]), vec![4, 4, 2]);
        assert_eq!(chunks(4, &[3, 5, 0, 4]), vec![4, 4, 4]);
        assert_eq!(chunks(4, &[]), Vec::<usize>::new());
        assert_eq!(chunks(4, &[0, 0]), Vec::<usize>::new());
    }
}
