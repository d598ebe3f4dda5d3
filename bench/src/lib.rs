//! Benchmarks for CommuCat.
