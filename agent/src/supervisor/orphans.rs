//! The orphan collector: containers (or processes) labelled with this node
//! that no allocation owns, left by a crash between create and record, by
//! a stop that failed, or by hand. Each is removed once it has stayed
//! unowned for the adoption grace period, so that an agent that just
//! started (and has not yet heard what it should adopt) removes nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_api::spec::Driver;

use super::{Message, Supervisor};
use crate::runtime::Observed;

/// What the collector has seen unowned, by runtime handle, and since when.
#[derive(Debug, Default)]
pub struct OrphanWatch {
    first_seen: HashMap<String, Instant>,
}

impl Supervisor {
    /// Lists what the runtimes hold for this node, off the supervisor's
    /// task; the answer comes back as `Message::Inventory`.
    pub fn take_inventory(&self) {
        let runtimes = self.unique_runtimes();
        let (messages, node) = (self.messages.clone(), self.node.clone());
        tokio::spawn(async move {
            let mut inventory = Vec::new();
            for (driver, runtime) in runtimes {
                match runtime.list(&node).await {
                    Ok(observed) => inventory.extend(observed.into_iter().map(|o| (driver, o))),
                    Err(error) => {
                        tracing::warn!(%error, %driver, "cannot list what the runtime holds");
                        return;
                    }
                }
            }
            let _ = messages.send(Message::Inventory(inventory));
        });
    }

    /// Removes what has stayed unowned past the grace period.
    pub(super) fn collect_orphans(&mut self, inventory: Vec<(Driver, Observed)>, now: Instant) {
        if !self.desired_seen {
            return;
        }
        let grace = self.orphan_grace;
        let present: std::collections::BTreeSet<u64> = inventory.iter().map(|(_, o)| o.allocation).collect();
        self.stopping_found.retain(|id| present.contains(id));
        let mut unowned: HashMap<String, (Driver, u64)> = HashMap::new();
        for (driver, observed) in inventory {
            let owned = self
                .local
                .get(&observed.allocation)
                .is_some_and(|l| l.handle.as_deref().is_none_or(|h| h == observed.handle))
                || self.found.contains_key(&observed.allocation);
            if !owned {
                unowned.insert(observed.handle, (driver, observed.allocation));
            }
        }
        let watch = &mut self.orphans.first_seen;
        watch.retain(|handle, _| unowned.contains_key(handle));
        let mut overdue = Vec::new();
        for (handle, (driver, allocation)) in unowned {
            let since = *watch.entry(handle.clone()).or_insert(now);
            if now.duration_since(since) >= grace {
                watch.remove(&handle);
                overdue.push((handle, driver, allocation));
            }
        }
        for (handle, driver, allocation) in overdue {
            tracing::warn!(%handle, allocation, ?grace, "removing an orphan");
            self.node_events.push(format!(
                "removed {handle} (labelled allocation {allocation}): no allocation of this node owns it"
            ));
            self.spawn_remove_orphan(driver, handle);
        }
    }

    fn spawn_remove_orphan(&self, driver: Driver, handle: String) {
        let Some(runtime) = self.runtimes.get(&driver).cloned() else { return };
        let permits = Arc::clone(&self.stop_permits);
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            if let Err(error) = runtime.stop(&handle).await {
                tracing::warn!(%handle, %error, "cannot remove an orphan; the next scan tries again");
            }
        });
    }

    /// How often to look for orphans: often enough to remove one soon after
    /// its grace period ends, rarely enough not to load the engine.
    pub fn orphan_scan_every(&self) -> Duration {
        (self.orphan_grace / 2).clamp(Duration::from_millis(500), Duration::from_secs(30))
    }
}
