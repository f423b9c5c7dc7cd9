//! Delay with jitter for what a member sends its peers. The kernels this
//! runs on may lack the `netem` qdisc, so the member's outgoing packets to
//! its peers are handed to this process through an iptables `NFQUEUE` rule
//! in its namespace and let go (accepted) only once their delay is over: a
//! real per-packet delay on the kernel's path, reordering packets as
//! netem's jitter does. The rule has `--queue-bypass`, so packets flow
//! undelayed if this process is gone.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flotilla_scheduler::placement::SplitMix64;

/// How often new packets are picked up while none is due: a packet is
/// stamped at most this late.
const POLL: Duration = Duration::from_millis(1);

/// How many packets the kernel holds for this process before it lets
/// further ones through undelayed (fail-open) rather than dropping them.
const QUEUE_LENGTH: u32 = 16_384;

#[derive(Debug, thiserror::Error)]
pub enum DelayError {
    #[error("cannot open the netfilter queue {queue}: {source}")]
    Open { queue: u16, source: std::io::Error },
    #[error("the netfilter queue {queue} failed: {source}")]
    Queue { queue: u16, source: std::io::Error },
}

/// What to hold packets back by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delay {
    pub delay: Duration,
    /// Each packet's delay is drawn evenly from `delay ± jitter`.
    pub jitter: Duration,
}

impl Delay {
    fn draw(&self, random: &mut SplitMix64) -> Duration {
        let jitter = self.jitter.as_micros() as u64;
        let offset = random.below(2 * jitter + 1);
        (self.delay + Duration::from_micros(offset)).saturating_sub(self.jitter)
    }
}

/// A packet held back, ordered by when it is due (then by arrival).
struct Held {
    due: Instant,
    arrival: u64,
    message: nfq::Message,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.arrival) == (other.due, other.arrival)
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.arrival).cmp(&(other.due, other.arrival))
    }
}

/// Binds netfilter queue `queue` in this process's network namespace and
/// delays every packet it is given until `stop` is set; then lets every
/// held packet go. `bound` is called once the queue is bound, so the
/// caller can tell whoever started it that the rules may be added.
pub fn serve(
    queue_number: u16,
    delay: Delay,
    seed: u64,
    stop: &AtomicBool,
    bound: impl FnOnce(),
) -> Result<(), DelayError> {
    let open = |source| DelayError::Open { queue: queue_number, source };
    let mut queue = nfq::Queue::open().map_err(open)?;
    queue.bind(queue_number).map_err(open)?;
    // Only the packet's id is needed, not its bytes.
    queue.set_copy_range(queue_number, 0).map_err(open)?;
    queue.set_queue_max_len(queue_number, QUEUE_LENGTH).map_err(open)?;
    queue.set_fail_open(queue_number, true).map_err(open)?;
    queue.set_nonblocking(true);
    bound();
    let failed = |source| DelayError::Queue { queue: queue_number, source };
    let mut random = SplitMix64::new(seed);
    let mut held = BinaryHeap::new();
    let mut arrivals = 0u64;
    while !stop.load(Ordering::Relaxed) {
        loop {
            match queue.recv() {
                Ok(mut message) => {
                    message.set_verdict(nfq::Verdict::Accept);
                    arrivals += 1;
                    let due = Instant::now() + delay.draw(&mut random);
                    held.push(Reverse(Held { due, arrival: arrivals, message }));
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(failed(error)),
            }
        }
        let now = Instant::now();
        while held.peek().is_some_and(|Reverse(next)| next.due <= now) {
            if let Some(Reverse(next)) = held.pop() {
                queue.verdict(next.message).map_err(failed)?;
            }
        }
        let wait =
            held.peek().map_or(POLL, |Reverse(next)| next.due.saturating_duration_since(now).min(POLL));
        std::thread::sleep(wait);
    }
    while let Some(Reverse(next)) = held.pop() {
        queue.verdict(next.message).map_err(failed)?;
    }
    Ok(())
}

/// `flotilla delay-link`: started by [`super::network::Network::delay`]
/// inside a member's namespace; says `bound` on stdout once its queue is
/// bound, and lets every held packet go when asked to stop (SIGTERM).
#[derive(Debug, clap::Args)]
pub struct DelayLinkArgs {
    #[arg(long)]
    queue: u16,
    #[arg(long)]
    delay_us: u64,
    #[arg(long, default_value_t = 0)]
    jitter_us: u64,
}

pub async fn delay_link(args: DelayLinkArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let delay =
        Delay { delay: Duration::from_micros(args.delay_us), jitter: Duration::from_micros(args.jitter_us) };
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    let mut serving = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            serve(args.queue, delay, seed, &stop, || {
                use std::io::Write as _;
                let mut stdout = std::io::stdout();
                let _ = writeln!(stdout, "bound").and_then(|()| stdout.flush());
            })
        })
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
        // It stopped on its own: only a failure does that.
        served = &mut serving => return Ok(served??),
    }
    stop.store(true, Ordering::Relaxed);
    Ok(serving.await??)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_drawn_evenly_within_the_jitter() {
        let delay = Delay { delay: Duration::from_millis(100), jitter: Duration::from_millis(40) };
        let mut random = SplitMix64::new(7);
        let draws: Vec<Duration> = (0..10_000).map(|_| delay.draw(&mut random)).collect();
        assert!(draws.iter().all(|d| *d >= Duration::from_millis(60) && *d <= Duration::from_millis(140)));
        let low = draws.iter().filter(|d| **d < Duration::from_millis(100)).count();
        assert!((4_500..5_500).contains(&low), "{low} of 10000 below the mean");
        let mean = draws.iter().sum::<Duration>() / draws.len() as u32;
        assert!(mean.abs_diff(Duration::from_millis(100)) < Duration::from_millis(2), "mean {mean:?}");
    }

    #[test]
    fn no_jitter_is_the_delay_itself_and_jitter_beyond_it_stops_at_zero() {
        let mut random = SplitMix64::new(1);
        let fixed = Delay { delay: Duration::from_millis(200), jitter: Duration::ZERO };
        assert!((0..100).all(|_| fixed.draw(&mut random) == Duration::from_millis(200)));
        let wide = Delay { delay: Duration::from_millis(10), jitter: Duration::from_millis(50) };
        let draws: Vec<Duration> = (0..1_000).map(|_| wide.draw(&mut random)).collect();
        assert!(draws.contains(&Duration::ZERO));
        assert!(draws.iter().all(|d| *d <= Duration::from_millis(60)));
    }
}
