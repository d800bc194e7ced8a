//! What the agent shows of itself: Prometheus metrics and the read-only HTTP endpoint that
//! serves them, the health checks and the event stream.

pub mod dns_metrics;
pub mod http;
mod info;
pub mod metrics;
pub mod routes;
pub mod violations;
mod write_timeout;
