//! Revisioned key-value storage with watch.
