//! Observers.

pub mod histogram;
