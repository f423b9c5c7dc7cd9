//! Linearizable reads (ReadIndex): a read waits until the leader confirms
//! it still leads and names the commit index of that moment, then until
//! this server has applied up to it.
//!
//! Reads asked for in one turn of the Raft loop share one read index: the
//! leader's confirmation costs a heartbeat round to a majority, and ten
//! thousand agents answered at once would otherwise cost ten thousand.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::error::RaftError;
use super::pending::Reply;

/// How long a read index request goes unanswered before it is asked again.
const READ_AGAIN_AFTER: Duration = Duration::from_millis(100);

/// Reads that share one read index request.
struct Group {
    replies: Vec<Reply<()>>,
    /// The earliest of its reads' deadlines (they were asked for within
    /// one turn of the loop, so they differ by microseconds).
    deadline: Instant,
    /// When its read index was last asked for, to ask again.
    asked_at: Instant,
}

impl Group {
    fn answer(self, result: &Result<(), RaftError>) {
        for reply in self.replies {
            let _ = reply.send(result.clone());
        }
    }
}

/// Reads waiting on the Raft thread.
#[derive(Default)]
pub(super) struct Reads {
    /// Asked for during this turn of the loop, not yet asked of Raft.
    forming: Vec<(Reply<()>, Instant)>,
    /// Waiting for the leader to confirm their read index, by request id.
    unconfirmed: HashMap<u64, Group>,
    /// With a confirmed index, waiting for this server to apply it.
    confirmed: Vec<(u64, Group)>,
}

impl Reads {
    /// A read waits to join the next group.
    pub(super) fn wait(&mut self, reply: Reply<()>, deadline: Instant) {
        self.forming.push((reply, deadline));
    }

    /// Whether reads wait to form a group.
    pub(super) fn forming(&self) -> bool {
        !self.forming.is_empty()
    }

    /// Makes the reads asked for since the last call one group under
    /// request `id`; true when there were any, and Raft is to be asked.
    pub(super) fn form_group(&mut self, id: u64, now: Instant) -> bool {
        let Some(deadline) = self.forming.iter().map(|(_, deadline)| *deadline).min() else {
            return false;
        };
        let replies = self.forming.drain(..).map(|(reply, _)| reply).collect();
        self.unconfirmed.insert(id, Group { replies, deadline, asked_at: now });
        true
    }

    /// The leader named `index` for request `id`.
    pub(super) fn confirm(&mut self, id: u64, index: u64) {
        if let Some(group) = self.unconfirmed.remove(&id) {
            self.confirmed.push((index, group));
        }
    }

    /// Answers every read whose index this server has applied.
    pub(super) fn answer_applied(&mut self, applied: u64) {
        if self.confirmed.iter().all(|(index, _)| *index > applied) {
            return;
        }
        let (done, waiting) =
            std::mem::take(&mut self.confirmed).into_iter().partition(|(i, _)| *i <= applied);
        self.confirmed = waiting;
        for (_, group) in done {
            group.answer(&Ok(()));
        }
    }

    /// Fails every read past its deadline.
    pub(super) fn expire(&mut self, now: Instant, error: &RaftError) {
        let late: Vec<u64> =
            self.unconfirmed.iter().filter(|(_, group)| group.deadline <= now).map(|(id, _)| *id).collect();
        for id in late {
            if let Some(group) = self.unconfirmed.remove(&id) {
                group.answer(&Err(error.clone()));
            }
        }
        if self.confirmed.iter().any(|(_, group)| group.deadline <= now) {
            let (late, waiting) =
                std::mem::take(&mut self.confirmed).into_iter().partition(|(_, group)| group.deadline <= now);
            self.confirmed = waiting;
            for (_, group) in late {
                group.answer(&Err(error.clone()));
            }
        }
    }

    /// raft-rs drops a read index request that reaches a leader before it
    /// has committed an entry of its term (right after an election), and
    /// one lost with a message: the requests still unconfirmed after a
    /// while, to ask again, so that their reads wait for the first commit,
    /// not for their timeout.
    pub(super) fn due_again(&mut self, now: Instant) -> Vec<u64> {
        let mut again = Vec::new();
        for (id, group) in &mut self.unconfirmed {
            if now.duration_since(group.asked_at) >= READ_AGAIN_AFTER {
                group.asked_at = now;
                again.push(*id);
            }
        }
        again
    }

    /// Fails the reads no leader has confirmed (the leader changed).
    pub(super) fn fail_unconfirmed(&mut self, error: &RaftError) {
        for (_, group) in self.unconfirmed.drain() {
            group.answer(&Err(error.clone()));
        }
    }

    pub(super) fn fail_all(&mut self, error: &RaftError) {
        self.fail_unconfirmed(error);
        for (_, group) in std::mem::take(&mut self.confirmed) {
            group.answer(&Err(error.clone()));
        }
        for (reply, _) in self.forming.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;

    type Answer = oneshot::Receiver<Result<(), RaftError>>;

    fn read(reads: &mut Reads, deadline: Instant) -> Answer {
        let (reply, answer) = oneshot::channel();
        reads.wait(reply, deadline);
        answer
    }

    /// What a read's caller has been told so far.
    fn told(answer: &mut Answer) -> Option<Result<(), RaftError>> {
        answer.try_recv().ok()
    }

    #[test]
    fn reads_of_one_turn_share_one_request_and_are_answered_once_applied() {
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        let mut reads = Reads::default();
        assert!(!reads.form_group(1, now), "no reads, nothing to ask");
        let mut answers: Vec<Answer> = (0..3).map(|_| read(&mut reads, later)).collect();
        assert!(reads.form_group(7, now));
        assert!(!reads.form_group(8, now), "the three went into one group");
        reads.confirm(7, 40);
        reads.answer_applied(39);
        assert!(answers.iter_mut().all(|a| told(a).is_none()), "index 40 is not applied yet");
        reads.answer_applied(40);
        assert!(answers.iter_mut().all(|a| matches!(told(a), Some(Ok(())))));
    }

    #[test]
    fn each_way_a_read_can_end() {
        /// What the read's caller is told: answered, failed, or nothing yet.
        #[derive(Debug, PartialEq)]
        enum Told {
            Answered,
            Failed,
            Nothing,
        }
        let now = Instant::now();
        /// What happens to a read's group after it was asked for.
        type Happening = fn(&mut Reads, Instant);
        let cases: [(&str, bool, Happening, Told); 6] = [
            ("confirmed at 5, 5 applied", true, |r, _| r.answer_applied(5), Told::Answered),
            ("confirmed at 5, 4 applied", true, |r, _| r.answer_applied(4), Told::Nothing),
            (
                "deadline passed",
                true,
                |r, now| r.expire(now + Duration::from_secs(2), &RaftError::Stopped),
                Told::Failed,
            ),
            ("deadline not yet", false, |r, now| r.expire(now, &RaftError::Stopped), Told::Nothing),
            ("leader changed", false, |r, _| r.fail_unconfirmed(&RaftError::LeaderChanged), Told::Failed),
            ("stopping", true, |r, _| r.fail_all(&RaftError::Stopped), Told::Failed),
        ];
        for (what, confirmed, happen, expected) in cases {
            let mut reads = Reads::default();
            let mut answer = read(&mut reads, now + Duration::from_secs(1));
            reads.form_group(1, now);
            if confirmed {
                reads.confirm(1, 5);
            }
            happen(&mut reads, now);
            let outcome = match told(&mut answer) {
                Some(Ok(())) => Told::Answered,
                Some(Err(_)) => Told::Failed,
                None => Told::Nothing,
            };
            assert_eq!(outcome, expected, "{what}");
        }
    }

    #[test]
    fn an_unconfirmed_request_is_asked_again_after_a_while() {
        let now = Instant::now();
        let mut reads = Reads::default();
        let _answer = read(&mut reads, now + Duration::from_secs(5));
        reads.form_group(3, now);
        assert!(reads.due_again(now + Duration::from_millis(50)).is_empty());
        assert_eq!(reads.due_again(now + READ_AGAIN_AFTER), [3]);
        assert!(reads.due_again(now + READ_AGAIN_AFTER).is_empty(), "just asked");
        reads.confirm(3, 1);
        assert!(reads.due_again(now + READ_AGAIN_AFTER * 3).is_empty(), "confirmed: not asked");
    }
}
