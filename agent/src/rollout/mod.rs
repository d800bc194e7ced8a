//! The audit-first rollout: flow records (the traffic each workload was seen to have),
//! and what is learnt from them: least-privilege policies (advise), a candidate policy
//! replayed against them (simulate), and a per-stage summary (report). What can go wrong
//! with the records on disk is in `error`.

pub mod advise;
pub mod error;
pub mod flow_records;
pub mod report;
pub mod simulate;
