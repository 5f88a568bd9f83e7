//! rotation-scheduler: when each secret is due, and the steps a rotation goes through. This
//! first part is the pure core — the seed's schedule, due/notify/overdue computation on an
//! injected clock, and the state machine's transitions; persistence, rotators, leader
//! election and the gRPC service build on it.
#![forbid(unsafe_code)]

pub mod schedule;
pub mod steps;
