//! Fan-out of verdict events to HTTP readers: the recent ones for a new reader, and a
//! broadcast of every new one for followers. A follower that falls behind loses the
//! oldest events it missed, and is told how many.

use std::{collections::VecDeque, sync::Mutex};

use tokio::sync::broadcast;

use super::{VerdictEvent, filter::Filter};

/// Events kept for readers that ask what happened recently.
pub const RECENT: usize = 1_000;
/// Events a follower may fall behind before it loses some.
const FOLLOW_BUFFER: usize = 4_096;

pub struct Hub {
    recent: Mutex<VecDeque<VerdictEvent>>,
    tx: broadcast::Sender<VerdictEvent>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            tx: broadcast::channel(FOLLOW_BUFFER).0,
        }
    }
}

impl Hub {
    pub fn publish(&self, e: &VerdictEvent) {
        let mut recent = self.recent.lock().expect("hub lock");
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(e.clone());
        // No follower: nothing to send to, not an error.
        let _ = self.tx.send(e.clone());
    }

    pub fn recent(&self, filter: &Filter) -> Vec<VerdictEvent> {
        let recent = self.recent.lock().expect("hub lock");
        recent
            .iter()
            .filter(|e| filter.matches(e))
            .cloned()
            .collect()
    }

    pub fn follow(&self) -> broadcast::Receiver<VerdictEvent> {
        self.tx.subscribe()
    }
}
