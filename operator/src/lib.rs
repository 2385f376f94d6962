//! pgpilot's operator: turns a `PostgresCluster` into the Kubernetes objects a highly-available
//! PostgreSQL needs and reports what it observes in the cluster's status.
//!
//! The reconcile ([`controller`]) is a short driver over steps, each in its own module:
//! [`validate`] (pure) → [`scale`] (how far a scale-down may go now) → [`build`] (pure) → [`apply`]
//! (server-side apply) → [`switchover`] (the spec's) → [`rollout`] (which pod a rolling update replaces
//! next) → [`scale`]'s hand-over (a primary leaving for a shrink or a roll) → [`status`].
//! [`conditions`] and [`events`] are shared by the steps; the condition types and reasons and the Event
//! reasons are `const`s in `pgpilot_crds::cluster`.

pub mod apply;
pub mod build;
pub mod conditions;
pub mod controller;
pub mod events;
pub mod hibernation;
pub mod leader;
pub mod memo;
pub mod metrics;
pub mod rollout;
pub mod scale;
pub mod status;
pub mod switchover;
pub mod validate;

#[cfg(test)]
mod testutil;
