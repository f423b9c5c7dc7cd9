//! The allocations by id, in a table with a slot per id.
//!
//! Ids are handed out in ascending order, and allocations mostly live about
//! as long as their neighbours, so the ids in use form a dense run: a slot
//! per id from the oldest in use finds an allocation in one step, where a
//! B-tree of a million took a dozen dependent loads. A node's placement
//! view reads each of its allocations, and at 1,000,000 replicas those
//! lookups were a third of the leader's time. Ids left far behind the run
//! (one allocation that outlives millions placed after it) move to a small
//! ordered map, so the slots never outnumber the allocations by much.
//! Serialized as the map it replaced: snapshots are unchanged.
//!
//! Each allocation is shared (`Arc`) rather than owned, so that a copy of
//! the table, for a snapshot to write while applies go on, copies a
//! million pointers rather than a million allocations: an allocation
//! changed while a copy holds it is copied then, alone.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use flotilla_api::Allocation;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Empty slots the run may hold besides one per allocation; past that,
/// the oldest allocations move to `behind` until it is dense again.
const SPARE_SLOTS: usize = 1024;

#[derive(Debug, Clone, Default)]
pub struct AllocationTable {
    /// Allocations whose ids are below `first`: those left behind the run.
    behind: BTreeMap<u64, Arc<Allocation>>,
    /// The id of `slots[0]`.
    first: u64,
    /// A slot per id from `first` on, `None` where that allocation is gone;
    /// neither end is `None`. Behind a pointer, so an empty slot costs 8
    /// bytes.
    slots: VecDeque<Option<Arc<Allocation>>>,
    /// How many slots hold an allocation.
    in_slots: usize,
}

impl AllocationTable {
    pub fn get(&self, id: &u64) -> Option<&Allocation> {
        if *id < self.first {
            return self.behind.get(id).map(|a| &**a);
        }
        let slot = usize::try_from(id - self.first).ok()?;
        self.slots.get(slot)?.as_deref()
    }

    /// The allocation to change; copied first if a copy of the table
    /// shares it.
    pub fn get_mut(&mut self, id: &u64) -> Option<&mut Allocation> {
        if *id < self.first {
            return self.behind.get_mut(id).map(Arc::make_mut);
        }
        let slot = usize::try_from(id - self.first).ok()?;
        self.slots.get_mut(slot)?.as_mut().map(Arc::make_mut)
    }

    /// Puts `allocation` under `id`, replacing what was there.
    pub fn insert(&mut self, id: u64, allocation: Arc<Allocation>) {
        if self.slots.is_empty() {
            let past_behind = self.behind.last_key_value().map_or(0, |(last, _)| last + 1);
            self.first = id.max(past_behind);
        }
        if id < self.first {
            self.behind.insert(id, allocation);
            return;
        }
        let gap = id - self.first;
        if gap >= (self.slots.len() + self.in_slots + SPARE_SLOTS) as u64 {
            // Far past the run (only a snapshot's ids can be): the run so
            // far goes behind and a new one starts here.
            self.move_all_behind();
            self.first = id;
        }
        let slot = (id - self.first) as usize;
        if slot >= self.slots.len() {
            self.slots.resize_with(slot + 1, || None);
        }
        if self.slots[slot].replace(allocation).is_none() {
            self.in_slots += 1;
        }
        self.keep_dense();
    }

    pub fn remove(&mut self, id: &u64) -> Option<Arc<Allocation>> {
        if *id < self.first {
            return self.behind.remove(id);
        }
        let slot = usize::try_from(id - self.first).ok()?;
        let removed = self.slots.get_mut(slot)?.take()?;
        self.in_slots -= 1;
        self.trim();
        self.keep_dense();
        Some(removed)
    }

    /// Changes every allocation in place (copying those a copy of the
    /// table shares).
    pub fn for_each_mut(&mut self, mut change: impl FnMut(&mut Allocation)) {
        self.behind
            .values_mut()
            .chain(self.slots.iter_mut().flatten())
            .for_each(|a| change(Arc::make_mut(a)));
    }

    /// Every allocation, in ascending order of id.
    pub fn values(&self) -> impl Iterator<Item = &Allocation> {
        self.behind.values().map(|a| &**a).chain(self.slots.iter().flatten().map(|a| &**a))
    }

    /// Drops the empty slots at both ends.
    fn trim(&mut self) {
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.first += 1;
        }
        while let Some(None) = self.slots.back() {
            self.slots.pop_back();
        }
    }

    /// Moves the oldest allocations behind the run until it has at most
    /// one empty slot per allocation, and `SPARE_SLOTS` besides.
    fn keep_dense(&mut self) {
        while self.slots.len() > 2 * self.in_slots + SPARE_SLOTS {
            self.move_first_behind();
        }
    }

    /// Moves the oldest allocation in the run behind it.
    fn move_first_behind(&mut self) {
        if let Some(Some(allocation)) = self.slots.pop_front() {
            self.behind.insert(self.first, allocation);
            self.in_slots -= 1;
        }
        self.first += 1;
        self.trim();
    }

    fn move_all_behind(&mut self) {
        while !self.slots.is_empty() {
            self.move_first_behind();
        }
    }
}

/// Equal when they hold the same allocations, however those are laid out
/// (a table restored from a snapshot lays them out afresh).
impl PartialEq for AllocationTable {
    fn eq(&self, other: &Self) -> bool {
        self.values().eq(other.values())
    }
}

impl Serialize for AllocationTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.values().map(|a| (a.id, a)))
    }
}

impl<'de> Deserialize<'de> for AllocationTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<u64, Arc<Allocation>>::deserialize(deserializer)?;
        let mut table = AllocationTable::default();
        for (id, allocation) in map {
            table.insert(id, allocation);
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    impl AllocationTable {
        fn len(&self) -> usize {
            self.behind.len() + self.in_slots
        }
    }

    fn allocation(id: u64) -> Arc<Allocation> {
        let mut allocation: Allocation = serde_json::from_value(serde_json::json!({
            "id": id, "workload": "web", "replica": 0, "node": "n", "version": 1, "cpu": 1,
            "memory": 1, "ports": [], "state": "running", "created_index": 1, "modified_index": 1,
            "created_at_ms": 0, "restarts": 0
        }))
        .expect("an allocation");
        allocation.id = id;
        Arc::new(allocation)
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Places the next id, as the state does.
        Place,
        /// Removes the allocation at this position among those present.
        Remove(usize),
        /// Inserts an arbitrary id (a snapshot's, or one far ahead).
        Insert(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => Just(Op::Place),
            5 => (0usize..10_000).prop_map(Op::Remove),
            1 => (0u64..1_000_000).prop_map(Op::Insert),
        ]
    }

    proptest! {
        #[test]
        fn behaves_as_an_ordered_map_and_keeps_few_empty_slots(ops in proptest::collection::vec(op(), 1..600)) {
            let mut table = AllocationTable::default();
            let mut model: BTreeMap<u64, Arc<Allocation>> = BTreeMap::new();
            let mut next = 1;
            for op in ops {
                match op {
                    Op::Place => {
                        table.insert(next, allocation(next));
                        model.insert(next, allocation(next));
                        next += 1;
                    }
                    Op::Remove(at) => {
                        if let Some(id) = model.keys().nth(at % model.len().max(1)).copied() {
                            prop_assert_eq!(table.remove(&id).map(|a| a.id), model.remove(&id).map(|a| a.id));
                        }
                        prop_assert!(table.remove(&u64::MAX).is_none());
                    }
                    Op::Insert(id) => {
                        table.insert(id, allocation(id));
                        model.insert(id, allocation(id));
                        next = next.max(id + 1);
                    }
                }
                prop_assert_eq!(table.len(), model.len());
                prop_assert!(table.slots.len() <= 2 * table.in_slots + SPARE_SLOTS + 1);
                let ids: Vec<u64> = table.values().map(|a| a.id).collect();
                prop_assert_eq!(&ids, &model.keys().copied().collect::<Vec<_>>());
                for id in model.keys().take(50) {
                    prop_assert_eq!(table.get(id).map(|a| a.id), Some(*id));
                }
                prop_assert!(table.get(&(next + 5)).is_none());
            }
            let json = serde_json::to_string(&table).expect("serialize");
            prop_assert_eq!(&json, &serde_json::to_string(&model).expect("serialize the model"));
            let restored: AllocationTable = serde_json::from_str(&json).expect("deserialize");
            prop_assert_eq!(restored.values().map(|a| a.id).collect::<Vec<_>>(), model.keys().copied().collect::<Vec<_>>());
            prop_assert!(restored == table, "a restored table equals the one it was taken from");
        }
    }

    #[test]
    fn a_copy_keeps_what_it_copied_while_the_original_changes() {
        let mut table = AllocationTable::default();
        for id in 1..=3 {
            table.insert(id, allocation(id));
        }
        table.insert(0, allocation(0));
        let copy = table.clone();
        for id in 0..=3 {
            if let Some(allocation) = table.get_mut(&id) {
                allocation.restarts = 7;
            }
        }
        table.remove(&2);
        table.insert(4, allocation(4));
        let restarts = |t: &AllocationTable| t.values().map(|a| (a.id, a.restarts)).collect::<Vec<_>>();
        assert_eq!(restarts(&copy), [(0, 0), (1, 0), (2, 0), (3, 0)]);
        assert_eq!(restarts(&table), [(0, 7), (1, 7), (3, 7), (4, 0)]);
        // Nothing shared is copied while no copy holds it.
        let alone = table.get(&1).map(|a| a as *const Allocation);
        drop(copy);
        let changed = table.get_mut(&1).map(|a| a as *const Allocation);
        assert_eq!(alone, changed, "changed in place, not copied");
    }

    #[test]
    fn one_old_allocation_does_not_keep_a_slot_for_every_id_placed_after_it() {
        let mut table = AllocationTable::default();
        table.insert(1, allocation(1));
        for id in 2..100_000 {
            table.insert(id, allocation(id));
            table.remove(&(id - 1).max(2));
        }
        assert!(table.get(&1).is_some(), "the old one is still found");
        assert!(
            table.slots.len() <= SPARE_SLOTS + 3,
            "{} slots for {} allocations",
            table.slots.len(),
            table.len()
        );
    }
}
