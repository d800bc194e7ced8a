//! The demo: build, then run the demo binary (tests/src/bin/stagewall-demo.rs), which builds the
//! pipeline's namespaces and cgroups, runs the agent on policies/ and probes it.

use crate::cmd;

pub fn run() -> anyhow::Result<()> {
    cmd("cargo", &["build", "--bins"])?;
    cmd("target/debug/stagewall-demo", &["policies"])
}
