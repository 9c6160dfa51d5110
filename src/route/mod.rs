//! The routing core every stage shares (LLM, STT, TTS): each stage has a
//! list of candidates (the local model and hosted ones, in preference
//! order); per turn the [`Planner`] orders them from rolling telemetry and
//! load, and [`race`] runs the hedged race with fallback. The stage-specific
//! part is only "start an attempt, report its first result, cancel it":
//! the LLM router ([`crate::llm::Router`]) streams tokens, [`StageRoute`]
//! serves one-shot stages (a transcript, a sentence's audio).
//!
//! # Invariants
//! 1. One telemetry store for every stage; keys are `provider/model` for
//!    the LLM and `stt:provider/model`, `tts:provider/model` for speech, so
//!    the same provider and model keep their history across restarts.
//! 2. `in_flight` counts attempts running on a candidate across every
//!    session sharing the route; it is decremented when the attempt ends
//!    however it ends (a drop guard).
//! 3. A stage with one candidate plans exactly as without a router: no
//!    probe, no hedge.

pub mod note;
pub mod plan;
pub mod policy;
pub mod race;
pub mod stage;
pub mod status;

pub use note::{Notes, RouteNote};
pub use plan::{Observed, Plan, Planner};
pub use policy::RoutePolicy;
pub use race::{race, Loss, RaceEnd, RaceSpec};
pub use stage::{StageCandidate, StageRoute};

use crate::llm::telemetry::Telemetry;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The model stages a router serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Stt,
    Llm,
    Tts,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Stt, Stage::Llm, Stage::Tts];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Stt => "stt",
            Stage::Llm => "llm",
            Stage::Tts => "tts",
        }
    }

    /// The store key of `provider/model` in this stage (invariant 1).
    pub fn key(self, provider_model: &str) -> String {
        match self {
            Stage::Llm => provider_model.to_string(),
            s => format!("{}:{provider_model}", s.name()),
        }
    }

    /// The stage a store key belongs to.
    pub fn of_key(key: &str) -> Stage {
        if key.starts_with("stt:") {
            Stage::Stt
        } else if key.starts_with("tts:") {
            Stage::Tts
        } else {
            Stage::Llm
        }
    }
}

/// Counts an attempt as running until dropped (invariant 2).
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One stage's candidates, planner and telemetry.
#[derive(Debug)]
pub struct RouteCore {
    stage: Stage,
    keys: Vec<String>,
    local: Vec<bool>,
    in_flight: Vec<Arc<AtomicUsize>>,
    planner: Planner,
    telemetry: Telemetry,
}

impl RouteCore {
    /// A core over candidates `(store key, runs on this machine)`.
    pub fn new(
        stage: Stage,
        candidates: Vec<(String, bool)>,
        mut policy: RoutePolicy,
        telemetry: Telemetry,
    ) -> Self {
        if candidates.len() < 2 {
            // Holds invariant 3.
            policy.probe = false;
            policy.hedge = false;
        }
        let (keys, local): (Vec<String>, Vec<bool>) = candidates.into_iter().unzip();
        if keys.len() > 1 {
            // A routed stage's candidates are all listed, tried or not
            // (`colloquy status` shows them `untried`).
            for k in &keys {
                telemetry.register(k);
            }
        }
        Self {
            stage,
            in_flight: keys.iter().map(|_| Arc::new(AtomicUsize::new(0))).collect(),
            keys,
            local,
            planner: Planner::new(policy),
            telemetry,
        }
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    pub fn is_local(&self, i: usize) -> bool {
        self.local.get(i).copied().unwrap_or(false)
    }

    pub fn planner(&self) -> &Planner {
        &self.planner
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Marks an attempt on candidate `i` running until the guard drops.
    pub fn in_flight(&self, i: usize) -> InFlight {
        let c = self.in_flight[i].clone();
        c.fetch_add(1, Ordering::AcqRel);
        InFlight(c)
    }

    /// What is known of every candidate now.
    pub fn observe(&self) -> Vec<Observed> {
        let now = self.telemetry.now_ms();
        let store = self.telemetry.lock();
        self.keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                Observed::from_summary(
                    &store.summary(k, now),
                    self.local[i],
                    self.in_flight[i].load(Ordering::Acquire),
                )
            })
            .collect()
    }

    /// The plan of the next turn.
    pub fn plan(&self) -> Plan {
        self.planner.plan(&self.observe())
    }

    /// The race settings of a turn that already tried `exclude`.
    pub fn race_spec(&self, exclude: Vec<usize>) -> RaceSpec {
        RaceSpec {
            local: self.local.clone(),
            exclude,
            shadow_cap: Duration::from_millis(self.planner.policy().hedge_max_ms * 2),
        }
    }
}
