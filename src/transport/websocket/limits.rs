//! What one client may cost the server: the per-connection rate limiter
//! (messages, bytes, and seconds of audio, WebSocket pings included) and
//! the per-address limit on live connections.
//!
//! - Messages and bytes: token buckets ([`RateLimit`]); every frame the
//!   client sends counts, control frames (ping, pong) too.
//! - Audio: a bucket in seconds of audio, refilled at
//!   [`RateLimit::audio_speed`] × real time, whatever the sample rate: an
//!   8 kHz client gets no more audio through than a 48 kHz one (a byte
//!   budget would let it send 16× real time and pile up transcriptions).
//! - Addresses: [`AddressTable`] counts live connections per client IP; a
//!   connection beyond [`super::ServeConfig::max_per_address`] is refused
//!   before the upgrade.
//!
//! # Invariants
//! 1. A message over any budget is dropped whole (never half-processed) and
//!    counted; past `close_after_dropped` drops the connection is closed.
//! 2. An address slot is released when its connection ends (RAII
//!    [`AddressSlot`]), so the count per address is the number of live
//!    connections from it.

use super::RateLimit;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// A token bucket.
pub(crate) struct Bucket {
    level: f64,
    cap: f64,
    rate: f64,
    at: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: f64, burst: f64, now: Instant) -> Self {
        let cap = burst.max(1.0);
        Self {
            level: cap,
            cap,
            rate,
            at: now,
        }
    }

    pub(crate) fn allow(&mut self, cost: f64, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.level = (self.level + dt * self.rate).min(self.cap);
        if self.level >= cost {
            self.level -= cost;
            true
        } else {
            false
        }
    }
}

/// What the limiter decided about one message.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    Pass,
    /// Dropped; answer with a `rate_limited` error saying this.
    Drop(String),
    /// Too many drops: close the connection (invariant 1).
    Close,
}

/// One connection's budgets (holds invariant 1).
pub(crate) struct Limiter {
    limit: RateLimit,
    messages: Bucket,
    bytes: Bucket,
    /// Seconds of audio.
    audio: Bucket,
    dropped: u64,
}

impl Limiter {
    pub(crate) fn new(limit: RateLimit, now: Instant) -> Self {
        Self {
            messages: Bucket::new(limit.messages_per_sec, limit.message_burst, now),
            bytes: Bucket::new(limit.bytes_per_sec, limit.byte_burst, now),
            audio: Bucket::new(limit.audio_speed, limit.audio_burst_secs, now),
            dropped: 0,
            limit,
        }
    }

    /// Any frame of `len` bytes (text, binary, ping, pong).
    pub(crate) fn admit(&mut self, len: usize, now: Instant) -> Verdict {
        let ok_msgs = self.messages.allow(1.0, now);
        let ok_bytes = self.bytes.allow(len as f64, now);
        if ok_msgs && ok_bytes {
            return Verdict::Pass;
        }
        self.drop_one(format!(
            "message rate over the limit ({} messages/s, {} bytes/s, WebSocket pings included); excess dropped",
            self.limit.messages_per_sec, self.limit.bytes_per_sec
        ))
    }

    /// An audio message of `samples` samples at `rate` Hz (after
    /// [`Limiter::admit`]).
    pub(crate) fn admit_audio(&mut self, samples: usize, rate: u32, now: Instant) -> Verdict {
        let secs = samples as f64 / f64::from(rate.max(1));
        if self.audio.allow(secs, now) {
            return Verdict::Pass;
        }
        self.drop_one(format!(
            "audio faster than {}x real time (after a burst of {} s); excess dropped. Send 20 ms of audio every 20 ms",
            self.limit.audio_speed, self.limit.audio_burst_secs
        ))
    }

    fn drop_one(&mut self, why: String) -> Verdict {
        self.dropped += 1;
        if self.dropped > self.limit.close_after_dropped {
            Verdict::Close
        } else {
            Verdict::Drop(why)
        }
    }
}

/// Live connections per client address (holds invariant 2).
#[derive(Default)]
pub(crate) struct AddressTable {
    live: Mutex<HashMap<IpAddr, usize>>,
}

/// A taken per-address slot; released on drop.
pub(crate) struct AddressSlot {
    table: Arc<AddressTable>,
    ip: IpAddr,
}

impl AddressTable {
    /// Takes a slot for `ip` if it holds fewer than `max` connections.
    pub(crate) fn take(table: &Arc<AddressTable>, ip: IpAddr, max: usize) -> Option<AddressSlot> {
        let ip = ip.to_canonical();
        let mut live = table.live.lock().unwrap_or_else(|e| e.into_inner());
        let n = live.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: table.clone(),
            ip,
        })
    }

    /// Live connections from `ip`.
    #[cfg(test)]
    pub(crate) fn live(&self, ip: IpAddr) -> usize {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.get(&ip.to_canonical()).copied().unwrap_or(0)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut live = self.table.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = live.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                live.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn audio_is_capped_in_seconds_whatever_the_rate() {
        let limit = RateLimit {
            audio_speed: 2.0,
            audio_burst_secs: 1.0,
            ..RateLimit::default()
        };
        let t0 = Instant::now();
        for rate in [8_000u32, 48_000] {
            let mut l = Limiter::new(limit.clone(), t0);
            // 10x real time for 1 s of wall time: 10 s of audio offered,
            // 1 s burst + 2 s earned accepted.
            let mut accepted = 0.0;
            for i in 1..=50u64 {
                let now = t0 + Duration::from_millis(20 * i);
                if l.admit_audio(rate as usize / 5, rate, now) == Verdict::Pass {
                    accepted += 0.2;
                }
            }
            assert!((2.8..=3.2).contains(&accepted), "{rate} Hz: {accepted} s");
        }
    }

    #[test]
    fn drops_close_after_the_limit() {
        let limit = RateLimit {
            messages_per_sec: 1.0,
            message_burst: 1.0,
            close_after_dropped: 2,
            ..RateLimit::default()
        };
        let t0 = Instant::now();
        let mut l = Limiter::new(limit, t0);
        assert_eq!(l.admit(10, t0), Verdict::Pass);
        assert!(matches!(l.admit(10, t0), Verdict::Drop(_)));
        assert!(matches!(l.admit(10, t0), Verdict::Drop(_)));
        assert_eq!(l.admit(10, t0), Verdict::Close);
    }

    #[test]
    fn address_slots_are_counted_and_released() {
        let table = Arc::new(AddressTable::default());
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        let a = AddressTable::take(&table, ip, 2).expect("first");
        let b = AddressTable::take(&table, mapped, 2).expect("second, same address");
        assert!(AddressTable::take(&table, ip, 2).is_none(), "third refused");
        let other: IpAddr = "10.0.0.2".parse().expect("ip");
        assert!(AddressTable::take(&table, other, 2).is_some());
        drop(a);
        assert_eq!(table.live(ip), 1);
        let _c = AddressTable::take(&table, ip, 2).expect("a slot freed");
        drop(b);
        assert_eq!(table.live(ip), 1);
    }
}
