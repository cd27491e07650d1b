//! The one shape every policy cache has: a map behind a mutex that starts
//! over when full. Entries are cheap to rebuild and a bundle's caches die
//! with it on reload, so no eviction order is worth keeping.

use std::{collections::HashMap, hash::Hash, sync::Mutex};

pub struct Bounded<K, V> {
    max: usize,
    entries: Mutex<HashMap<K, V>>,
}

impl<K: Hash + Eq, V: Clone> Bounded<K, V> {
    pub fn new(max: usize) -> Self {
        Bounded {
            max,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    pub fn insert(&self, key: K, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.max {
            entries.clear();
        }
        entries.insert(key, value);
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}
