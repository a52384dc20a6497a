fn main() { eprintln!("filter_bench: not written yet"); std::process::exit(1); }
