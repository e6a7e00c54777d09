//! Running the simulation: the event loop, node timers and output draining, and the guards
//! that turn runaway nodes into errors.

use std::time::{Duration, Instant};

use super::event::Due;
use super::network::Network;
use super::{Node, NodeId, SimError};

impl<N: Node> Network<N> {
    /// Time of the next pending event, if any (may be a timer that turns out stale).
    pub fn next_event_time(&self) -> Option<Instant> {
        self.queue.peek_time()
    }

    /// Handles the next event. `Ok(false)` when nothing is left to do.
    pub fn step(&mut self) -> Result<bool, SimError> {
        self.step_before(None)
    }

    /// Runs every event up to and including `deadline`, then sets the clock to `deadline`.
    pub fn run_until(&mut self, deadline: Instant) -> Result<(), SimError> {
        let mut steps = 0;
        while self.step_before(Some(deadline))? {
            self.charge(&mut steps)?;
        }
        self.now = self.now.max(deadline);
        Ok(())
    }

    /// [`run_until`](Self::run_until) `now + duration`.
    pub fn run_for(&mut self, duration: Duration) -> Result<(), SimError> {
        self.run_until(self.now + duration)
    }

    /// Runs while `condition` holds, up to `deadline`. `Ok(true)` if the condition became
    /// false (the clock then stays at that event), `Ok(false)` if the deadline came or the
    /// network went idle first (the clock then moves to the deadline).
    pub fn run_while(
        &mut self,
        deadline: Instant,
        mut condition: impl FnMut(&Self) -> bool,
    ) -> Result<bool, SimError> {
        let mut steps = 0;
        while condition(self) {
            if !self.step_before(Some(deadline))? {
                self.now = self.now.max(deadline);
                return Ok(false);
            }
            self.charge(&mut steps)?;
        }
        Ok(true)
    }

    /// Runs until no event is left. Nodes with periodic timers never go idle; the step budget
    /// then ends the run with [`SimError::BudgetExceeded`].
    pub fn run_until_idle(&mut self) -> Result<(), SimError> {
        let mut steps = 0;
        while self.step_before(None)? {
            self.charge(&mut steps)?;
        }
        Ok(())
    }

    fn charge(&self, steps: &mut u64) -> Result<(), SimError> {
        *steps += 1;
        if *steps > self.limits.step_budget {
            return Err(SimError::BudgetExceeded {
                steps: self.limits.step_budget,
                elapsed: self.elapsed(),
            });
        }
        Ok(())
    }

    /// Handles the next event at or before `limit`; `Ok(false)` if there is none.
    fn step_before(&mut self, limit: Option<Instant>) -> Result<bool, SimError> {
        loop {
            let Some(time) = self.queue.peek_time() else {
                return Ok(false);
            };
            if limit.is_some_and(|l| time > l) {
                return Ok(false);
            }
            let Some((time, due)) = self.queue.pop() else {
                return Ok(false);
            };
            if let Due::Timer(id) = due {
                if !self.timer_due(id, time) {
                    continue;
                }
            }
            self.advance(time)?;
            match due {
                Due::Arrive(packet) => self.arrive(packet)?,
                Due::Timer(id) => self.fire_timer(id)?,
                Due::Wake(id) => {
                    self.nodes[id.0].woken = false;
                    self.drain(id)?;
                }
            }
            return Ok(true);
        }
    }

    /// Validates a popped timer event against the node's deadline (see
    /// [`NodeSlot::queued_timer`]); requeues it if the deadline moved later.
    fn timer_due(&mut self, id: NodeId, time: Instant) -> bool {
        let slot = &mut self.nodes[id.0];
        if slot.queued_timer != Some(time) {
            return false; // superseded by an earlier event, already handled
        }
        slot.queued_timer = None;
        match slot.deadline {
            Some(d) if d <= time => true,
            Some(d) => {
                slot.queued_timer = Some(d);
                self.queue.push_timer(d, id);
                false
            }
            None => false,
        }
    }

    fn advance(&mut self, time: Instant) -> Result<(), SimError> {
        if time > self.now {
            self.now = time;
            self.events_this_instant = 0;
        }
        self.events_this_instant += 1;
        if self.events_this_instant > self.limits.max_events_per_instant {
            return Err(SimError::Stalled {
                node: None,
                elapsed: self.elapsed(),
                reason: "too many events at one instant",
            });
        }
        Ok(())
    }

    fn fire_timer(&mut self, id: NodeId) -> Result<(), SimError> {
        let now = self.now;
        let slot = &mut self.nodes[id.0];
        if slot.spin_at == Some(now) {
            slot.spins += 1;
            if slot.spins > self.limits.max_timer_spins {
                return Err(SimError::Stalled {
                    node: Some(id),
                    elapsed: self.elapsed(),
                    reason: "timer keeps firing without time advancing",
                });
            }
        } else {
            slot.spin_at = Some(now);
            slot.spins = 1;
        }
        slot.deadline = None;
        slot.node.handle_timeout(now);
        self.drain(id)
    }

    /// Drains the node's transmits, then re-reads its deadline.
    pub(crate) fn drain(&mut self, id: NodeId) -> Result<(), SimError> {
        let mut buf = std::mem::take(&mut self.buf);
        let mut count = 0u64;
        let result = loop {
            buf.clear();
            let Some(transmit) = self.nodes[id.0].node.poll_transmit(self.now, &mut buf) else {
                break Ok(());
            };
            count += 1;
            if count > self.limits.max_transmits_per_poll {
                break Err(SimError::TransmitFlood {
                    node: id,
                    limit: self.limits.max_transmits_per_poll,
                });
            }
            self.send_batch(id, &transmit, &buf);
        };
        self.buf = buf;
        self.reschedule(id);
        result
    }

    fn reschedule(&mut self, id: NodeId) {
        let now = self.now;
        let slot = &mut self.nodes[id.0];
        let deadline = slot.node.poll_timeout().map(|t| t.max(now));
        slot.deadline = deadline;
        if let Some(d) = deadline {
            if slot.queued_timer.is_none_or(|q| d < q) {
                slot.queued_timer = Some(d);
                self.queue.push_timer(d, id);
            }
        }
    }

    /// Number of pending events (stale timers included): for checking the simulator's own
    /// memory use in tests.
    pub fn pending_events(&self) -> usize {
        self.queue.len()
    }
}
