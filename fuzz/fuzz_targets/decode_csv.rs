#![no_main]

use careledger_decode::BodyFormat;
use libfuzzer_sys::fuzz_target;

// The first byte picks the charset (odd: GB18030), the rest is the body.
fuzz_target!(|data: &[u8]| {
    if let Some((first, body)) = data.split_first() {
        careledger_fuzz::check(
            BodyFormat::Csv {
                gb18030: first & 1 == 1,
            },
            body,
        );
    }
});
