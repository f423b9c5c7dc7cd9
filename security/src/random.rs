//! Randomness from the operating system (ring's `SystemRandom`), for keys,
//! token secrets and identifiers that must not be guessable.

use ring::rand::{SecureRandom, SystemRandom};

use crate::SecurityError;

/// `N` random bytes; the OS refusing is reported, never papered over.
pub fn bytes<const N: usize>() -> Result<[u8; N], SecurityError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| SecurityError::Token("the operating system gave no random bytes".into()))?;
    Ok(out)
}

pub use crate::hex::encode as hex;
