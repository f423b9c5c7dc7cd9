//! The control plane under faults: elections, replication, kill -9,
//! restarts, snapshots, membership, partitions and a corrupted data file,
//! all against real server processes.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_api::{Client, RaftRole, WorkloadSpec, parse_yaml};
use flotilla_tests::{ClusterOptions, TestCluster, wait_until};

fn spec(name: &str) -> WorkloadSpec {
    parse_yaml(&format!("name: {name}\nimage: busybox\nreplicas: 2\n")).expect("valid spec")
}

async fn names_on(client: &Client, stale: bool) -> Option<BTreeSet<String>> {
    let workloads = client.list(stale).await.ok()?;
    Some(workloads.into_iter().map(|w| w.spec.name.to_string()).collect())
}

/// Waits until server `id` has applied exactly `expected` (read locally, no barrier).
async fn wait_for_names(cluster: &TestCluster, id: u64, expected: &BTreeSet<String>, timeout: Duration) {
    let client = cluster.client_of(id);
    wait_until(timeout, &format!("server {id} to hold {} workloads", expected.len()), || async {
        (names_on(&client, true).await.as_ref() == Some(expected)).then_some(())
    })
    .await;
}

async fn write_many(client: &Client, prefix: &str, count: usize, concurrency: usize) -> BTreeSet<String> {
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    let chunks: Vec<Vec<String>> = names.chunks(count.div_ceil(concurrency)).map(|c| c.to_vec()).collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for name in chunk {
                client.deploy(&spec(&name), None).await.expect("write acknowledged");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    names.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_servers_elect_one_leader() {
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let mut leaders = 0;
    for id in 1..=3 {
        let status = cluster.status_of(id).await.expect("server answers");
        assert_eq!(status.leader, Some(leader), "server {id} names another leader");
        if status.role == RaftRole::Leader {
            leaders += 1;
        }
        assert_eq!(status.members.len(), 3);
    }
    assert_eq!(leaders, 1, "exactly one server is leader");
    let metrics = cluster
        .authorize(cluster.http().get(cluster.url(leader, "/metrics")))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    assert!(metrics.contains("\nflotilla_raft_leader 1\n"), "{metrics}");
    assert!(metrics.contains("# TYPE flotilla_raft_term gauge"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_sent_to_a_follower_is_applied_on_all_three() {
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let result = cluster
        .client_of(follower)
        .deploy(&spec("via-follower"), None)
        .await
        .expect("write through follower");
    assert_eq!(result.workload.version, 1);
    let expected: BTreeSet<String> = ["via-follower".to_owned()].into();
    for id in 1..=3 {
        wait_for_names(&cluster, id, &expected, Duration::from_secs(5)).await;
    }
    // A linearizable read on the follower sees it at once.
    let got = cluster.client_of(follower).get("via-follower").await.expect("read on follower");
    assert_eq!(got.spec.replicas, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_leader_elects_another_and_loses_no_acknowledged_write() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    let client = cluster.client();
    let written = write_many(&client, "before", 50, 4).await;
    let old_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    cluster.server(old_leader).kill();
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, old_leader);
    let after = write_many(&client, "after", 10, 2).await;
    let expected: BTreeSet<String> = written.union(&after).cloned().collect();
    assert_eq!(names_on(&client, false).await.expect("linearizable list"), expected);
    cluster.server(old_leader).start();
    wait_for_names(&cluster, old_leader, &expected, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn all_three_restarted_from_their_data_dirs_hold_identical_state() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    let client = cluster.client();
    let written = write_many(&client, "durable", 40, 4).await;
    client.scale("durable-7", 9).await.expect("scale");
    client.delete("durable-3").await.expect("delete");
    for id in 1..=3 {
        cluster.server(id).kill();
    }
    for id in 1..=3 {
        cluster.server(id).start();
    }
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let mut expected = written.clone();
    expected.remove("durable-3");
    let mut states = Vec::new();
    for id in 1..=3 {
        wait_for_names(&cluster, id, &expected, Duration::from_secs(10)).await;
        // The stored fields; the replicas' status is derived and moves on its own.
        let list = cluster.client_of(id).list(true).await.expect("list");
        states.push(
            list.into_iter()
                .map(|w| (w.spec, w.version, w.created_index, w.modified_index))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(states[0], states[1]);
    assert_eq!(states[1], states[2]);
    let scaled = states[0].iter().find(|w| w.0.name.as_str() == "durable-7").expect("durable-7");
    assert_eq!(scaled.0.replicas, 9);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_stopped_during_2000_writes_catches_up_through_a_snapshot() {
    let cluster = catch_up_through_a_snapshot(Vec::new()).await;
    assert!(!cluster.logs().contains("sent a snapshot in chunks"), "a small snapshot goes in one request");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_bigger_than_a_peer_request_arrives_in_chunks() {
    let cluster = catch_up_through_a_snapshot(vec!["--raft-chunk-bytes".into(), "4096".into()]).await;
    assert!(cluster.logs().contains("sent a snapshot in chunks"), "the leader cut the snapshot into chunks");
}

/// Stops a follower, writes 2000 workloads (the leader compacts its log),
/// starts the follower again and waits until it has every write, which it
/// can only get from a snapshot.
async fn catch_up_through_a_snapshot(server_args: Vec<String>) -> TestCluster {
    let mut cluster = TestCluster::start(ClusterOptions {
        servers: 3,
        snapshot_every: 200,
        server_args,
        ..ClusterOptions::default()
    })
    .await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.server(follower).stop();
    let client = cluster.client();
    let written = write_many(&client, "lag", 2000, 32).await;
    let leader_status = cluster.status_of(leader).await.expect("leader status");
    assert!(leader_status.first_index > 1000, "the leader compacted its log: {leader_status:?}");
    cluster.server(follower).start();
    wait_for_names(&cluster, follower, &written, Duration::from_secs(30)).await;
    assert!(
        cluster.server(follower).log_text().contains("installed snapshot from leader"),
        "the follower caught up through a snapshot"
    );
    cluster
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fourth_server_joins_and_a_member_is_removed() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    let client = cluster.client();
    let written = write_many(&client, "member", 20, 2).await;
    cluster.add_joining_server(4);
    wait_until(Duration::from_secs(20), "server 4 to become a voter", || async {
        let status = client.server_status().await.ok()?;
        status.members.iter().any(|m| m.id == 4 && m.voter).then_some(())
    })
    .await;
    wait_for_names(&cluster, 4, &written, Duration::from_secs(10)).await;

    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    // Remove the leader itself: it hands leadership over first.
    client.remove_member(leader).await.expect("remove the leader");
    let status = wait_until(Duration::from_secs(10), "the removal to apply", || async {
        let status = client.server_status().await.ok()?;
        (status.members.len() == 3 && !status.members.iter().any(|m| m.id == leader)).then_some(status)
    })
    .await;
    assert!(status.members.iter().all(|m| m.voter));
    cluster.server(leader).kill();
    let more = write_many(&client, "after-removal", 5, 1).await;
    let expected: BTreeSet<String> = written.union(&more).cloned().collect();
    assert_eq!(names_on(&client, false).await.expect("list"), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_leader_stops_acknowledging_writes() {
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let old_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let others = cluster.partition(old_leader).await;
    let minority = cluster.client_of(old_leader);
    let refused = minority.deploy(&spec("minority-write"), None).await;
    assert!(refused.is_err(), "a leader cut off from the majority must not acknowledge: {refused:?}");

    let majority = cluster
        .client_for(others.iter().map(|id| cluster.address(*id)), cluster.admin_token())
        .with_retry_for(Duration::from_secs(10));
    majority.deploy(&spec("majority-write"), None).await.expect("the majority elects a leader and commits");

    cluster.heal().await;
    let expected: BTreeSet<String> = ["majority-write".to_owned()].into();
    for id in 1..=3 {
        wait_for_names(&cluster, id, &expected, Duration::from_secs(10)).await;
    }
}

/// A reader that keeps the leader's state for four election timeouts (a
/// list of every workload at a million allocations took a second) holds
/// back that server's applies, and so the answer to a write, but not the
/// Raft loop: its heartbeats go on and no follower starts an election.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_reader_of_the_state_delays_the_leaders_answers_but_costs_no_election() {
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let client = cluster.client_of(leader);
    client.deploy(&spec("before-the-hold"), None).await.expect("a write before the hold");
    let term = cluster.status_of(leader).await.expect("the leader answers").term;

    cluster.hold_state(leader, Duration::from_secs(3)).await;
    let during = cluster.status_of(leader).await.expect("the Raft loop answers while the state is held");
    client.deploy(&spec("during-the-hold"), None).await.expect("a write during the hold is acknowledged");

    let after = cluster.status_of(leader).await.expect("the leader answers");
    assert_eq!((during.term, after.term), (term, term), "no election while the state was held");
    assert_eq!(after.role, RaftRole::Leader, "the server that held its state still leads");
    let expected: BTreeSet<String> = ["before-the-hold", "during-the-hold"].map(str::to_owned).into();
    for id in 1..=3 {
        wait_for_names(&cluster, id, &expected, Duration::from_secs(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_during_heavy_writes_restarts_with_every_acknowledged_write() {
    let mut cluster =
        TestCluster::start(ClusterOptions { servers: 3, snapshot_every: 300, ..ClusterOptions::default() })
            .await;
    let client = cluster.client();
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..16 {
        let (client, acknowledged, stop) = (client.clone(), Arc::clone(&acknowledged), Arc::clone(&stop));
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("heavy-{writer}-{i}");
                if client.deploy(&spec(&name), None).await.is_ok() {
                    acknowledged.lock().expect("lock").insert(name);
                }
                i += 1;
            }
        }));
    }
    wait_until(Duration::from_secs(30), "writes to pile up", || async {
        (acknowledged.lock().expect("lock").len() >= 300).then_some(())
    })
    .await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    cluster.server(leader).kill();
    wait_until(Duration::from_secs(30), "writes to continue under a new leader", || async {
        (acknowledged.lock().expect("lock").len() >= 600).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    cluster.server(leader).start();
    let acknowledged = acknowledged.lock().expect("lock").clone();
    let stored = names_on(&client, false).await.expect("list");
    assert!(
        acknowledged.is_subset(&stored),
        "lost: {:?}",
        acknowledged.difference(&stored).take(5).collect::<Vec<_>>()
    );
    wait_for_names(&cluster, leader, &stored, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_data_file_is_refused_and_the_member_replaced() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    let client = cluster.client();
    client.deploy(&spec("corruption-marker"), None).await.expect("write");
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let victim = (1..=3).find(|id| *id != leader).expect("a follower");
    let expected: BTreeSet<String> = ["corruption-marker".to_owned()].into();
    wait_for_names(&cluster, victim, &expected, Duration::from_secs(5)).await;
    cluster.server(victim).stop();

    // The write is in the log's segments (no snapshot has been taken).
    let segments = cluster.server(victim).data_dir.join("raft-log");
    let marker = b"corruption-marker";
    let mut flipped = 0;
    for item in std::fs::read_dir(&segments).expect("the log's segments") {
        let file = item.expect("a segment").path();
        let mut bytes = std::fs::read(&file).expect("segment");
        for at in 0..bytes.len().saturating_sub(marker.len()) {
            if &bytes[at..at + marker.len()] == marker {
                bytes[at + 4] ^= 0x5A;
                flipped += 1;
            }
        }
        std::fs::write(&file, bytes).expect("write corrupted segment");
    }
    assert!(flipped > 0, "the marker is on disk");

    cluster.server(victim).start();
    let status =
        cluster.server(victim).wait_for_exit(Duration::from_secs(10)).expect("the server refuses to start");
    assert!(!status.success());
    let log = cluster.server(victim).log_text();
    assert!(log.contains("raft-log/") && log.contains("corrupted"), "clear error naming the file:\n{log}");
    assert!(!log.contains("panicked"), "no panic:\n{log}");

    // The others keep serving.
    client.deploy(&spec("while-broken"), None).await.expect("majority still serves");

    // Replace the member: remove it, wipe its data dir, add it back.
    client.remove_member(victim).await.expect("remove broken member");
    std::fs::remove_dir_all(&cluster.server(victim).data_dir).expect("wipe");
    let seed = cluster.address(leader);
    let server = cluster.server(victim);
    server.set_args(vec!["--join".to_owned(), seed]);
    server.start();
    wait_until(Duration::from_secs(20), "the replaced member to become a voter", || async {
        let status = client.server_status().await.ok()?;
        status.members.iter().any(|m| m.id == victim && m.voter).then_some(())
    })
    .await;
    let expected: BTreeSet<String> = ["corruption-marker".to_owned(), "while-broken".to_owned()].into();
    wait_for_names(&cluster, victim, &expected, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_learner_added_while_64_clients_write_is_promoted_within_seconds() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    let client = cluster.client();
    let writers = 64;
    for i in 0..writers {
        let spec = parse_yaml(&format!("name: load-{i}\nimage: busybox\nreplicas: 0\n")).expect("spec");
        client.deploy(&spec, None).await.expect("deploy");
    }
    // Each writer scales its own workload (to 0: no placement work), as fast
    // as it is acknowledged, until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tasks: Vec<_> = (0..writers)
        .map(|i| {
            let (client, stop, written) = (client.clone(), Arc::clone(&stop), Arc::clone(&written));
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if client.scale(&format!("load-{i}"), 0).await.is_ok() {
                        written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = written.load(std::sync::atomic::Ordering::Relaxed);
    cluster.add_joining_server(4);
    wait_until(Duration::from_secs(10), "server 4 promoted to voter under load", || async {
        let status = client.server_status().await.ok()?;
        status.members.iter().any(|m| m.id == 4 && m.voter).then_some(())
    })
    .await;
    let during = written.load(std::sync::atomic::Ordering::Relaxed) - before;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in tasks {
        task.await.expect("writer");
    }
    assert!(during > 100, "the writers kept writing while the learner caught up ({during} writes)");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_concurrent_membership_change_is_refused_at_once_and_reads_follow_an_election_promptly() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    let client = cluster.client();
    // Server 4 is never started: its learner entry commits, but it never
    // catches up, so the change stays in progress from the leader's view
    // only until it applies; a second change right behind it is refused.
    let first = {
        let client = client.clone();
        tokio::spawn(async move { client.add_member(4, "127.0.0.1:1").await })
    };
    let second = client.add_member(5, "127.0.0.1:2").await;
    let first = first.await.expect("task");
    let refused =
        [&first, &second].iter().filter(|r| r.as_ref().is_err_and(|e| e.code() == Some("conflict"))).count();
    let accepted = [&first, &second].iter().filter(|r| r.is_ok()).count();
    assert!(accepted >= 1, "{first:?} {second:?}");
    assert!(refused + accepted == 2, "a refusal is a 409, never a timeout: {first:?} {second:?}");
    for id in [4, 5] {
        let _ = client.remove_member(id).await;
    }

    // Reads keep coming at every survivor while the leader is killed: each
    // is answered, or refused at once (no leader, leader changed), and none
    // is left to time out while the new leader commits its first entry.
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let survivors: Vec<u64> = cluster.servers.iter().map(|s| s.id).filter(|id| *id != leader).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = survivors
        .iter()
        .map(|id| {
            let (client, stop) = (cluster.client_of(*id), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut outcomes: Vec<Option<String>> = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let answer = client.list(false).await;
                    outcomes.push(answer.err().map(|e| e.code().unwrap_or("unreachable").to_owned()));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                outcomes
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.server(leader).kill();
    cluster.wait_for_leader(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for reader in readers {
        outcomes.extend(reader.await.expect("reader"));
    }
    assert!(outcomes.iter().any(Option::is_none), "reads were answered");
    let timed_out = outcomes.iter().filter(|o| o.as_deref() == Some("timeout")).count();
    assert_eq!(timed_out, 0, "no read waited out its timeout: {outcomes:?}");
    let last = client.list(false).await;
    assert!(last.is_ok(), "{last:?}");
}

/// The log is compacted by size as well as by length: with a snapshot due
/// only every 100,000 entries but at 64 KiB of log, a few hundred writes
/// take snapshots, and what the log keeps stays within half of that.
#[tokio::test(flavor = "multi_thread")]
async fn the_log_is_compacted_once_it_grows_past_its_size_bound() {
    let options = ClusterOptions {
        snapshot_every: 100_000,
        server_args: vec!["--snapshot-bytes".into(), "64Ki".into()],
        insecure: true,
        ..ClusterOptions::default()
    };
    let cluster = TestCluster::start(options).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let written = write_many(&cluster.client(), "sized", 400, 8).await;
    assert_eq!(written.len(), 400);
    let status = cluster.status_of(leader).await.expect("the leader answers");
    assert!(status.snapshot_index > 1, "a snapshot was taken for size: {status:?}");
    assert!(status.first_index > 1, "the log was compacted: {status:?}");
    let kept = status.last_index - status.first_index + 1;
    assert!(kept < 400, "the log keeps a tail within the bound, not every write: {kept} entries, {status:?}");
    wait_for_names(&cluster, leader, &written, Duration::from_secs(10)).await;
}

/// Snapshots are written by a thread of their own to a file beside the
/// Raft log while writes go on: each server keeps one finished file (older
/// ones removed), it holds the state, and all three restart from theirs.
#[tokio::test(flavor = "multi_thread")]
async fn snapshots_go_to_files_of_their_own_and_every_server_restarts_from_its_file() {
    let options = ClusterOptions { snapshot_every: 50, insecure: true, ..ClusterOptions::default() };
    let mut cluster = TestCluster::start(options).await;
    cluster.wait_for_leader(Duration::from_secs(10)).await;
    let written = write_many(&cluster.client(), "filed", 300, 8).await;
    for id in 1..=3 {
        let dir = cluster.server(id).data_dir.join("snapshots");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
                .map(|entries| entries.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            let finished: Vec<_> =
                files.iter().filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
            let status = cluster.status_of(id).await;
            let snapshot_index = status.as_ref().map_or(0, |s| s.snapshot_index);
            if let [file] = finished.as_slice()
                && snapshot_index > 250
            {
                let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                assert!(
                    name.ends_with(&format!("{snapshot_index:020}.json")),
                    "{name} is snapshot {snapshot_index}"
                );
                match std::fs::read_to_string(file) {
                    Ok(data) => {
                        assert!(data.contains("\"filed-"), "the file holds the state's workloads");
                        break;
                    }
                    // A newer snapshot replaced it between the listing and
                    // the read: look again.
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => panic!("snapshot file {}: {error}", file.display()),
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server {id} keeps one snapshot file of a recent index: {files:?}, {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for id in 1..=3 {
        cluster.server(id).kill();
    }
    for id in 1..=3 {
        cluster.server(id).start();
    }
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    for id in 1..=3 {
        wait_for_names(&cluster, id, &written, Duration::from_secs(10)).await;
    }
}

/// A client stays with the server that answered it, clones included, and
/// moves on only when that server stops answering: an agent's calls share
/// one connection, and ten thousand agents (each starting at a random
/// server) spread over the servers instead of crowding the first address.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_and_its_clones_stay_with_the_server_that_answered_until_it_stops() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let client = cluster.client();
    let answered_by = |client: Client| async move { client.server_status().await.expect("status").id };
    let first = answered_by(client.clone()).await;
    for _ in 0..10 {
        assert_eq!(answered_by(client.clone()).await, first, "a clone went to another server");
    }

    cluster.server(first).kill();
    let second = answered_by(client.clone()).await;
    assert_ne!(second, first);
    for _ in 0..10 {
        assert_eq!(answered_by(client.clone()).await, second, "moved on from a server that answers");
    }

    // New clients start at random servers: of twenty, not all at one.
    let addresses: Vec<String> = cluster.servers.iter().map(|s| s.address.clone()).collect();
    cluster.server(first).start();
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let mut firsts = BTreeSet::new();
    for _ in 0..20 {
        let fresh = cluster.client().with_retry_for(Duration::from_secs(10));
        firsts.insert(answered_by(fresh).await);
    }
    assert!(firsts.len() > 1, "twenty new clients all went to server {firsts:?} of {addresses:?}");
}
