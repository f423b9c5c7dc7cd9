//! Removing slot volumes the servers ask this node to remove (their
//! workload was deleted with its volumes). A volume still mounted by a
//! container being stopped cannot go yet: it is tried again shortly.

use std::time::{Duration, Instant};

use flotilla_api::spec::Driver;

use super::{Message, Supervisor};

/// How long after a failed removal it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One volume this node is asked to remove.
#[derive(Debug, Clone, Copy)]
pub(super) struct Removal {
    /// A removal runs now; its outcome comes back as a message.
    pub(super) in_flight: bool,
    /// When to try (again).
    due: Instant,
}

impl Supervisor {
    /// The servers' latest list of volumes to remove here: new ones are
    /// tried at once, ones no longer listed are forgotten.
    pub(super) fn volumes_to_remove(&mut self, names: Vec<String>, now: Instant) {
        self.removals.retain(|name, _| names.contains(name));
        for name in names {
            self.removals.entry(name).or_insert(Removal { in_flight: false, due: now });
        }
    }

    /// Starts the removals that are due.
    pub(super) fn remove_due_volumes(&mut self, now: Instant) {
        let Some(runtime) = self.runtimes.get(&Driver::Docker).cloned() else { return };
        for (name, removal) in self.removals.iter_mut().filter(|(_, r)| !r.in_flight && r.due <= now) {
            removal.in_flight = true;
            let (name, runtime, messages) = (name.clone(), runtime.clone(), self.messages.clone());
            tokio::spawn(async move {
                let result = runtime.remove_volume(&name).await.map_err(|e| e.to_string());
                let _ = messages.send(Message::VolumeRemoved { name, result });
            });
        }
    }

    pub(super) fn on_volume_removed(&mut self, name: String, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.removals.remove(&name);
                tracing::info!(volume = %name, "volume removed");
                self.node_events.push(format!("volume {name} removed"));
                self.removed_volumes.push(name);
            }
            Err(error) => {
                tracing::info!(volume = %name, %error, "cannot remove the volume yet; trying again");
                if let Some(removal) = self.removals.get_mut(&name) {
                    *removal = Removal { in_flight: false, due: Instant::now() + RETRY_AFTER };
                }
            }
        }
    }

    /// Volumes removed since last asked, to tell the servers.
    pub fn take_removed_volumes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.removed_volumes)
    }
}
