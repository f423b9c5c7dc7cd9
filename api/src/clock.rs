//! The wall clock as the API's `*_ms` fields carry it: milliseconds since
//! the Unix epoch. Servers put it into commands (the state machine reads no
//! clock), agents into reports, the CLI compares against it.

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
