//! Egress by DNS name: the agent's DNS proxy. The kernel's socket hooks redirect the DNS
//! of workloads with name rules (EP_NAME_RULES) to the proxy; it forwards each query to
//! the resolver the workload called and, before the answer goes back, writes the
//! addresses the answer gave for names the workload's rules allow into DNS_LEARNT, so the
//! first connection after an answer is never refused for want of them.
//!
//! - `wire`: DNS messages read from untrusted bytes, and the CNAME chain of an answer;
//! - `learnt`: the learnt addresses per workload, bounded, with expiry (no I/O);
//! - `proxy`: the proxy on tokio, behind small traits for what it needs from the rest of
//!   the agent: whose query it holds (`Clients`), which name identities a workload's
//!   rules give a name (`NameRules`), and the kernel map writes (`LearntWriter`).

pub mod learnt;
pub mod proxy;
pub mod wire;
