//! Stopping allocations: what the servers no longer want here, and
//! everything on shutdown when asked to.

use std::sync::Arc;

use flotilla_api::spec::Driver;

use super::local::Phase;
use super::{Message, Supervisor};

impl Supervisor {
    pub(super) fn stop(&mut self, id: u64) {
        let Some(local) = self.local.get_mut(&id) else { return };
        if local.phase == Phase::Stopping {
            return;
        }
        local.phase = Phase::Stopping;
        let (driver, handle) = (local.driver, local.handle.clone());
        self.handles.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        match handle {
            Some(handle) => self.spawn_stop(id, driver, handle),
            None => {
                let _ = self.messages.send(Message::Stopped { allocation: id });
            }
        }
    }

    pub(super) fn spawn_stop(&self, id: u64, driver: Driver, handle: String) {
        let Some(runtime) = self.runtimes.get(&driver).cloned() else { return };
        let (messages, permits) = (self.messages.clone(), Arc::clone(&self.permits));
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            if let Err(error) = runtime.stop(&handle).await {
                tracing::warn!(allocation = id, %error, "stop failed");
            }
            let _ = messages.send(Message::Stopped { allocation: id });
        });
    }

    /// Stops everything this agent runs (for `flotilla dev` on Ctrl-C).
    pub async fn stop_all(&mut self) {
        for (id, local) in std::mem::take(&mut self.local) {
            if let (Some(runtime), Some(handle)) = (self.runtimes.get(&local.driver), local.handle)
                && let Err(error) = runtime.stop(&handle).await
            {
                tracing::warn!(allocation = id, %error, "stop failed");
            }
        }
    }
}
