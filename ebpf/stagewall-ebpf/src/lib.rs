#![no_std]
// The programs live in main.rs; this empty library lets the agent name this crate as a
// build-dependency, so cargo rebuilds the agent when the kernel programs change.
