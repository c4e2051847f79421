//! The line in front of a server's handshakes: at most a number of
//! connections handshake at once, each holding a [`Slot`]; more wait in
//! line for one, and a freed slot goes to the newest waiting connection.
//!
//! Newest first, because of what waiting does to a connection: its client
//! counts the wait against its own handshake deadline (a QUIC client
//! gives up 30 s after its first Initial, silently, without a packet the
//! server would see). A line served in arrival order hands each freed
//! slot to the connection that waited longest, the one most likely to be
//! abandoned; its handshake then holds the slot until the server's
//! handshake timeout. After a restart of a cloudcore with 20,000 QUIC
//! nodes, about 900 of the 1,024 slots were held that way for 30 s. The
//! newest connection's client has the most time left. For the same reason
//! a full line pushes out its oldest connection rather than refusing the
//! newest.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

/// A server's handshake slots and the connections waiting for one.
#[derive(Debug, Clone)]
pub(crate) struct HandshakeLine {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// The most connections that may wait.
    places: usize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Slots no connection holds.
    free: usize,
    /// The waiting connections by arrival, each with where to hand its
    /// slot.
    waiting: BTreeMap<u64, oneshot::Sender<Slot>>,
    /// The arrival number of the next connection to wait.
    next: u64,
}

/// One of a [`HandshakeLine`]'s slots; dropping it hands it to the newest
/// waiting connection, or frees it.
#[derive(Debug)]
pub(crate) struct Slot {
    shared: Arc<Shared>,
}

/// A place in a [`HandshakeLine`].
#[derive(Debug)]
pub(crate) struct Place {
    shared: Arc<Shared>,
    number: u64,
    slot: oneshot::Receiver<Slot>,
}

/// What a connection arriving at a [`HandshakeLine`] gets.
#[derive(Debug)]
pub(crate) enum Arrival {
    /// A free slot.
    Slot(Slot),
    /// A place in line.
    Wait(Place),
    /// Neither: the line has no places.
    Refused,
}

/// Why a [`Place`] did not lead to a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missed {
    /// No slot came within the wait.
    TooLong,
    /// Newer connections filled the line and this one, the oldest, left.
    PushedOut,
}

impl HandshakeLine {
    /// `slots` slots (at least 1) and `places` places in line.
    pub(crate) fn new(slots: usize, places: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                places,
                state: Mutex::new(State {
                    free: slots.max(1),
                    waiting: BTreeMap::new(),
                    next: 0,
                }),
            }),
        }
    }

    /// A slot if one is free, else the newest place in line; when the line
    /// is full its oldest connection leaves it to make room.
    pub(crate) fn arrive(&self) -> Arrival {
        let mut state = self.shared.lock();
        if state.free > 0 {
            state.free -= 1;
            return Arrival::Slot(Slot {
                shared: Arc::clone(&self.shared),
            });
        }
        if self.shared.places == 0 {
            return Arrival::Refused;
        }
        // Its sender dropped, the oldest place reads PushedOut.
        let pushed_out = (state.waiting.len() >= self.shared.places)
            .then(|| state.waiting.pop_first())
            .flatten();
        let number = state.next;
        state.next += 1;
        let (sender, slot) = oneshot::channel();
        state.waiting.insert(number, sender);
        drop(state);
        drop(pushed_out);
        Arrival::Wait(Place {
            shared: Arc::clone(&self.shared),
            number,
            slot,
        })
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Place {
    /// Waits at most `wait` for a slot.
    pub(crate) async fn wait(mut self, wait: Duration) -> Result<Slot, Missed> {
        match tokio::time::timeout(wait, &mut self.slot).await {
            Ok(Ok(slot)) => Ok(slot),
            Ok(Err(_)) => Err(Missed::PushedOut),
            Err(_) => {
                let still_waiting = self.shared.lock().waiting.remove(&self.number).is_some();
                if still_waiting {
                    return Err(Missed::TooLong);
                }
                // A slot was handed over as the wait ran out: take it.
                self.slot.try_recv().map_err(|_| Missed::PushedOut)
            }
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        // A place given up (its connection stops) leaves the line; a slot
        // already handed to it goes on with the receiver's drop.
        self.shared.lock().waiting.remove(&self.number);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let newest = {
            let mut state = self.shared.lock();
            let newest = state.waiting.pop_last();
            if newest.is_none() {
                state.free += 1;
            }
            newest
        };
        if let Some((_, sender)) = newest {
            // A place dropped meanwhile gives the slot back, to the next.
            let _ = sender.send(Slot {
                shared: Arc::clone(&self.shared),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(arrival: Arrival) -> Slot {
        match arrival {
            Arrival::Slot(slot) => slot,
            other => panic!("no slot: {other:?}"),
        }
    }

    fn place(arrival: Arrival) -> Place {
        match arrival {
            Arrival::Wait(place) => place,
            other => panic!("no place: {other:?}"),
        }
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn a_freed_slot_goes_to_the_newest_waiting_connection() {
        let line = HandshakeLine::new(1, 3);
        let held = slot(line.arrive());
        let first = tokio::spawn(place(line.arrive()).wait(LONG));
        let second = place(line.arrive());
        let third = place(line.arrive());
        drop(held);
        let slot = third.wait(LONG).await.expect("the newest gets the slot");
        drop(slot);
        let slot = second.wait(LONG).await.expect("then the next newest");
        drop(slot);
        first.await.expect("task").expect("then the oldest");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_line_pushes_out_its_oldest_connection() {
        let line = HandshakeLine::new(1, 2);
        let _held = slot(line.arrive());
        let oldest = place(line.arrive());
        let _middle = place(line.arrive());
        let _newest = place(line.arrive());
        assert_eq!(oldest.wait(LONG).await.err(), Some(Missed::PushedOut));
        assert_eq!(line.shared.lock().waiting.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_runs_out_and_leaves_the_line() {
        let line = HandshakeLine::new(1, 2);
        let held = slot(line.arrive());
        let waiting = place(line.arrive());
        assert_eq!(
            waiting.wait(Duration::from_secs(10)).await.err(),
            Some(Missed::TooLong)
        );
        drop(held);
        // Nobody waits any more: the slot is free for the next arrival.
        let _again = slot(line.arrive());
    }

    #[tokio::test(start_paused = true)]
    async fn no_places_refuses_once_the_slots_are_taken() {
        let line = HandshakeLine::new(2, 0);
        let _one = slot(line.arrive());
        let two = slot(line.arrive());
        assert!(matches!(line.arrive(), Arrival::Refused));
        drop(two);
        let _three = slot(line.arrive());
    }

    #[tokio::test(start_paused = true)]
    async fn a_place_given_up_passes_its_slot_on() {
        let line = HandshakeLine::new(1, 2);
        let held = slot(line.arrive());
        let older = place(line.arrive());
        let newer = place(line.arrive());
        drop(held);
        // The slot went to `newer`, which stops before taking it.
        drop(newer);
        let _slot = older.wait(LONG).await.expect("the slot is passed on");
        assert_eq!(line.shared.lock().free, 0);
    }
}
