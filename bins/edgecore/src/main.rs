//! The edgecore binary.

fn main() {}
