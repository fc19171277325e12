//! Line splitting and decoding (JSON lines, raw lines, CSV) of the `file` and `stdin` sources.
//! The first byte picks the format and the view; the rest is the input.
#![no_main]

use flow_processors::lines::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let format = match mode % 3 {
        0 => Format::Json,
        1 => Format::Lines,
        _ => Format::Csv,
    };
    flow_processors::fuzzing::decode_lines(format, mode & 4 != 0, input);
});
