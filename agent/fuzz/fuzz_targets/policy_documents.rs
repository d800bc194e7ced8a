//! Fuzzes the policy pipeline a user's file goes through: YAML documents -> model
//! (parse) -> pipelines expanded -> whole-set checks -> compiled kernel map contents.
//! Any input must give a policy or errors with a line inside the input, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use stagewall::{
    compiler::{EndpointIds, compile},
    policy::{model::PolicySet, parse, pipeline},
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // YAML breaks lines at \n, \r\n and a lone \r (str::lines() does not split at a
    // lone \r), and may report the position just past the end.
    let lines = text.matches(['\n', '\r']).count() as u32 + 2;
    let mut set = PolicySet::default();
    match parse::parse_into(Path::new("fuzz.yaml"), text, &mut set) {
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
