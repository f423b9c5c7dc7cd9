//! The events page: what the cluster did on its own and why, newest first.
//! It stays current through the event stream like every page.

use std::fmt::Write as _;

use super::markup::{age, escape, path_segment};
use crate::state::ClusterState;

pub fn render(state: &ClusterState, now_ms: u64) -> String {
    let mut out = String::new();
    let events: Vec<_> = state.events_after(0).collect();
    let _ = write!(
        out,
        "<h1>Events</h1><p class=\"summary\">the latest {} events</p><table id=\"events\"><thead><tr>\
         <th>index</th><th>when</th><th>subject</th><th>what happened</th></tr></thead><tbody>",
        events.len()
    );
    for event in events.iter().rev() {
        let subject = match (&event.workload, &event.node) {
            (Some(w), _) => {
                format!("<a href=\"/ui/workloads/{}\">workload/{}</a>", path_segment(w), escape(w))
            }
            (None, Some(n)) => {
                format!("<a href=\"/ui/nodes#node-{}\">node/{}</a>", path_segment(n), escape(n))
            }
            (None, None) => "cluster".to_owned(),
        };
        let _ = write!(
            out,
            "<tr data-event=\"{index}\"><td>{index}</td><td>{} ago</td><td>{subject}</td><td>{}</td></tr>",
            age(now_ms, event.at_ms),
            escape(&event.message),
            index = event.index,
        );
    }
    out.push_str("</tbody></table>");
    out
}
