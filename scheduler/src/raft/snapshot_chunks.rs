//! Snapshots bigger than one peer request travel in chunks, so that the
//! peer route can refuse any request body past a small limit: a message
//! batch or one chunk. The receiver assembles one snapshot at a time (a
//! newer one replaces it), in order, up to `MAX_SNAPSHOT_BYTES`.

/// The largest snapshot a server takes.
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("a snapshot of {0} bytes is over the limit of {MAX_SNAPSHOT_BYTES}")]
    TooLarge(u64),
    #[error("a chunk at offset {offset} does not follow the {have} bytes received")]
    OutOfOrder { offset: u64, have: u64 },
    #[error("a chunk runs past the snapshot's {0} bytes")]
    Overrun(u64),
}

/// The snapshot being received.
#[derive(Debug)]
struct Partial {
    sender: u64,
    id: String,
    total: u64,
    bytes: Vec<u8>,
}

/// Assembles the snapshot chunks one server receives.
#[derive(Debug, Default)]
pub struct SnapshotAssembly {
    current: Option<Partial>,
}

impl SnapshotAssembly {
    /// Takes one chunk; the whole snapshot's bytes once the last arrives.
    /// A chunk at offset 0 starts a snapshot over; any other must continue
    /// the one under way from the same sender. A refused chunk drops it.
    pub fn receive(
        &mut self,
        sender: u64,
        id: &str,
        offset: u64,
        total: u64,
        chunk: &[u8],
    ) -> Result<Option<Vec<u8>>, ChunkError> {
        if total > MAX_SNAPSHOT_BYTES {
            self.current = None;
            return Err(ChunkError::TooLarge(total));
        }
        if offset == 0 {
            self.current = Some(Partial { sender, id: id.to_owned(), total, bytes: Vec::new() });
        }
        let partial = self.current.as_mut().filter(|p| p.sender == sender && p.id == id && p.total == total);
        let have = partial.as_ref().map_or(0, |p| p.bytes.len() as u64);
        let Some(partial) = partial.filter(|_| have == offset) else {
            self.current = None;
            return Err(ChunkError::OutOfOrder { offset, have });
        };
        if offset + chunk.len() as u64 > total {
            self.current = None;
            return Err(ChunkError::Overrun(total));
        }
        partial.bytes.extend_from_slice(chunk);
        if partial.bytes.len() as u64 == total {
            return Ok(self.current.take().map(|p| p.bytes));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_in_order_make_the_snapshot_and_anything_else_is_refused() {
        type Step<'a> = (u64, &'a str, u64, u64, &'a [u8], Result<Option<&'a [u8]>, ChunkError>);
        let cases: Vec<(&str, Vec<Step>)> = vec![
            ("in order", vec![(1, "a", 0, 4, b"ab", Ok(None)), (1, "a", 2, 4, b"cd", Ok(Some(b"abcd")))]),
            ("one chunk", vec![(1, "a", 0, 2, b"ab", Ok(Some(b"ab")))]),
            (
                "a gap",
                vec![
                    (1, "a", 0, 6, b"ab", Ok(None)),
                    (1, "a", 4, 6, b"ef", Err(ChunkError::OutOfOrder { offset: 4, have: 2 })),
                ],
            ),
            ("no start", vec![(1, "a", 2, 4, b"cd", Err(ChunkError::OutOfOrder { offset: 2, have: 0 }))]),
            (
                "another sender cannot continue it",
                vec![
                    (1, "a", 0, 4, b"ab", Ok(None)),
                    (2, "a", 2, 4, b"cd", Err(ChunkError::OutOfOrder { offset: 2, have: 0 })),
                    (1, "a", 2, 4, b"cd", Err(ChunkError::OutOfOrder { offset: 2, have: 0 })),
                ],
            ),
            (
                "a newer snapshot replaces it",
                vec![
                    (1, "a", 0, 4, b"ab", Ok(None)),
                    (1, "b", 0, 2, b"xy", Ok(Some(b"xy"))),
                    (1, "a", 2, 4, b"cd", Err(ChunkError::OutOfOrder { offset: 2, have: 0 })),
                ],
            ),
            ("past the end", vec![(1, "a", 0, 2, b"abc", Err(ChunkError::Overrun(2)))]),
            (
                "too large",
                vec![(
                    1,
                    "a",
                    0,
                    MAX_SNAPSHOT_BYTES + 1,
                    b"a",
                    Err(ChunkError::TooLarge(MAX_SNAPSHOT_BYTES + 1)),
                )],
            ),
        ];
        for (name, steps) in cases {
            let mut assembly = SnapshotAssembly::default();
            for (sender, id, offset, total, chunk, want) in steps {
                let got = assembly.receive(sender, id, offset, total, chunk);
                assert_eq!(got, want.map(|b| b.map(<[u8]>::to_vec)), "{name}: chunk at {offset}");
            }
        }
    }
}
