//! The agent's side of its conversation with the servers: registering,
//! following its allocations, heartbeats, and reporting what happened.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::{Client, Heartbeat, NodeRegistered, NodeRegistration};
use tokio::sync::mpsc;

use crate::desired_view::DesiredView;
use crate::supervisor::{Holding, Message};
use crate::usage::Sampler;

/// Registers the node, retrying until a server takes it; the servers'
/// answer: the node as they hold it, and how often they want it to beat.
pub(crate) async fn register(client: &Client, registration: &NodeRegistration) -> NodeRegistered {
    loop {
        match client.register_node(registration).await {
            Ok(registered) => {
                let node = &registered.node;
                tracing::info!(node = %node.name, cpu = %node.capacity_cpu, memory = %node.capacity_memory, "registered");
                return registered;
            }
            Err(error) => tracing::warn!(%error, "cannot register yet; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Long-polls the servers for this node's allocations; a blocking query
/// answers as soon as the state changes, so new work starts at once.
pub(crate) async fn poll_allocations(
    client: Client,
    registration: NodeRegistration,
    messages: mpsc::UnboundedSender<Message>,
) {
    // The highest state index seen: an answer older than it (from a server
    // that lags) is ignored, and every query asks for newer, and for the
    // changes since (the view keeps the rest).
    let mut index = 0;
    let mut view = DesiredView::default();
    loop {
        match client.node_allocations(&registration.name, index, Duration::from_secs(20), true).await {
            Ok(answer) => {
                if answer.index > index {
                    index = answer.index;
                    if messages.send(Message::Desired(view.merge(answer))).is_err() {
                        return;
                    }
                }
            }
            Err(error) => {
                if error.code() == Some("not_found") {
                    register(&client, &registration).await;
                } else {
                    tracing::warn!(%error, "cannot fetch this node's allocations; retrying");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// What the heartbeat task needs besides the client.
pub(crate) struct Beat {
    /// The agent's own interval: the shortest it beats at.
    pub(crate) every: Duration,
    /// The interval the servers asked for when the node registered (ms).
    pub(crate) asked_ms: Option<u64>,
    /// Reads the allocations' usage for each heartbeat to carry.
    pub(crate) sampler: Sampler,
    /// What the node still holds, for a node coming back from down.
    pub(crate) holding: Holding,
    /// To pass on the servers' word to stop allocations lost while down.
    pub(crate) messages: mpsc::UnboundedSender<Message>,
    /// This node's TLS, reported with each heartbeat and changed by the
    /// servers' answer during a CA rotation; `None` under `--insecure`.
    pub(crate) tls: Option<Arc<crate::node_tls::NodeTls>>,
}

/// How long one server gets to answer a heartbeat: one interval, so that
/// a beat the server does not answer in time is followed at once by the
/// next, sent to the next server, still within the servers' node TTL
/// (three intervals, 3 s at the least). Shorter made a busy server look
/// dead: ten thousand agents held to 1.2 s under load gave up on servers
/// that were merely slow, and reconnecting elsewhere made them slower.
fn heartbeat_timeout(every: Duration) -> Duration {
    Duration::from_millis(1200).max(every)
}

/// Tells the leader this node lives, with usage samples read for this beat
/// (each allocation's read bounded, so a slow engine delays a beat by a
/// quarter of a second at most) and what it holds.
pub(crate) async fn heartbeat(client: Client, registration: NodeRegistration, beat: Beat) {
    // A server that cannot answer (cut off, paused) must not hold the
    // heartbeats back until the node is marked down: the next one is tried.
    let mut every = asked_interval(beat.every, beat.asked_ms);
    if every != beat.every {
        tracing::info!(node = %registration.name, every_ms = every.as_millis() as u64, "heartbeat interval set by the servers");
    }
    let mut client = client.with_request_timeout(heartbeat_timeout(every));
    // Agents that start together (a fleet, hosts back from a power cut)
    // spread their beats over one interval instead of arriving at once.
    tokio::time::sleep(every.mul_f64(random_fraction(&registration.name))).await;
    let mut interval = beat_every(every);
    loop {
        interval.tick().await;
        let usage = beat.sampler.sample().await;
        let holding = beat.holding.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let tls = beat.tls.as_ref().map(|tls| tls.report());
        match client.heartbeat(&registration.name, &Heartbeat { usage, holding, tls }).await {
            Ok(answer) => {
                let asked = asked_interval(beat.every, answer.next_in_ms);
                if asked != every {
                    tracing::info!(node = %registration.name, every_ms = asked.as_millis() as u64, "heartbeat interval set by the servers");
                    every = asked;
                    client = client.with_request_timeout(heartbeat_timeout(every));
                    interval = beat_every(every);
                    interval.reset();
                }
                if !answer.stop.is_empty() {
                    tracing::warn!(node = %registration.name, stop = ?answer.stop, "the node was down; stopping what was placed elsewhere");
                    let _ = beat.messages.send(Message::StopNow(answer.stop));
                }
                if let (Some(advice), Some(tls)) = (answer.trust, &beat.tls)
                    && let Err(error) = tls.follow(&advice, &client).await
                {
                    tracing::warn!(%error, "cannot follow the cluster's CA yet; retrying");
                }
            }
            Err(error) if error.code() == Some("not_found") => {
                register(&client, &registration).await;
            }
            Err(error) => tracing::warn!(%error, "heartbeat not delivered"),
        }
    }
}

/// The interval the servers asked for, in a registration's or a
/// heartbeat's answer (`None`: the agent's own): a large cluster asks its
/// nodes to beat less often, never more.
fn asked_interval(own: Duration, asked_ms: Option<u64>) -> Duration {
    asked_ms.map_or(own, Duration::from_millis).max(own)
}

/// An interval of heartbeats that, after a pause, goes on from now
/// rather than sending the missed beats in a burst.
fn beat_every(every: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// A number in [0, 1), different for each node and each start.
fn random_fraction(node: &str) -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(node.as_bytes());
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Sends what the agent did on its own (orphans removed) to `flotilla events`.
pub(crate) async fn send_node_events(
    client: Client,
    node: String,
    mut events: mpsc::UnboundedReceiver<Vec<String>>,
) {
    while let Some(messages) = events.recv().await {
        if let Err(error) = client.record_node_events(&node, &messages).await {
            tracing::warn!(%error, "cannot record node events");
        }
    }
}

/// Tells the servers which slot volumes this node removed. A report that
/// is lost is made again: the servers keep asking for the removal, and
/// removing a volume that is gone already succeeds.
pub(crate) async fn report_volumes_removed(client: Client, node: String, volumes: Vec<String>) {
    if let Err(error) = client.volumes_removed(&node, volumes).await {
        tracing::warn!(%error, "cannot report removed volumes");
    }
}

/// Sends allocation state changes to the servers, batching what piles up
/// while a report is in flight into the next one. Each report is numbered
/// above every earlier one from this node (`ReportOrder`), so that one this
/// task gave up on cannot undo a later one by arriving after it.
pub(crate) async fn report(
    client: Client,
    registration: NodeRegistration,
    last_applied: u64,
    mut reports: mpsc::UnboundedReceiver<Vec<flotilla_api::AllocationUpdate>>,
) {
    let mut order = ReportOrder { last: last_applied };
    let mut pending: BTreeMap<u64, flotilla_api::AllocationUpdate> = BTreeMap::new();
    loop {
        if pending.is_empty() {
            match reports.recv().await {
                Some(batch) => pending.extend(batch.into_iter().map(|u| (u.id, u))),
                None => return,
            }
        }
        while let Ok(batch) = reports.try_recv() {
            pending.extend(batch.into_iter().map(|u| (u.id, u)));
        }
        let batch: Vec<_> = pending.values().cloned().collect();
        match client.report_allocations(&registration.name, order.next(), &batch).await {
            Ok(_) => pending.clear(),
            Err(error) if error.code() == Some("conflict") => {
                // The servers applied a report numbered higher than this
                // agent knows of: the clock was set back across a restart,
                // or another agent reports under this node's name.
                tracing::warn!(%error, "the servers hold a newer report from this node; numbering past it");
                order.past(register(&client, &registration).await.node.report_seq);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot report allocation states; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The numbers of one node's allocation reports: each above the last, the
/// last the servers applied, and the clock in microseconds, so that they
/// keep rising across a restart of the agent.
struct ReportOrder {
    last: u64,
}

impl ReportOrder {
    fn next(&mut self) -> u64 {
        let micros =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
        self.last = (self.last + 1).max(u64::try_from(micros).unwrap_or(u64::MAX));
        self.last
    }

    /// Numbers the next report past `applied`, a number the servers hold.
    fn past(&mut self, applied: u64) {
        self.last = self.last.max(applied);
    }
}

#[cfg(test)]
mod tests {
    use super::ReportOrder;

    #[test]
    fn a_heartbeat_gets_longer_to_be_answered_when_the_interval_is_stretched_but_within_its_ttl() {
        use std::time::Duration;
        // (interval, timeout)
        let table = [(1000, 1200), (2000, 2000), (5000, 5000), (20_000, 20_000)];
        for (every, timeout) in table {
            let given = super::heartbeat_timeout(Duration::from_millis(every));
            assert_eq!(given, Duration::from_millis(timeout), "every {every} ms");
            // A beat given up on is followed at once by the next, to
            // another server: both fit in the TTL.
            let every = Duration::from_millis(every);
            assert!(every + given < (every * 3).max(Duration::from_secs(3)), "within the TTL");
        }
    }

    #[test]
    fn report_numbers_rise_from_the_clock_and_past_what_the_servers_applied() {
        let mut order = ReportOrder { last: 0 };
        let first = order.next();
        assert!(first > 1_700_000_000_000_000, "numbered from the clock in microseconds, got {first}");
        let mut previous = first;
        for _ in 0..1000 {
            let next = order.next();
            assert!(next > previous, "{next} after {previous}");
            previous = next;
        }
        let ahead = previous + 1_000_000_000;
        order.past(ahead);
        assert_eq!(order.next(), ahead + 1, "past a number the servers hold, the clock being behind it");
        order.past(5);
        assert_eq!(order.next(), ahead + 2, "a lower number the servers hold does not set the order back");
    }
}
