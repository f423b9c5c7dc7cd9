//! `flotilla top`: a live full-screen view of the cluster in the terminal
//! (ratatui): nodes with bars of the CPU and memory booked by their
//! allocations and used by them, workloads with their replicas, health and
//! rollout, and the latest events. It looks again whenever the event stream
//! says the state moved (at most twice a second); `q` quits.
//!
//! Drawing is a pure function of a `Snapshot`, so it is tested on ratatui's
//! test backend; fetching and the key loop are the thin shell around it.

use std::collections::HashMap;
use std::time::Duration;

use clap::Args;
use flotilla_api::{Allocation, Client, Event, Node, NodeStatus, StreamMessage, Workload};
use ratatui::Frame;
use ratatui::crossterm::event::{self, Event as TermEvent, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};
use tokio::sync::mpsc;

use crate::nodes::age;

/// How often at most the view is fetched again while the state moves.
const REFRESH_EVERY: Duration = Duration::from_millis(500);
/// How many events the view keeps.
const EVENTS_KEPT: usize = 50;
/// The width of a bar, in cells.
const BAR: usize = 16;

#[derive(Debug, Args)]
pub struct TopArgs {}

/// What one look at the cluster saw.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub leader: Option<u64>,
    pub term: u64,
    pub nodes: Vec<Node>,
    pub workloads: Vec<Workload>,
    /// Each node's CPU (millicores) and memory (bytes) in use, from the leader's samples.
    pub used: HashMap<String, (f64, f64)>,
    /// Newest last.
    pub events: Vec<Event>,
    /// Why the last look failed, if it did: shown, never fatal.
    pub problem: Option<String>,
}

/// What a key asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Quit,
    Nothing,
}

pub fn action_of(key: KeyEvent) -> Action {
    if key.kind != KeyEventKind::Press {
        return Action::Nothing;
    }
    match key.code {
        KeyCode::Char('q') | KeyCode::Esc => Action::Quit,
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Action::Quit,
        _ => Action::Nothing,
    }
}

/// `part` of `whole` as a bar of `BAR` cells: `█` booked, `░` free.
fn bar(part: f64, whole: f64) -> String {
    let filled =
        if whole > 0.0 { ((part / whole) * BAR as f64).round().clamp(0.0, BAR as f64) as usize } else { 0 };
    format!("{}{}", "█".repeat(filled), "░".repeat(BAR - filled))
}

fn percent(part: f64, whole: f64) -> String {
    if whole > 0.0 { format!("{:>3.0}%", part * 100.0 / whole) } else { "  -".to_owned() }
}

fn status_style(status: NodeStatus) -> Style {
    match status {
        NodeStatus::Ready => Style::default().fg(Color::Green),
        NodeStatus::Draining => Style::default().fg(Color::Yellow),
        NodeStatus::Down => Style::default().fg(Color::Red),
    }
}

fn nodes_table(snapshot: &Snapshot) -> Table<'_> {
    let rows = snapshot.nodes.iter().map(|node| {
        let (cpu_used, memory_used) = snapshot.used.get(&node.name).copied().unwrap_or_default();
        let cpu = node.capacity_cpu.0 as f64;
        let memory = node.capacity_memory.0 as f64;
        Row::new(vec![
            Span::raw(node.name.clone()),
            Span::styled(node.status.to_string(), status_style(node.status)),
            Span::raw(format!(
                "{} {}",
                bar(node.allocated_cpu as f64, cpu),
                percent(node.allocated_cpu as f64, cpu)
            )),
            Span::raw(format!("{} {}", bar(cpu_used, cpu), percent(cpu_used, cpu))),
            Span::raw(format!(
                "{} {}",
                bar(node.allocated_memory as f64, memory),
                percent(node.allocated_memory as f64, memory)
            )),
            Span::raw(format!("{} {}", bar(memory_used, memory), percent(memory_used, memory))),
            Span::raw(node.allocations.to_string()),
        ])
    });
    let widths = [
        Constraint::Min(12),
        Constraint::Length(8),
        Constraint::Length(BAR as u16 + 5),
        Constraint::Length(BAR as u16 + 5),
        Constraint::Length(BAR as u16 + 5),
        Constraint::Length(BAR as u16 + 5),
        Constraint::Length(6),
    ];
    Table::new(rows, widths)
        .header(
            Row::new(["node", "status", "cpu booked", "cpu used", "memory booked", "memory used", "allocs"])
                .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(Block::default().borders(Borders::ALL).title(format!(" nodes ({}) ", snapshot.nodes.len())))
}

fn workloads_table(snapshot: &Snapshot) -> Table<'_> {
    let rows = snapshot.workloads.iter().map(|workload| {
        let status = &workload.status;
        let health = if status.restarting > 0 {
            Span::styled(format!("{} restarting", status.restarting), Style::default().fg(Color::Red))
        } else if status.running == workload.spec.replicas {
            Span::styled("ok", Style::default().fg(Color::Green))
        } else {
            Span::styled("starting", Style::default().fg(Color::Yellow))
        };
        let rollout = match (&status.rollout, status.outdated) {
            (Some(rollout), outdated) if outdated > 0 => format!("{rollout}, {outdated} outdated"),
            (Some(rollout), _) => rollout.to_string(),
            (None, _) => String::new(),
        };
        let pending = match &status.unplaced_reason {
            Some(reason) if status.unplaced > 0 => format!("{} pending: {reason}", status.unplaced),
            _ => String::new(),
        };
        Row::new(vec![
            Span::raw(workload.spec.name.to_string()),
            Span::raw(format!("{}/{}", status.running, workload.spec.replicas)),
            health,
            Span::raw(format!("v{}", workload.version)),
            Span::raw(rollout),
            Span::styled(pending, Style::default().fg(Color::Red)),
        ])
    });
    let widths = [
        Constraint::Min(12),
        Constraint::Length(9),
        Constraint::Length(14),
        Constraint::Length(6),
        Constraint::Length(24),
        Constraint::Fill(1),
    ];
    Table::new(rows, widths)
        .header(
            Row::new(["workload", "running", "health", "ver", "rollout", "pending"])
                .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" workloads ({}) ", snapshot.workloads.len())),
        )
}

fn events_list(snapshot: &Snapshot, lines: usize) -> Paragraph<'_> {
    let shown = snapshot.events.iter().rev().take(lines).map(|event| {
        let subject = match (&event.workload, &event.node) {
            (Some(w), _) => format!("workload/{w}"),
            (None, Some(n)) => format!("node/{n}"),
            (None, None) => "cluster".to_owned(),
        };
        Line::from(vec![
            Span::styled(format!("{:>5} ago ", age(event.at_ms)), Style::default().fg(Color::DarkGray)),
            Span::styled(format!("{subject:<24} "), Style::default().fg(Color::Cyan)),
            Span::raw(event.message.clone()),
        ])
    });
    Paragraph::new(shown.collect::<Vec<_>>()).block(Block::default().borders(Borders::ALL).title(" events "))
}

/// Draws one frame of the view.
pub fn draw(frame: &mut Frame, snapshot: &Snapshot) {
    let [header, nodes, workloads, events] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(snapshot.nodes.len().min(12) as u16 + 3),
        Constraint::Length(snapshot.workloads.len().min(12) as u16 + 3),
        Constraint::Min(4),
    ])
    .areas(frame.area());
    let leader = snapshot.leader.map_or_else(|| "no leader".to_owned(), |l| format!("leader {l}"));
    let mut title = vec![
        Span::styled(" flotilla top ", Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(format!(" {leader} · term {} · q quits", snapshot.term)),
    ];
    if let Some(problem) = &snapshot.problem {
        title.push(Span::styled(format!("  {problem}"), Style::default().fg(Color::Red)));
    }
    frame.render_widget(Paragraph::new(Line::from(title)), header);
    frame.render_widget(nodes_table(snapshot), nodes);
    frame.render_widget(workloads_table(snapshot), workloads);
    frame.render_widget(events_list(snapshot, events.height.saturating_sub(2) as usize), events);
}

/// Each node's use: the sum of its replicas' samples (percent of their
/// requests, as the leader reports per workload) times their requests.
fn node_use(
    allocations: &[Allocation],
    replicas: &[flotilla_api::ReplicaUtilisation],
) -> HashMap<String, (f64, f64)> {
    let by_id: HashMap<u64, &Allocation> = allocations.iter().map(|a| (a.id, a)).collect();
    let mut used: HashMap<String, (f64, f64)> = HashMap::new();
    for replica in replicas {
        let Some(allocation) = by_id.get(&replica.id) else { continue };
        let entry = used.entry(allocation.node.to_string()).or_default();
        entry.0 += replica.cpu_percent / 100.0 * allocation.cpu as f64;
        entry.1 += replica.memory_percent / 100.0 * allocation.memory as f64;
    }
    used
}

/// One look at the cluster; events come from the stream, so are kept.
async fn look(client: &Client, events: Vec<Event>) -> Snapshot {
    let fetched = async {
        let status = client.server_status().await?;
        let nodes = client.nodes(false).await?;
        let workloads = client.list(false).await?;
        let allocations = client.allocations(None, None).await?;
        let mut replicas = Vec::new();
        for workload in &workloads {
            if let Ok(utilisation) = client.utilisation(workload.spec.name.as_str()).await {
                replicas.extend(utilisation.replicas);
            }
        }
        Ok::<_, flotilla_api::ClientError>((status, nodes, workloads, node_use(&allocations, &replicas)))
    };
    match fetched.await {
        Ok((status, nodes, workloads, used)) => Snapshot {
            leader: status.leader,
            term: status.term,
            nodes,
            workloads,
            used,
            events,
            problem: None,
        },
        Err(error) => Snapshot { events, problem: Some(error.to_string()), ..Snapshot::default() },
    }
}

/// Follows the event stream, resuming where it broke off: each message is
/// passed on for the view to look again.
async fn follow(client: Client, start: u64, moved: mpsc::UnboundedSender<StreamMessage>) {
    let mut from = start;
    loop {
        if let Ok(mut stream) = client.event_stream(from).await {
            while let Some(Ok(message)) = stream.next().await {
                if moved.send(message).is_err() {
                    return;
                }
            }
            from = stream.last_index().max(from);
        }
        if moved.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Reads keys on a thread of its own (crossterm's read blocks).
fn read_keys(keys: mpsc::UnboundedSender<KeyEvent>) {
    std::thread::spawn(move || {
        loop {
            match event::poll(Duration::from_millis(200)) {
                Ok(true) => {
                    if let Ok(TermEvent::Key(key)) = event::read()
                        && keys.send(key).is_err()
                    {
                        return;
                    }
                }
                Ok(false) if keys.is_closed() => return,
                Ok(false) => {}
                Err(_) => return,
            }
        }
    });
}

pub async fn top(client: &Client, _args: TopArgs) -> anyhow::Result<()> {
    let page = client.events(0, Duration::ZERO).await?;
    let mut events = page.events;
    let mut snapshot = look(client, events.clone()).await;
    let (moved_tx, mut moved) = mpsc::unbounded_channel();
    let follower = tokio::spawn(follow(client.clone(), page.index, moved_tx));
    let (keys_tx, mut keys) = mpsc::unbounded_channel();
    let mut terminal = ratatui::try_init()?;
    read_keys(keys_tx);
    let mut stale = false;
    let mut refresh = tokio::time::interval(REFRESH_EVERY);
    let result = loop {
        if let Err(error) = terminal.draw(|frame| draw(frame, &snapshot)) {
            break Err(error.into());
        }
        tokio::select! {
            key = keys.recv() => match key.map(action_of) {
                Some(Action::Quit) | None => break Ok(()),
                Some(Action::Nothing) => {}
            },
            message = moved.recv() => {
                if let Some(StreamMessage::Event(event)) = message {
                    events.push(event);
                    let excess = events.len().saturating_sub(EVENTS_KEPT);
                    events.drain(..excess);
                }
                stale = true;
            }
            _ = refresh.tick() => {
                if stale {
                    stale = false;
                    snapshot = look(client, events.clone()).await;
                }
            }
        }
    };
    follower.abort();
    ratatui::try_restore()?;
    result
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use flotilla_api::{CpuMillis, MemoryBytes, WorkloadStatus, parse_yaml};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;

    fn node(name: &str, status: NodeStatus, allocated_cpu: u64) -> Node {
        Node {
            name: name.into(),
            address: String::new(),
            capacity_cpu: CpuMillis(2000),
            capacity_memory: MemoryBytes(4 << 30),
            labels: BTreeMap::new(),
            drivers: BTreeSet::new(),
            host_volumes: BTreeMap::new(),
            status,
            allocated_cpu,
            allocated_memory: 1 << 30,
            allocations: 2,
            ready_index: 0,
            recent_downs_ms: Vec::new(),
            eligible_at_ms: 0,
            unserved_ports: Vec::new(),
            report_seq: 0,
        }
    }

    fn snapshot() -> Snapshot {
        let spec = parse_yaml("name: web\nimage: x\nreplicas: 3\n").expect("spec");
        let workload = Workload {
            spec,
            version: 2,
            created_index: 1,
            modified_index: 1,
            status: WorkloadStatus {
                placed: 3,
                running: 2,
                unplaced: 1,
                unplaced_reason: Some("no room".into()),
                ..Default::default()
            },
        };
        Snapshot {
            leader: Some(2),
            term: 7,
            nodes: vec![node("alpha", NodeStatus::Ready, 1000), node("beta", NodeStatus::Draining, 0)],
            workloads: vec![workload],
            used: HashMap::from([("alpha".to_owned(), (500.0, 0.0))]),
            events: vec![Event {
                index: 9,
                at_ms: 0,
                workload: Some("web".into()),
                node: None,
                message: "deployed version 2".into(),
            }],
            problem: None,
        }
    }

    fn screen(snapshot: &Snapshot) -> String {
        let mut terminal = Terminal::new(TestBackend::new(140, 30)).expect("a test terminal");
        terminal.draw(|frame| draw(frame, snapshot)).expect("drawn");
        let buffer = terminal.backend().buffer().clone();
        let width = buffer.area.width as usize;
        buffer
            .content
            .chunks(width)
            .map(|row| row.iter().map(|c| c.symbol()).collect::<String>() + "\n")
            .collect()
    }

    #[test]
    fn the_view_shows_nodes_with_their_bars_workloads_and_events() {
        let text = screen(&snapshot());
        assert!(text.contains("leader 2 · term 7"), "{text}");
        let alpha = text.lines().find(|l| l.contains("alpha")).expect("a row for alpha");
        assert!(alpha.contains("ready"));
        assert!(
            alpha.contains(&format!("{}{}  50%", "█".repeat(8), "░".repeat(8))),
            "half the CPU booked: {alpha}"
        );
        assert!(
            alpha.contains(&format!("{}{}  25%", "█".repeat(4), "░".repeat(12))),
            "a quarter used: {alpha}"
        );
        assert!(text.lines().any(|l| l.contains("beta") && l.contains("draining")));
        let web = text.lines().find(|l| l.contains("web ") && l.contains("2/3")).expect("a row for web");
        assert!(web.contains("1 pending: no room"), "{web}");
        assert!(text.contains("workload/web") && text.contains("deployed version 2"));
    }

    #[test]
    fn a_failed_look_says_why_on_the_header() {
        let failed = Snapshot { problem: Some("no flotilla server answered".into()), ..Snapshot::default() };
        assert!(screen(&failed).contains("no flotilla server answered"));
    }

    #[test]
    fn q_escape_and_control_c_quit_and_other_keys_do_not() {
        let press = |code, modifiers| KeyEvent::new(code, modifiers);
        assert_eq!(action_of(press(KeyCode::Char('q'), KeyModifiers::NONE)), Action::Quit);
        assert_eq!(action_of(press(KeyCode::Esc, KeyModifiers::NONE)), Action::Quit);
        assert_eq!(action_of(press(KeyCode::Char('c'), KeyModifiers::CONTROL)), Action::Quit);
        assert_eq!(action_of(press(KeyCode::Char('c'), KeyModifiers::NONE)), Action::Nothing);
    }

    #[test]
    fn node_use_adds_up_each_replicas_share_of_its_request() {
        let allocation = |id: u64, node: &str| -> Allocation {
            serde_json::from_value(serde_json::json!({
                "id": id, "workload": "web", "replica": 0, "node": node, "version": 1, "cpu": 200, "memory": 100,
                "ports": [], "state": "running", "created_index": 1, "modified_index": 1, "created_at_ms": 0,
                "restarts": 0,
            }))
            .expect("an allocation")
        };
        let replica = |id, cpu_percent| flotilla_api::ReplicaUtilisation {
            id,
            replica: 0,
            cpu_percent,
            memory_percent: 50.0,
        };
        let used = node_use(
            &[allocation(1, "a"), allocation(2, "a"), allocation(3, "b")],
            &[replica(1, 50.0), replica(2, 100.0), replica(9, 10.0)],
        );
        assert_eq!(used.get("a"), Some(&(300.0, 100.0)));
        assert_eq!(used.get("b"), None, "no sample, no use");
    }
}
