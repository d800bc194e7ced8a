//! Fuzzes the policy pipeline a user's file goes through: YAML documents -> model
//! (parse) -> pipelines expanded -> whole-set checks -> compiled kernel map contents.
//! Any input must give a policy or errors with a line inside the input, never a panic;
//! parsed in parts (split at document markers, as the agent's reload does) it must give
//! what parsing it whole gives.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use stagewall::{
    compiler::{EndpointIds, compile},
    policy::{
        model::PolicySet,
        parse::{self, ParseCache},
        pipeline,
    },
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // YAML breaks lines at \n, \r\n and a lone \r (str::lines() does not split at a
    // lone \r), and may report the position just past the end.
    let lines = text.matches(['\n', '\r']).count() as u32 + 2;
    let mut set = PolicySet::default();
    let whole = parse::parse_into(Path::new("fuzz.yaml"), text, &mut set);
    let mut in_parts = PolicySet::default();
    let parts = ParseCache::default().parse_into(Path::new("fuzz.yaml"), text, &mut in_parts);
    assert_eq!(whole.is_ok(), parts.is_ok());
    if whole.is_ok() {
        assert_eq!(set, in_parts);
    }
    match whole {
        Err(errors) => {
            for e in errors.0 {
                assert!(e.line <= lines, "{e}");
                assert!(!e.message.is_empty());
            }
        }
        Ok(()) => {
            if pipeline::expand(&mut set).is_ok() && parse::validate_set(&set).is_ok() {
                let _ = compile(&set, &EndpointIds::new());
            }
        }
    }
});
