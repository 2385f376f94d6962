//! The fault timeline of a scenario: what happened, when — faults injected and healed, Lease and role
//! changes, writer errors, members starting and stopping to accept writes. Pure.

use serde::{Deserialize, Serialize};

use super::Micros;

/// One thing that happened during a scenario: a fault injected or healed, a Lease holder change, a
/// writable member appearing … in the order they happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at_us: Micros,
    pub what: String,
}

/// The fault timeline of a scenario.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub events: Vec<Event>,
}

impl Timeline {
    pub fn push(&mut self, at_us: Micros, what: impl Into<String>) {
        self.events.push(Event {
            at_us,
            what: what.into(),
        });
    }

    /// The events sorted by time (stable: equal times keep their order).
    pub fn sorted(&self) -> Vec<Event> {
        let mut events = self.events.clone();
        events.sort_by_key(|e| e.at_us);
        events
    }
}
