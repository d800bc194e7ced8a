//! Fuzzes the parser of the control socket's one request line (root only, but the line
//! is whatever the client wrote): any text must give a request or an error naming what
//! was expected, never a panic; a request accepted must be one line that the client
//! writes and the agent reads back as the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stagewall::control::Request;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Request::parse(text) {
        Ok(request) => {
            let line = request.line();
            assert_eq!(line.matches('\n').count(), 1, "{line:?}");
            assert!(line.ends_with('\n'), "{line:?}");
            assert!(!line.contains('\r'), "{line:?}");
            assert_eq!(Request::parse(&line), Ok(request));
        }
        Err(e) => assert!(e.contains("expected"), "{text:?}: {e}"),
    }
});
