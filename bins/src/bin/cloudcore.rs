//! The cloudcore binary.

fn main() {}
