//! raft-rs logs through `slog`; this drain forwards its records to `tracing`
//! so that a server has one log stream with one filter.

use slog::{Drain, KV, OwnedKVList, Record, Serializer};

pub struct TracingDrain;

/// Collects a record's key-value pairs as `key=value` text.
struct KeyValues(String);

impl Serializer for KeyValues {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut kv = KeyValues(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let message = record.msg();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{message}{}", kv.0)
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{message}{}", kv.0),
            slog::Level::Info => tracing::info!(target: "raft", "{message}{}", kv.0),
            slog::Level::Debug | slog::Level::Trace => tracing::debug!(target: "raft", "{message}{}", kv.0),
        }
        Ok(())
    }
}

pub fn logger(id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), slog::o!("raft_id" => id))
}
