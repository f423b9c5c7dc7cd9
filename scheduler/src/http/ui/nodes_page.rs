//! The nodes page: each node drawn as two bins, CPU and memory, filled by
//! the requests of the allocations placed on it, so the bin-packing can be
//! seen; a thin bar under each bin shows what the replicas really use (the
//! leader's samples). Operators with the admin role get drain buttons.

use std::collections::HashMap;
use std::fmt::Write as _;

use flotilla_api::{Allocation, AllocationUsage, Node, NodeStatus};

use super::markup::{escape, hue, path_segment, percent};
use crate::state::ClusterState;

fn mebibytes(bytes: u64) -> String {
    format!("{} MiB", bytes / (1024 * 1024))
}

/// One bin: a segment per allocation, as wide as its share of the node.
fn bin(
    out: &mut String,
    resource: &str,
    node: &Node,
    allocations: &[&Allocation],
    usage: &HashMap<u64, AllocationUsage>,
) {
    let (capacity, booked) = match resource {
        "cpu" => (node.capacity_cpu.0, node.allocated_cpu),
        _ => (node.capacity_memory.0, node.allocated_memory),
    };
    let show = |amount: u64| match resource {
        "cpu" => format!("{amount}m"),
        _ => mebibytes(amount),
    };
    let _ = write!(
        out,
        "<div class=\"bin {resource}\" data-booked=\"{booked}\" data-capacity=\"{capacity}\">\
         <span class=\"bin-label\">{resource} {} / {}</span><div class=\"bar\">",
        show(booked),
        show(capacity)
    );
    for allocation in allocations {
        let amount = if resource == "cpu" { allocation.cpu } else { allocation.memory };
        let _ = write!(
            out,
            "<span class=\"segment\" style=\"width:{:.2}%;background:hsl({},55%,55%)\" title=\"{} #{} ({}) {}\"></span>",
            percent(amount, capacity),
            hue(allocation.workload.as_str()),
            escape(allocation.workload.as_str()),
            allocation.replica,
            allocation.id,
            show(amount)
        );
    }
    let used: u64 = allocations
        .iter()
        .filter_map(|a| usage.get(&a.id))
        .map(|u| if resource == "cpu" { u.cpu_millis.round() as u64 } else { u.memory_bytes })
        .sum();
    let _ = write!(
        out,
        "</div><div class=\"used\" title=\"used: {}\"><span style=\"width:{:.2}%\"></span></div></div>",
        show(used),
        percent(used, capacity)
    );
}

fn drain_button(node: &Node) -> String {
    let (to, label) = match node.status {
        NodeStatus::Ready => ("draining", "Drain"),
        NodeStatus::Draining => ("ready", "Make ready"),
        NodeStatus::Down => return String::new(),
    };
    format!(
        "<button class=\"action\" data-method=\"PUT\" data-path=\"/v1/nodes/{}/status\" \
         data-body='{{\"status\":\"{to}\"}}'>{label}</button>",
        path_segment(&node.name)
    )
}

pub fn render(state: &ClusterState, usage: &HashMap<u64, AllocationUsage>, may_drain: bool) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<h1>Nodes</h1><p class=\"summary\">{} nodes</p><div class=\"nodes\">",
        state.node_count()
    );
    for node in state.nodes() {
        let allocations: Vec<&Allocation> =
            state.node_allocations(&node.name).filter(|a| a.state.is_live()).collect();
        let _ = write!(
            out,
            "<section class=\"node {status}\" id=\"node-{id}\" data-node=\"{name}\" data-status=\"{status}\">\
             <h2>{name}</h2><span class=\"status {status}\">{status}</span>",
            id = path_segment(&node.name),
            name = escape(&node.name),
            status = node.status,
        );
        if may_drain {
            out.push_str(&drain_button(node));
        }
        let count = allocations.len();
        let _ = write!(out, "<p class=\"meta\">{count} allocation{}", if count == 1 { "" } else { "s" });
        if !node.address.is_empty() {
            let _ = write!(out, " · agent at {}", escape(&node.address));
        }
        for (key, value) in &node.labels {
            let _ = write!(out, " <span class=\"label-tag\">{}={}</span>", escape(key), escape(value));
        }
        out.push_str("</p>");
        bin(&mut out, "cpu", node, &allocations, usage);
        bin(&mut out, "memory", node, &allocations, usage);
        out.push_str("</section>");
    }
    out.push_str("</div>");
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use flotilla_api::{CpuMillis, MemoryBytes, NodeRegistration};

    use super::*;
    use crate::state::Command;

    fn state_with_node(label: &str) -> ClusterState {
        let mut state = ClusterState::default();
        let registration = NodeRegistration {
            name: "n1".into(),
            address: String::new(),
            cpu: CpuMillis(2000),
            memory: MemoryBytes(1 << 30),
            labels: BTreeMap::from([("team".to_owned(), label.to_owned())]),
            drivers: Default::default(),
            host_volumes: Default::default(),
        };
        state.apply(1, Command::RegisterNode { registration }).expect("register");
        state
    }

    #[test]
    fn labels_are_text_and_only_admins_get_the_drain_button() {
        let state = state_with_node("<script>x</script>");
        let for_admin = render(&state, &HashMap::new(), true);
        assert!(for_admin.contains("team=&lt;script&gt;x&lt;/script&gt;"));
        assert!(!for_admin.contains("<script>"));
        assert!(for_admin.contains("data-path=\"/v1/nodes/n1/status\""), "a drain button: {for_admin}");
        let for_reader = render(&state, &HashMap::new(), false);
        assert!(!for_reader.contains("button"), "no buttons for a reader");
    }

    #[test]
    fn an_empty_node_has_empty_bins_of_its_capacity() {
        let page = render(&state_with_node("a"), &HashMap::new(), false);
        assert!(page.contains("data-booked=\"0\" data-capacity=\"2000\""), "{page}");
        assert!(!page.contains("class=\"segment\""));
    }
}
