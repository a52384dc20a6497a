//! Storage benchmark (filled in below).
fn main() {}
