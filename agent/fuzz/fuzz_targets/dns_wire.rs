//! Fuzzes the DNS message reader (the proxy reads answers from the network, and queries
//! from any workload): any bytes must parse or give an error, never panic or loop; what
//! parses must hold only canonical names, and the CNAME chain of a learnable answer must
//! start at its question and stay within the chain limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stagewall::dns::wire::{self, Message, Name};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Message::parse(data) else {
        return;
    };
    let canonical = |name: &str| {
        assert!(name.len() <= wire::NAME_MAX, "{name:?}");
        assert!(!name.ends_with('.'), "{name:?}");
        assert_eq!(name, name.to_ascii_lowercase());
        assert_eq!(Name::from_text(name).map(|n| n.to_string()).as_deref(), Ok(name));
    };
    for record in &msg.answers {
        canonical(record.owner.as_str());
        assert!(record.ttl <= i32::MAX as u32);
    }
    if let Some(resolution) = wire::resolve_chain(&msg) {
        let question = msg.question.expect("a learnable answer has one question");
        assert_eq!(resolution.names[0], question.name.as_str());
        assert!(resolution.names.len() <= wire::CHAIN_MAX + 1);
        resolution.names.iter().for_each(|n| canonical(n));
    }
});
