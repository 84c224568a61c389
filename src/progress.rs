//! Progress of long operations (preload, import, export, verify), as events. The operation
//! sends them; the admin API streams them as JSON lines; the CLI draws them as progress bars
//! (or plain lines off a terminal). A dropped receiver never fails an operation.

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A unit of work (an image, a blob) started; `total` bytes are expected when known.
    Begin {
        /// Names the unit in later events.
        id: String,
        /// What to show.
        label: String,
        /// Expected bytes.
        total: Option<u64>,
    },
    /// Bytes done so far for a unit (and more expected bytes, when they become known).
    Advance {
        /// The unit.
        id: String,
        /// Bytes done.
        done: u64,
        /// Expected bytes, if changed.
        total: Option<u64>,
    },
    /// A unit ended.
    End {
        /// The unit.
        id: String,
        /// Whether it succeeded.
        ok: bool,
        /// Why not, or what to know.
        message: Option<String>,
    },
    /// A line for the operator.
    Note {
        /// The text.
        text: String,
    },
    /// The final result of the operation.
    Report {
        /// Whether everything succeeded.
        ok: bool,
        /// Operation-specific details.
        report: serde_json::Value,
    },
}

/// Where an operation sends its events.
#[derive(Clone)]
pub struct Progress {
    tx: Option<mpsc::UnboundedSender<Event>>,
}

impl Progress {
    /// Events go to `tx`.
    pub fn to(tx: mpsc::UnboundedSender<Event>) -> Progress {
        Progress { tx: Some(tx) }
    }

    /// Events go nowhere.
    pub fn none() -> Progress {
        Progress { tx: None }
    }

    /// Send an event (ignored when nobody listens).
    pub fn send(&self, event: Event) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(event);
        }
    }

    /// A unit started.
    pub fn begin(&self, id: impl Into<String>, label: impl Into<String>, total: Option<u64>) {
        self.send(Event::Begin {
            id: id.into(),
            label: label.into(),
            total,
        });
    }

    /// A unit advanced.
    pub fn advance(&self, id: impl Into<String>, done: u64, total: Option<u64>) {
        self.send(Event::Advance {
            id: id.into(),
            done,
            total,
        });
    }

    /// A unit ended.
    pub fn end(&self, id: impl Into<String>, ok: bool, message: Option<String>) {
        self.send(Event::End {
            id: id.into(),
            ok,
            message,
        });
    }

    /// A note for the operator.
    pub fn note(&self, text: impl Into<String>) {
        self.send(Event::Note { text: text.into() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_json_lines() {
        let e = Event::Advance {
            id: "x".into(),
            done: 5,
            total: None,
        };
        let line = serde_json::to_string(&e).unwrap();
        assert_eq!(
            line,
            r#"{"event":"advance","id":"x","done":5,"total":null}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), e);
        Progress::none().note("nobody listens: fine");
    }
}
