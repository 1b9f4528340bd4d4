//! Request bodies of the answering routes (and `/r1/load`, `/r1/use`): whatever the bytes, the
//! checks end in `Ok` or a client error (4xx), never a panic or a server error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use r1d::api::fuzzing::{check_request, ROUTES};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let route = ROUTES[usize::from(pick) % ROUTES.len()];
    if let Err(status) = check_request(route, body) {
        assert!(
            status.is_client_error(),
            "{route:?} answered {status} to a request body"
        );
    }
});
