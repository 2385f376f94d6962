//! Helpers for the end-to-end tests on the local cluster.
