//! The CRC-32 that frames every value the Raft storage keeps, so that a
//! damaged file is refused by name instead of fed to Raft.

/// The table of the bytewise CRC-32 (IEEE).
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// A CRC-32 (IEEE) of bytes that come in pieces: a snapshot is checked as
/// it streams to or from its file, never held whole to be checked.
#[derive(Debug, Clone, Copy)]
pub(super) struct Crc32(u32);

impl Crc32 {
    pub(super) fn new() -> Self {
        Crc32(!0)
    }

    pub(super) fn update(&mut self, bytes: &[u8]) {
        self.0 = bytes.iter().fold(self.0, |c, b| TABLE[((c ^ u32::from(*b)) & 0xFF) as usize] ^ (c >> 8));
    }

    pub(super) fn finish(self) -> u32 {
        !self.0
    }
}

/// CRC-32 (IEEE), the checksum framing every stored value.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = Crc32::new();
    crc.update(bytes);
    crc.finish()
}

/// The payload behind its CRC-32.
pub(super) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload, if its CRC-32 matches.
pub(super) fn unframe(bytes: &[u8]) -> Option<&[u8]> {
    let (sum, payload) = bytes.split_at_checked(4)?;
    (u32::from_le_bytes(sum.try_into().ok()?) == crc32(payload)).then_some(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_is_ieee_crc32_whether_its_bytes_come_whole_or_in_pieces() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926, "the standard check value");
        let mut pieces = Crc32::new();
        for piece in [&b"1234"[..], b"", b"56789"] {
            pieces.update(piece);
        }
        assert_eq!(pieces.finish(), 0xCBF4_3926);
    }
}
