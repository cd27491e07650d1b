//! Agent names and their numeric ids.
//!
//! The kernel only knows ids; the names live beside the labels in a pinned
//! map so a restarted daemon names the agents a previous one labelled.

use std::{collections::HashMap, sync::Arc, sync::Mutex};

use blastgate_common::AGENT_NAME_LEN;

use super::maps::KernelMaps;
use crate::Error;

pub struct AgentRegistry {
    maps: Arc<KernelMaps>,
    /// name -> id, mirrored from the kernel map.
    ids: Mutex<HashMap<String, u32>>,
}

/// Agent names are shown in records and typed in policies: keep them plain.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > AGENT_NAME_LEN {
        return Err(format!("agent name must be 1 to {AGENT_NAME_LEN} bytes"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:/@".contains(c))
    {
        return Err(format!(
            "agent name {name:?} may only contain letters, digits and - _ . : / @"
        ));
    }
    Ok(())
}

impl AgentRegistry {
    pub fn new(maps: Arc<KernelMaps>) -> AgentRegistry {
        let ids = maps
            .agent_names()
            .into_iter()
            .map(|(id, name)| (name, id))
            .collect();
        AgentRegistry {
            maps,
            ids: Mutex::new(ids),
        }
    }

    pub fn maps(&self) -> &KernelMaps {
        &self.maps
    }

    /// The id for `name`, allocating (and persisting) one if it is new.
    pub fn id_for(&self, name: &str) -> Result<u32, Error> {
        validate_name(name).map_err(Error::Invalid)?;
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = ids.get(name) {
            return Ok(*id);
        }
        let id = ids.values().max().map_or(1, |m| m + 1);
        self.maps.set_agent_name(id, name)?;
        ids.insert(name.to_string(), id);
        Ok(id)
    }

    pub fn name_of(&self, id: u32) -> String {
        let ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        ids.iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| format!("agent#{id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain() {
        assert!(validate_name("ci-runner").is_ok());
        assert!(validate_name("team/claude@ci").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name(&"x".repeat(65)).is_err());
    }
}
