//! The free-gap index that makes address-space searches logarithmic: the
//! counterpart of the maple tree's per-node maximum-gap tracking
//! (lib/maple_tree.c: mas_empty_area_rev, used by mm/vma.c
//! unmapped_area_topdown).
//!
//! Each VMA, keyed by its start, carries the size of the free gap just
//! below it. A treap (a binary search tree balanced by random priorities)
//! keeps, in every node, the largest gap of its subtree, so "the highest
//! VMA at or below an address with at least this much free space below it"
//! is found in O(log n) expected time.

/// Index of a node in the arena; `NIL` is none.
type Link = u32;
const NIL: Link = u32::MAX;

#[derive(Clone, Debug)]
struct Node {
    key: u64,
    gap: u64,
    /// Largest gap in this subtree.
    max: u64,
    prio: u64,
    left: Link,
    right: Link,
}

/// Keys (VMA starts) with the gap below each, searchable by gap size.
#[derive(Clone, Debug)]
pub struct GapIndex {
    nodes: Vec<Node>,
    free: Vec<Link>,
    root: Link,
    seed: u64,
    len: usize,
}

impl Default for GapIndex {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            free: Vec::new(),
            root: NIL,
            seed: 0x9e37_79b9_7f4a_7c15,
            len: 0,
        }
    }
}

impl GapIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn next_prio(&mut self) -> u64 {
        // xorshift64*: priorities only need to look random.
        self.seed ^= self.seed >> 12;
        self.seed ^= self.seed << 25;
        self.seed ^= self.seed >> 27;
        self.seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn max_of(&self, n: Link) -> u64 {
        if n == NIL {
            0
        } else {
            self.nodes[n as usize].max
        }
    }

    fn pull(&mut self, n: Link) {
        let (l, r) = (self.nodes[n as usize].left, self.nodes[n as usize].right);
        let m = self.nodes[n as usize]
            .gap
            .max(self.max_of(l))
            .max(self.max_of(r));
        self.nodes[n as usize].max = m;
    }

    /// Split `t` into keys < `key` and keys >= `key`.
    fn split(&mut self, t: Link, key: u64) -> (Link, Link) {
        if t == NIL {
            return (NIL, NIL);
        }
        if self.nodes[t as usize].key < key {
            let (a, b) = self.split(self.nodes[t as usize].right, key);
            self.nodes[t as usize].right = a;
            self.pull(t);
            (t, b)
        } else {
            let (a, b) = self.split(self.nodes[t as usize].left, key);
            self.nodes[t as usize].left = b;
            self.pull(t);
            (a, t)
        }
    }

    /// Join `a` and `b`, every key of `a` below every key of `b`.
    fn merge(&mut self, a: Link, b: Link) -> Link {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if self.nodes[a as usize].prio > self.nodes[b as usize].prio {
            let r = self.merge(self.nodes[a as usize].right, b);
            self.nodes[a as usize].right = r;
            self.pull(a);
            a
        } else {
            let l = self.merge(a, self.nodes[b as usize].left);
            self.nodes[b as usize].left = l;
            self.pull(b);
            b
        }
    }

    /// Set the gap of `key`, inserting it if absent.
    pub fn set(&mut self, key: u64, gap: u64) {
        if self.update(self.root, key, gap) {
            return;
        }
        let node = Node {
            key,
            gap,
            max: gap,
            prio: self.next_prio(),
            left: NIL,
            right: NIL,
        };
        let n = if let Some(n) = self.free.pop() {
            self.nodes[n as usize] = node;
            n
        } else {
            self.nodes.push(node);
            (self.nodes.len() - 1) as Link
        };
        let (a, b) = self.split(self.root, key);
        let left = self.merge(a, n);
        self.root = self.merge(left, b);
        self.len += 1;
    }

    /// Change the gap of an existing key (and the maxima above it).
    fn update(&mut self, t: Link, key: u64, gap: u64) -> bool {
        if t == NIL {
            return false;
        }
        let k = self.nodes[t as usize].key;
        let found = if key == k {
            self.nodes[t as usize].gap = gap;
            true
        } else if key < k {
            self.update(self.nodes[t as usize].left, key, gap)
        } else {
            self.update(self.nodes[t as usize].right, key, gap)
        };
        if found {
            self.pull(t);
        }
        found
    }

    /// Remove `key` if present.
    pub fn remove(&mut self, key: u64) {
        let (a, b) = self.split(self.root, key);
        let (mid, c) = match key.checked_add(1) {
            Some(k) => self.split(b, k),
            None => (b, NIL),
        };
        if mid != NIL {
            debug_assert_eq!(self.nodes[mid as usize].key, key);
            self.free.push(mid);
            self.len -= 1;
        }
        self.root = self.merge(a, c);
    }

    /// The gap recorded for `key`.
    pub fn get(&self, key: u64) -> Option<u64> {
        let mut t = self.root;
        while t != NIL {
            let n = &self.nodes[t as usize];
            if key == n.key {
                return Some(n.gap);
            }
            t = if key < n.key { n.left } else { n.right };
        }
        None
    }

    /// The largest key <= `max_key` whose gap is at least `min_gap`.
    pub fn rightmost(&self, max_key: u64, min_gap: u64) -> Option<u64> {
        self.rightmost_in(self.root, max_key, min_gap)
    }

    fn rightmost_in(&self, t: Link, max_key: u64, min_gap: u64) -> Option<u64> {
        if t == NIL || self.nodes[t as usize].max < min_gap {
            return None;
        }
        let n = &self.nodes[t as usize];
        if n.key > max_key {
            return self.rightmost_in(n.left, max_key, min_gap);
        }
        self.rightmost_in(n.right, max_key, min_gap)
            .or_else(|| (n.gap >= min_gap).then_some(n.key))
            .or_else(|| self.rightmost_in(n.left, max_key, min_gap))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The index answers like a plain ordered map searched linearly.
        #[test]
        fn matches_a_linear_search(
            ops in prop::collection::vec((0u8..3, 0u64..200, 0u64..50), 1..400),
            queries in prop::collection::vec((0u64..220, 0u64..60), 1..50),
        ) {
            let mut idx = GapIndex::new();
            let mut model = BTreeMap::new();
            for (kind, key, gap) in ops {
                match kind {
                    0 | 1 => {
                        idx.set(key, gap);
                        model.insert(key, gap);
                    }
                    _ => {
                        idx.remove(key);
                        model.remove(&key);
                    }
                }
            }
            prop_assert_eq!(idx.len(), model.len());
            for (k, g) in &model {
                prop_assert_eq!(idx.get(*k), Some(*g));
            }
            for (max_key, min_gap) in queries {
                let want = model
                    .range(..=max_key)
                    .rev()
                    .find(|(_, g)| **g >= min_gap)
                    .map(|(k, _)| *k);
                prop_assert_eq!(idx.rightmost(max_key, min_gap), want);
            }
        }
    }

    #[test]
    fn extreme_keys() {
        let mut idx = GapIndex::new();
        idx.set(u64::MAX, 7);
        idx.set(0, 3);
        assert_eq!(idx.rightmost(u64::MAX, 5), Some(u64::MAX));
        assert_eq!(idx.rightmost(u64::MAX - 1, 1), Some(0));
        idx.remove(u64::MAX);
        assert_eq!(idx.rightmost(u64::MAX, 5), None);
        assert_eq!(idx.len(), 1);
    }
}
