#![no_main]

use careledger_decode::BodyFormat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| careledger_fuzz::check(BodyFormat::JsonArray, data));
